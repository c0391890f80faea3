"""Sandboxes cannot reach each other, nor the host's ports other than Sandbar's: each sits
on a bridge network of its own, and the host's rules let that network reach only the port
its Anthropic proxy endpoint is on (infrastructure/firewall.py). Tried from inside a real
container, as an agent (or whoever runs code in it) would."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from infrastructure.agents import DerivedSecrets
from infrastructure.containers import interface_address
from tests.conftest import free_port, register
from tests.containers.conftest import (
    gone,
    make_sandbox,
    make_workspace,
    rules_of,
    wait_for,
    wait_until,
)


@contextmanager
def listening(address: str) -> Iterator[tuple[int, list[str]]]:
    """A TCP service of the host's on ``address`` (a port other than Sandbar's); yields
    its port and the peers that connected to it."""
    peers: list[str] = []
    server = socket.create_server((address, 0))
    server.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            peers.append(peer[0])
            conn.sendall(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], peers
    finally:
        done.set()
        thread.join(timeout=5)
        server.close()


def fetch(container, url: str) -> tuple[int, str]:
    """``wget`` from inside the container: (exit code, what it printed). Bounded by
    ``timeout`` (busybox's ``wget -T`` crashes in this image)."""
    result = container.exec_run(["timeout", "5", "wget", "-q", "-O", "-", url])
    return result.exit_code, result.output.decode(errors="replace")


def test_sandboxes_reach_only_sandbars_port(container_env, start_server, engine, tmp_path: Path):
    port = free_port()
    env = container_env(SANDBAR_SANDBOX_API_URL=f"http://host.docker.internal:{port}")
    server = start_server(env, port=port)
    alice = register(server.url, "alice")
    wid = make_workspace(alice)
    a, b = make_sandbox(alice, wid), make_sandbox(alice, wid)
    for sid in (a, b):
        assert wait_for(alice.client, sid, "running", "failed")["status"] == "running"
    box_a, box_b = (engine.containers.get(f"sandbar-{s}") for s in (a, b))

    # Each on its own network, alone there.
    for sid, box in ((a, box_a), (b, box_b)):
        assert list(box.attrs["NetworkSettings"]["Networks"]) == [f"sandbar-net-{sid}"]
        net = engine.networks.get(f"sandbar-net-{sid}")
        assert [c.name for c in net.containers] == [f"sandbar-{sid}"]
        assert net.attrs["Labels"]["sandbar.sandbox"] == sid

    # IPv4 only: no IPv6 link-local path to the host's bridge either.
    if Path("/proc/sys/net/ipv6").exists():
        ipv6 = box_a.exec_run(["cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6"])
        assert ipv6.output.decode().strip() == "1"

    # Sandbar's proxy endpoint answers from inside.
    code, body = fetch(box_a, f"http://host.docker.internal:{port}/healthz")
    assert (code, body) == (0, '{"status":"ok"}'), body

    # B's agent answers from the host at its address on its network, but not from A.
    b_ip = box_b.attrs["NetworkSettings"]["Networks"][f"sandbar-net-{b}"]["IPAddress"]
    password = DerivedSecrets(env["SANDBAR_SECRET_KEY"].encode()).upstream_credential(uuid.UUID(b))
    health = httpx.get(f"http://{b_ip}:4096/global/health", auth=("opencode", password))
    assert health.status_code == 200
    code, body = fetch(box_a, f"http://{b_ip}:4096/global/health")
    assert code != 0, body
    # Nor B's port as published on the host.
    published = box_b.attrs["NetworkSettings"]["Ports"]["4096/tcp"][0]["HostPort"]
    code, body = fetch(box_a, f"http://host.docker.internal:{published}/global/health")
    assert code != 0, body

    # Another service of the host's, on the address containers know it by and on A's own
    # gateway: it answers the host, never the sandbox.
    gateway = interface_address(
        engine.networks.get("bridge").attrs["Options"]["com.docker.network.bridge.name"]
    )
    a_gateway = engine.networks.get(f"sandbar-net-{a}").attrs["IPAM"]["Config"][0]["Gateway"]
    assert gateway is not None
    for address in (gateway, a_gateway):
        with listening(address) as (other, peers):
            with socket.create_connection((address, other), timeout=5) as probe:
                assert probe.recv(64).startswith(b"HTTP/1.0 200")
            code, body = fetch(box_a, f"http://{address}:{other}/")
            assert code != 0, body
            assert len(peers) == 1, peers  # only the host's own probe came in
    # Sandbar's port on A's own gateway is not its endpoint: that is host.docker.internal.
    code, body = fetch(box_a, f"http://{a_gateway}:{port}/healthz")
    assert code != 0, body

    # Deleting a sandbox removes its network and its host rule with it.
    assert rules_of(a)
    assert alice.client.delete(f"/api/sandboxes/{a}").status_code == 202
    wait_for(alice.client, a, "gone")
    wait_until(lambda: gone(engine, a), f"something of sandbox {a} was left")
    assert rules_of(b), "another sandbox's rule went too"


def test_the_sweep_removes_networks_and_rules_of_sandboxes_gone(
    container_env, start_server, engine
):
    env = container_env()
    server = start_server(env)
    alice = register(server.url, "alice")
    sid = make_sandbox(alice, make_workspace(alice))
    wait_for(alice.client, sid, "running")
    server.stop()
    # Made by an installation that crashed before it recorded its sandbox: a network and a
    # rule with this installation's labels, and no sandbox of that id in the log.
    instance = DerivedSecrets(env["SANDBAR_SECRET_KEY"].encode()).instance()
    orphan = str(uuid.uuid4())
    engine.networks.create(
        f"sandbar-net-{orphan}",
        labels={"sandbar.sandbox": orphan, "sandbar.instance": instance},
    )
    rule = [
        "-i",
        f"sbx{uuid.UUID(orphan).hex[:12]}",
        "-p",
        "tcp",
        "--dport",
        "9",
        "-m",
        "comment",
        "--comment",
        f"sandbar {instance} {orphan}",
        "-j",
        "ACCEPT",
    ]
    subprocess.run(["iptables", "-I", "SANDBAR-SANDBOXES", "2", *rule], check=True)
    server.start()
    wait_until(lambda: gone(engine, orphan), "the orphan network or rule was not removed")
    assert engine.networks.get(f"sandbar-net-{sid}").attrs["Labels"]["sandbar.sandbox"] == sid
    assert rules_of(sid)


@pytest.fixture(autouse=True)
def _needs_iptables(docker_host: str) -> None:
    iptables = shutil.which("iptables")
    listed = iptables and subprocess.run([iptables, "-S"], capture_output=True, check=False)
    if not listed or listed.returncode != 0:
        pytest.fail("iptables is not usable here: run the container tests as root")

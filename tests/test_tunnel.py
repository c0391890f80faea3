"""Local agents end to end: a real ``sandbar serve``, the real ``sandbar agent`` CLI in
its own process, and behind it a test agent server (tests/upstream.py) or the real
opencode binary, reached from the browser's side through the subdomain proxy."""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from tests.conftest import ROOT, ServerProcess, User, free_port, register, run_sandbar, running
from tests.terminals import terminal_round_trip
from tests.upstream import TestAgent


@pytest.fixture(scope="module")
def tunnel_server(
    server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with running(server_env, tmp_path_factory.mktemp("tunnel") / "server.log") as proc:
        yield proc


# Short clocks for the tests that wait on them (README's settings table has the defaults:
# a PING every 5 s, dead after 15 s, stalled after 15 s, offline after 3 s away).
QUICK_HEARTBEAT = {"SANDBAR_TUNNEL_PING_EVERY": "0.5", "SANDBAR_TUNNEL_DEAD_AFTER": "1.5"}
QUICK_TUNNELS = {
    **QUICK_HEARTBEAT,
    "SANDBAR_TUNNEL_STALL_AFTER": "1",
    "SANDBAR_TUNNEL_OFFLINE_GRACE": "0.5",
}


class AgentProcess:
    """``sandbar agent connect`` as a user runs it (``env``: more of its environment)."""

    def __init__(
        self, config: Path, sandbox_id: str, *extra: str, env: dict[str, str] | None = None
    ) -> None:
        self.sandbox_id = sandbox_id
        self.log = config.with_suffix(f".{time.monotonic_ns()}.log")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "interfaces.cli.main", "agent", "connect", sandbox_id, *extra],
            env={**os.environ, "SANDBAR_AGENT_CONFIG": str(config), **(env or {})},
            cwd=ROOT,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def agent_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "interfaces.cli.main", "agent", *args],
        env={**os.environ, "SANDBAR_AGENT_CONFIG": str(config)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@dataclass
class Local:
    """A registered local sandbox, and how to reach it as a program would."""

    id: str
    owner: User
    workspace_id: str
    config: Path
    server: ServerProcess
    token: str = ""

    @property
    def host(self) -> str:
        return f"oc-{self.id}.localhost:{self.server.port}"

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.url,
            headers={"host": self.host, "authorization": f"Bearer {self.token}"},
            timeout=60,
            **kwargs,  # type: ignore[arg-type]
        )

    def websocket(self, path: str) -> ClientConnection:
        sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=10)
        return ws_connect(
            f"ws://{self.host}{path}",
            sock=sock,
            additional_headers={"authorization": f"Bearer {self.token}"},
            open_timeout=15,
        )

    def status(self) -> str:
        return self.owner.client.get(f"/api/sandboxes/{self.id}").json()["status"]

    def wait_status(self, status: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while self.status() != status:
            assert time.monotonic() < deadline, f"still {self.status()}, not {status}"
            time.sleep(0.05)

    def connect(self, *extra: str) -> AgentProcess:
        return AgentProcess(self.config, self.id, *extra)


def new_code(user: User, workspace_id: str) -> str:
    r = user.client.post(f"/api/workspaces/{workspace_id}/agent-code")
    assert r.status_code == 201, r.text
    expires = datetime.fromisoformat(r.json()["expires_at"])  # (docs/api.md: {code, expires_at})
    assert timedelta(minutes=9) < expires - datetime.now(UTC) <= timedelta(minutes=10)
    return r.json()["code"]


@pytest.fixture
def make_local(
    tunnel_server: ServerProcess, agent_app: tuple[TestAgent, int], tmp_path: Path
) -> Iterator[Callable[..., Local]]:
    agents: list[AgentProcess] = []

    def make(target_port: int | None = None, name: str = "laptop") -> Local:
        owner = register(tunnel_server.url, "owner")
        wid = owner.client.post("/api/workspaces", json={"name": "home"}).json()["id"]
        config = tmp_path / f"agents-{name}.json"
        done = agent_cli(
            config,
            "register",
            "--server",
            tunnel_server.url,
            "--code",
            new_code(owner, wid),
            "--name",
            name,
            "--target",
            f"http://127.0.0.1:{target_port or agent_app[1]}",
        )
        assert done.returncode == 0, done.stderr
        sid = next(iter(json.loads(config.read_text())))
        local = Local(sid, owner, wid, config, tunnel_server)
        local.token = owner.client.post(f"/api/sandboxes/{sid}/access-tokens").json()["token"]
        return local

    yield make
    for a in agents:
        a.stop()


def test_codes_register_local_sandboxes_once(tunnel_server: ServerProcess) -> None:
    owner = register(tunnel_server.url, "owner")
    wid = owner.client.post("/api/workspaces", json={"name": "w"}).json()["id"]
    guest, stranger = register(tunnel_server.url, "guest"), register(tunnel_server.url, "stranger")
    owner.client.post(
        f"/api/workspaces/{wid}/members", json={"username": guest.username, "role": "guest"}
    )
    assert guest.client.post(f"/api/workspaces/{wid}/agent-code").status_code == 403
    assert stranger.client.post(f"/api/workspaces/{wid}/agent-code").status_code == 404
    assert httpx.post(f"{tunnel_server.url}/api/workspaces/{wid}/agent-code").status_code == 401

    code = new_code(owner, wid)

    def attempt(i: int) -> httpx.Response:
        return httpx.post(
            f"{tunnel_server.url}/api/agent/register",
            json={"code": code.lower().replace("-", ""), "name": f"box-{i}"},
            timeout=30,
        )

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(attempt, range(10)))
    assert sorted(r.status_code for r in answers) == [201] + [401] * 9
    won = next(r for r in answers if r.status_code == 201).json()
    assert won["workspace_id"] == wid and won["tunnel_token"].startswith("sbt_")
    sandbox = owner.client.get(f"/api/sandboxes/{won['sandbox_id']}").json()
    assert (sandbox["kind"], sandbox["status"]) == ("local", "offline")
    assert won["tunnel_token"] not in json.dumps(sandbox)
    for action in ("pause", "resume"):
        r = owner.client.post(f"/api/sandboxes/{won['sandbox_id']}/{action}")
        assert r.status_code == 409, r.text
    # A wrong token cannot dial in; nor can the right one in the URL (logs keep URLs).
    url = f"ws://127.0.0.1:{tunnel_server.port}/api/tunnel/{won['sandbox_id']}"
    forged = {"authorization": "Bearer sbt_forged"}
    with pytest.raises(InvalidStatus, match="403"):
        ws_connect(url, additional_headers=forged, open_timeout=10)
    with pytest.raises(InvalidStatus, match="401"):
        ws_connect(f"{url}?token={won['tunnel_token']}", open_timeout=10)


def test_the_cli_keeps_registrations_private_and_side_by_side(
    tunnel_server: ServerProcess, tmp_path: Path
) -> None:
    owner = register(tunnel_server.url, "owner")
    wid = owner.client.post("/api/workspaces", json={"name": "w"}).json()["id"]
    config = tmp_path / "nested" / "agents.json"
    for name in ("laptop", "desktop"):
        done = agent_cli(
            config, "register", "--server", tunnel_server.url, "--code", new_code(owner, wid),
            "--name", name,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert config.stat().st_mode & 0o777 == 0o600
    saved = json.loads(config.read_text())
    assert len(saved) == 2
    listed = agent_cli(config, "list").stdout
    assert "laptop" in listed and "desktop" in listed
    gone = next(iter(saved))
    assert agent_cli(config, "remove", gone).returncode == 0
    assert gone not in json.loads(config.read_text())
    refused = agent_cli(
        config, "register", "--server", tunnel_server.url, "--code", "AAAA-BBBB-CCCC",
        "--name", "x",
    )  # fmt: skip
    assert refused.returncode == 1 and "refused (401)" in refused.stderr
    # Several registering at once: every one is kept.
    codes = [new_code(owner, wid) for _ in range(6)]

    def register_box(i: int) -> subprocess.CompletedProcess[str]:
        return agent_cli(
            config, "register", "--server", tunnel_server.url, "--code", codes[i],
            "--name", f"box{i}",
        )  # fmt: skip

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        runs = list(pool.map(register_box, range(6)))
    assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]
    names = {r["name"] for r in json.loads(config.read_text()).values()}
    assert {f"box{i}" for i in range(6)} <= names
    assert config.stat().st_mode & 0o777 == 0o600


def test_http_sse_and_websockets_through_the_tunnel(
    make_local: Callable[..., Local], agent_app: tuple[TestAgent, int]
) -> None:
    local = make_local()
    agent = local.connect()
    try:
        local.wait_status("running")
        with local.client() as client:
            r = client.get("/echo?q=1", headers=[("x-multi", "a"), ("x-multi", "b")])
            assert r.status_code == 200
            seen = [v for n, v in r.json()["headers"] if n == "x-multi"]
            assert seen == ["a", "b"]  # every header value kept, repeated ones too
            assert len(client.get("/bytes?n=20000000").content) == 20_000_000
            body = random.randbytes(8_000_000)

            def pieces() -> Iterator[bytes]:
                for i in range(0, len(body), 100_000):
                    yield body[i : i + 100_000]

            r = client.post("/echo", content=pieces())
            assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
            # SSE: each event arrives before the next is even sent.
            app, _ = agent_app
            app.sse_gated = True
            try:
                with client.stream("GET", "/sse?n=3") as stream:
                    events = []
                    for line in stream.iter_lines():
                        if line.startswith("data: "):
                            events.append(line)
                            app.sse_release.release()
                assert events == ["data: event 0", "data: event 1", "data: event 2"]
            finally:
                app.sse_gated = False
        # A WebSocket, through the proxy and the tunnel, both ways, with close codes.
        sock = socket.create_connection(("127.0.0.1", local.server.port))
        with ws_connect(
            f"ws://{local.host}/ws",
            sock=sock,
            additional_headers={"authorization": f"Bearer {local.token}"},
        ) as ws:
            json.loads(ws.recv(timeout=10))
            ws.send("ping")
            assert ws.recv(timeout=10) == "ping"
            ws.send(b"\x00" * 100_000)
            assert ws.recv(timeout=10) == b"\x00" * 100_000
            ws.send("close 4003")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4003
    finally:
        agent.stop()
    local.wait_status("offline")


def test_a_hundred_requests_at_once_arrive_intact(make_local: Callable[..., Local]) -> None:
    local = make_local()
    agent = local.connect()
    try:
        local.wait_status("running")
        rng = random.Random(7)
        sizes = [rng.choice([0, 10, 1_000, 70_000, 300_000, 2_000_000]) for _ in range(100)]

        def one(i: int) -> bool:
            with local.client() as client:
                if i % 2:
                    return len(client.get(f"/bytes?n={sizes[i]}").content) == sizes[i]
                body = rng.randbytes(sizes[i])
                r = client.post("/echo", content=body)
                return r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()

        with concurrent.futures.ThreadPoolExecutor(100) as pool:
            assert all(pool.map(one, range(100)))
    finally:
        agent.stop()


def test_streams_the_local_server_closes_are_closed_at_both_ends(
    make_local: Callable[..., Local],
) -> None:
    """The local server closes its connection after each answer (more times than a
    tunnel holds streams at once): each stream ends at both ends, so none is left open
    to use up the tunnel."""
    local = make_local()
    agent = local.connect()
    try:
        local.wait_status("running")
        with local.client() as client:
            for _ in range(300):
                r = client.get("/close")
                assert (r.status_code, r.text) == (200, "ok"), r.text
    finally:
        agent.stop()


def test_an_agent_that_goes_away_fails_its_requests_quickly(
    make_local: Callable[..., Local],
) -> None:
    local = make_local()
    agent = local.connect()
    local.wait_status("running")
    with local.client() as client, client.stream("GET", f"/bytes?n={2**30}") as r:
        stream = r.iter_raw(65536)
        next(stream)
        agent.kill()
        started = time.monotonic()
        with pytest.raises(httpx.TransportError):
            for _ in stream:
                pass
        assert time.monotonic() - started < 10
    local.wait_status("offline")
    with local.client() as client:
        r = client.get("/echo")
        assert r.status_code == 502 and r.json()["error"]["code"] == "agent_offline"
    again = local.connect()  # back again: traffic flows
    try:
        local.wait_status("running")
        with local.client() as client:
            assert client.get("/echo").status_code == 200
    finally:
        again.stop()


def test_a_second_connection_replaces_the_first(make_local: Callable[..., Local]) -> None:
    local = make_local()
    first = local.connect()
    local.wait_status("running")
    second = local.connect()
    try:
        assert first.proc.wait(timeout=20) == 1  # told it was replaced: it stops
        assert "another connection of this agent took over" in first.output()
        assert local.status() == "running"
        with local.client() as client:
            assert client.get("/echo").status_code == 200
    finally:
        second.stop()


def test_deleting_the_sandbox_closes_its_tunnel(make_local: Callable[..., Local]) -> None:
    local = make_local()
    agent = local.connect()
    local.wait_status("running")
    assert local.owner.client.delete(f"/api/sandboxes/{local.id}").status_code == 202
    assert agent.proc.wait(timeout=20) == 1
    assert "deleted" in agent.output()
    # Its token no longer opens a tunnel.
    again = local.connect()
    assert again.proc.wait(timeout=30) == 1
    assert "refused this agent" in again.output()


@pytest.fixture(scope="session")
def opencode_binary(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The opencode-linux-x64 binary from the npm registry (it runs on the host too)."""
    folder = tmp_path_factory.mktemp("opencode")
    packed = subprocess.run(
        ["npm", "pack", "--silent", "opencode-linux-x64@1.18.34"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert packed.returncode == 0, packed.stderr
    tarball = next(folder.glob("*.tgz"))
    subprocess.run(["tar", "xzf", str(tarball)], cwd=folder, check=True)
    return str(folder / "package" / "bin" / "opencode")


def test_opencode_on_the_agents_machine(
    make_local: Callable[..., Local], opencode_binary: str
) -> None:
    port = free_port()
    local = make_local(target_port=port, name="opencode")
    agent = local.connect("--start-opencode", "--opencode", opencode_binary)
    try:
        local.wait_status("running")
        with local.client() as client:
            deadline = time.monotonic() + 60
            while (r := client.get("/global/health")).status_code != 200:
                assert time.monotonic() < deadline, r.text  # opencode is starting
                time.sleep(0.2)
            assert r.json()["healthy"] is True  # with the password Sandbar presented
            page = client.get("/")
            assert page.status_code == 200 and "<html" in page.text.lower()
            doc = client.get("/doc")
            assert doc.status_code == 200 and "openapi" in doc.json()
            with client.stream("GET", "/event", timeout=30) as events:
                assert events.headers["content-type"].startswith("text/event-stream")
                first = next(line for line in events.iter_lines() if line.startswith("data:"))
                assert json.loads(first[5:])["type"]
            terminal_round_trip(client, local.websocket)  # a WebSocket, end to end
    finally:
        agent.stop()


def test_heartbeats_find_a_frozen_agent(
    server_env: dict[str, str], agent_app: tuple[TestAgent, int], tmp_path: Path
) -> None:
    """No TCP error will say so when the agent's machine just stops answering: the
    tunnel's heartbeat does (a PING unanswered for SANDBAR_TUNNEL_DEAD_AFTER seconds:
    1.5 here, where the default of 15 would outlast the wait)."""
    server = ServerProcess({**server_env, **QUICK_TUNNELS}, tmp_path / "server.log").start()
    agent: AgentProcess | None = None
    try:
        local, agent = own_agent(server, agent_app[1], tmp_path)
        local.wait_status("running")
        agent.proc.send_signal(signal.SIGSTOP)
        local.wait_status("offline", timeout=10)
        with local.client() as client:
            assert client.get("/echo").status_code == 502
    finally:
        if agent is not None:
            agent.proc.send_signal(signal.SIGCONT)
            agent.stop()
        server.stop()


def own_agent(
    server: ServerProcess, target_port: int, tmp_path: Path, env: dict[str, str] | None = None
) -> tuple[Local, AgentProcess]:
    """A local sandbox on a server of the test's own, and its agent connected (``env``:
    more of the agent's environment)."""
    local = own_local(server, target_port, tmp_path)
    return local, AgentProcess(local.config, local.id, env=env)


def own_local(
    server: ServerProcess, target_port: int, tmp_path: Path, via: str | None = None
) -> Local:
    """A local sandbox on a server of the test's own, registered here (through ``via``,
    a front proxy's URL, when given: the agent then dials through it too)."""
    url = via or server.url
    owner = register(url, "owner")
    wid = owner.client.post("/api/workspaces", json={"name": "home"}).json()["id"]
    config = tmp_path / "agents.json"
    done = agent_cli(
        config, "register", "--server", url, "--code", new_code(owner, wid),
        "--name", "desk", "--target", f"http://127.0.0.1:{target_port}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    sid = next(iter(json.loads(config.read_text())))
    local = Local(sid, owner, wid, config, server)
    local.token = owner.client.post(f"/api/sandboxes/{sid}/access-tokens").json()["token"]
    return local


def wait_output(agent: AgentProcess, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in agent.output():
        assert time.monotonic() < deadline, agent.output()
        time.sleep(0.2)


def test_heartbeats_find_a_frozen_sandbar(
    server_env: dict[str, str], agent_app: tuple[TestAgent, int], tmp_path: Path
) -> None:
    """The other way round: Sandbar's machine stops answering; the agent's heartbeat
    says so and the agent dials again (rather than wait for ever on a silent socket).
    The agent reads its heartbeat from its environment: 1.5 s here, not 15."""
    server = ServerProcess(server_env, tmp_path / "server.log").start()
    agent: AgentProcess | None = None
    try:
        local, agent = own_agent(server, agent_app[1], tmp_path, env=QUICK_HEARTBEAT)
        local.wait_status("running")
        server.proc.send_signal(signal.SIGSTOP)
        wait_output(agent, "no heartbeat for 1.5 s", 10)
    finally:
        server.proc.send_signal(signal.SIGCONT)
        if agent is not None:
            agent.stop()
        server.stop()


def test_an_agent_keeps_dialing_a_server_that_answers_nothing_valid(
    make_local: Callable[..., Local],
) -> None:
    """A front that takes the connection and drops it without an HTTP answer (a server
    restarting behind a load balancer, say): the agent says so and dials again, it does
    not exit."""
    agent: AgentProcess | None = None
    try:
        local = make_local()
        agent = local.connect()
        local.wait_status("running")
        agent.stop()
        with socket.socket() as front:
            front.bind(("127.0.0.1", 0))
            front.listen(16)
            front.settimeout(0.2)
            registrations = json.loads(local.config.read_text())
            registrations[local.id]["server"] = f"http://127.0.0.1:{front.getsockname()[1]}"
            local.config.write_text(json.dumps(registrations))
            agent = local.connect()
            dropped, deadline = 0, time.monotonic() + 20
            while agent.output().count("no valid answer from Sandbar") < 2:
                assert time.monotonic() < deadline, agent.output()
                assert agent.proc.poll() is None, agent.output()  # still dialing
                with contextlib.suppress(TimeoutError):
                    front.accept()[0].close()  # taken, and dropped unanswered
                    dropped += 1
            assert dropped >= 2 and "Traceback" not in agent.output()
    finally:
        if agent is not None:
            agent.stop()


def test_a_body_ended_by_its_connection_is_cut_when_the_tunnel_dies(
    make_local: Callable[..., Local],
) -> None:
    """The local server answers without a length (its body ends when its connection
    does); the agent dies mid-body: the browser's transfer breaks off, never ending as
    if the body were whole."""
    agent: AgentProcess | None = None
    with socket.socket() as target:
        target.bind(("127.0.0.1", 0))
        target.listen(4)
        target.settimeout(20)
        try:
            local = make_local(target_port=target.getsockname()[1])
            agent = local.connect()
            local.wait_status("running")
            browser = socket.create_connection(("127.0.0.1", local.server.port), timeout=20)
            browser.sendall(
                f"GET /page HTTP/1.1\r\nHost: {local.host}\r\n"
                f"Authorization: Bearer {local.token}\r\n\r\n".encode()
            )
            upstream, _ = target.accept()
            upstream.recv(65536)  # the request
            upstream.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nthe first half")
            seen = b""
            while b"the first half" not in seen:
                seen += browser.recv(65536)
            agent.kill()  # mid-body
            while data := browser.recv(65536):
                seen += data
            browser.close()
            upstream.close()
            assert b"transfer-encoding: chunked" in seen.lower()
            assert not seen.endswith(b"0\r\n\r\n"), seen  # no end that says "whole"
        finally:
            if agent is not None:
                agent.stop()


def test_an_agent_stopped_while_its_opencode_starts_stops_it_too(
    make_local: Callable[..., Local], tmp_path: Path
) -> None:
    """SIGTERM while ``--start-opencode`` waits for the opencode it started to answer:
    the agent exits, and that opencode with it (none is left holding the port)."""
    pid_file = tmp_path / "opencode.pid"
    fake = tmp_path / "opencode"  # starts, never answers
    fake.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 300\n")
    fake.chmod(0o755)
    try:
        local = make_local(target_port=free_port())
        agent = local.connect("--start-opencode", "--opencode", str(fake))
        deadline = time.monotonic() + 20
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline, agent.output()
            time.sleep(0.1)
        opencode = int(pid_file.read_text())
        agent.proc.send_signal(signal.SIGTERM)
        agent.proc.wait(timeout=20)
        deadline = time.monotonic() + 15
        while os.path.exists(f"/proc/{opencode}") and "zombie" not in _state(opencode):
            assert time.monotonic() < deadline, "the opencode it started is still running"
            time.sleep(0.1)
    finally:
        if pid_file.exists() and pid_file.read_text().strip():
            with contextlib.suppress(OSError):  # (left behind only if the test failed)
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"  # (gone meanwhile)


def test_agents_come_back_after_sandbar_restarts(
    server_env: dict[str, str], agent_app: tuple[TestAgent, int], tmp_path: Path
) -> None:
    """Stopping Sandbar tells its agents to dial again (1012), not to give up: once it
    is back on the same address, the sandbox is reachable again. (The agent waits at
    most half a second between dials here, not up to 30 s.)"""
    server = ServerProcess(server_env, tmp_path / "server.log").start()
    again: ServerProcess | None = None
    agent: AgentProcess | None = None
    try:
        quick = {"SANDBAR_TUNNEL_BACKOFF_CAP": "0.5"}
        local, agent = own_agent(server, agent_app[1], tmp_path, env=quick)
        local.wait_status("running")
        server.stop()
        wait_output(agent, "reconnecting", 20)
        assert agent.proc.poll() is None, agent.output()  # still trying
        again = ServerProcess(server_env, tmp_path / "again.log", port=server.port).start()
        local.server = again
        local.wait_status("running", timeout=45)
        with local.client() as client:
            assert client.get("/echo").status_code == 200
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
        if again is not None:
            again.stop()


def test_a_browser_that_goes_away_cancels_its_stream_at_the_agent(
    make_local: Callable[..., Local], agent_app: tuple[TestAgent, int]
) -> None:
    local = make_local()
    agent = local.connect()
    app, _ = agent_app
    try:
        local.wait_status("running")
        with local.client() as client, client.stream("GET", "/forever") as r:
            next(r.iter_raw(1024))  # the stream is flowing; now the browser leaves
        deadline = time.monotonic() + 10
        while {"cancelled": "/forever"} not in app.seen:
            assert time.monotonic() < deadline, "the agent's server never saw the cancel"
            time.sleep(0.05)
    finally:
        agent.stop()


def test_many_downloads_at_once_keep_the_tunnel_up(make_local: Callable[..., Local]) -> None:
    """32 parallel downloads, each bigger than a stream's window: the tunnel's WebSocket
    messages stay under the server's size limit and every body arrives whole."""
    local = make_local()
    agent = local.connect()
    try:
        local.wait_status("running")
        size = 5_000_000

        def one(_: int) -> int:
            with local.client() as client:
                return len(client.get(f"/bytes?n={size}").content)

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            assert list(pool.map(one, range(32))) == [size] * 32
        assert "disconnected" not in agent.output()
    finally:
        agent.stop()


def test_tunnel_clocks_that_cannot_work_stop_the_agent_and_the_server(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    """A heartbeat that calls a link dead before its next PING is due would end every
    tunnel: ``sandbar agent connect`` and ``sandbar serve`` both refuse it, in one line
    that names the settings, rather than start and flap."""
    bad = {"SANDBAR_TUNNEL_PING_EVERY": "20", "SANDBAR_TUNNEL_DEAD_AFTER": "15"}
    config = tmp_path / "agents.json"
    sandbox_id = "00000000-0000-0000-0000-000000000000"
    registration = {"server": "http://127.0.0.1:9", "tunnel_token": "t", "target": "http://x"}
    config.write_text(json.dumps({sandbox_id: registration}))
    agent = subprocess.run(
        [sys.executable, "-m", "interfaces.cli.main", "agent", "connect", sandbox_id],
        env={**os.environ, "SANDBAR_AGENT_CONFIG": str(config), **bad},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert agent.returncode == 1, agent.stdout + agent.stderr
    assert "SANDBAR_TUNNEL_*" in agent.stderr and "Traceback" not in agent.stderr, agent.stderr
    served = run_sandbar("serve", "--port", str(free_port()), env={**server_env, **bad}, timeout=60)
    assert served.returncode == 1, served.stdout + served.stderr
    assert "SANDBAR_TUNNEL_*" in served.stderr and "Traceback" not in served.stderr

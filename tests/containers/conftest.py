"""A real container engine for the container tests, started by the tests themselves:
``DOCKER_HOST`` when it answers, else a private dockerd (installed if missing) in a
temporary folder, stopped at the end. Images are built locally (images/build.sh)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from infrastructure.agents import DerivedSecrets
from tests import waiting
from tests.conftest import FAST_HASHING, ROOT, ServerProcess, User, register

TINY = "sandbar-tiny:latest"
OPENCODE = "sandbar-opencode:latest"


def _answers(host: str) -> bool:
    try:
        docker.DockerClient(base_url=host).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def docker_host() -> Iterator[str]:
    existing = os.environ.get("DOCKER_HOST")
    if existing and _answers(existing):
        yield existing
        return
    # A short path: a unix socket's path is limited to about 100 characters.
    folder = Path(tempfile.mkdtemp(prefix="sbe-", dir="/tmp"))
    started = subprocess.run(
        [str(ROOT / "scripts/engine.sh"), "start", str(folder)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert started.returncode == 0, started.stderr
    host = started.stdout.strip()
    yield host
    client = docker.DockerClient(base_url=host)
    for c in client.containers.list(all=True, filters={"label": "sandbar.sandbox"}):
        c.remove(force=True)
    client.close()
    subprocess.run([str(ROOT / "scripts/engine.sh"), "stop", str(folder)], timeout=60)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def engine(docker_host: str) -> Iterator[Any]:
    client = docker.DockerClient(base_url=docker_host)
    yield client
    client.close()


def build_image(docker_host: str, which: str) -> None:
    built = subprocess.run(
        [str(ROOT / "images/build.sh"), which],
        env={**os.environ, "DOCKER_HOST": docker_host},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stderr


@pytest.fixture(scope="session")
def tiny_image(docker_host: str) -> str:
    build_image(docker_host, "tiny")
    return TINY


@pytest.fixture(scope="session")
def opencode_image(docker_host: str) -> str:
    build_image(docker_host, "opencode")
    return OPENCODE


@pytest.fixture(scope="session")
def container_env(
    docker_host: str, tiny_image: str, make_database: Callable[[], str], tmp_path_factory
) -> Callable[..., dict[str, str]]:
    """Environment for a server with a container worker, on a database of its own."""

    def make(**overrides: str) -> dict[str, str]:
        env = {
            **FAST_HASHING,
            "SANDBAR_DATABASE_URL": make_database(),
            "SANDBAR_DATA_DIR": str(tmp_path_factory.mktemp("data")),
            "SANDBAR_SECRET_KEY": f"container-tests-key-{uuid.uuid4().hex}",
            "SANDBAR_WORKER": "true",
            "DOCKER_HOST": docker_host,
            "SANDBAR_OPENCODE_IMAGE": tiny_image,
            "SANDBAR_OPENCLAW_IMAGE": tiny_image,
            "SANDBAR_SANDBOX_MEMORY": "256m",
            "SANDBAR_SANDBOX_CPUS": "0.5",
            "SANDBAR_SANDBOX_PIDS": "128",
            "SANDBAR_SANDBOX_STOP_TIMEOUT": "2",
            "SANDBAR_READY_TIMEOUT": "60",
            "SANDBAR_SWEEP_INTERVAL": "2",
        }
        env.update(overrides)
        return env

    return make


def remove_containers_of(engine: Any, env: dict[str, str]) -> None:
    """Remove what a server made (a stopped server leaves its sandboxes be): containers,
    home volumes, networks and the host's rules."""
    instance = DerivedSecrets(env["SANDBAR_SECRET_KEY"].encode()).instance()
    ours = {"label": f"sandbar.instance={instance}"}
    for c in engine.containers.list(all=True, filters=ours):
        c.remove(force=True, v=True)
    for v in engine.volumes.list(filters=ours):
        v.remove(force=True)
    for n in engine.networks.list(filters=ours):
        n.remove()
    for line in rules_of(f"sandbar {instance} "):
        subprocess.run(["iptables", "-D", *shlex.split(line)[1:]], check=False)


@pytest.fixture
def start_server(tmp_path: Path, engine: Any) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``sandbar serve`` processes (stopped, their containers removed, at the end)."""
    servers: list[ServerProcess] = []

    def start(env: dict[str, str], port: int | None = None) -> ServerProcess:
        log = tmp_path / f"server-{len(servers)}.log"
        servers.append(ServerProcess(env, log, port=port).start())
        return servers[-1]

    yield start
    for s in servers:
        s.stop()
        remove_containers_of(engine, s.env)
    for s in servers:
        assert "Traceback" not in s.log.read_text(), s.log.read_text()


@pytest.fixture(scope="session")
def shared_server(container_env, engine, tmp_path_factory) -> Iterator[ServerProcess]:
    """One server with a worker on the tiny image, for tests that need no settings of their own."""
    log = tmp_path_factory.mktemp("containers") / "server.log"
    server = ServerProcess(container_env(), log).start()
    yield server
    server.stop()
    remove_containers_of(engine, server.env)
    assert "Traceback" not in log.read_text(), log.read_text()


def wait_for(client: httpx.Client, sandbox_id: str, *statuses: str, timeout: float = 90) -> dict:
    """Poll the sandbox until its status is one of ``statuses`` (or it is gone, for
    ``"gone"``); returns its last representation."""

    def status() -> dict:
        r = client.get(f"/api/sandboxes/{sandbox_id}")
        if r.status_code == 404 and "gone" in statuses:
            return {"status": "gone"}
        assert r.status_code == 200, r.text
        return r.json()

    return waiting.wait_until(
        status,
        until=lambda body: body["status"] in statuses,
        timeout=timeout,
        interval=0.1,
        what=f"sandbox {sandbox_id} {' or '.join(statuses)}",
    )


def rules_of(sandbox_id: str) -> list[str]:
    """The host's rules that name the sandbox (``iptables -S`` lines)."""
    if shutil.which("iptables") is None:
        return []
    listed = subprocess.run(
        ["iptables", "-S", "SANDBAR-SANDBOXES"], capture_output=True, text=True, check=False
    )
    return [line for line in listed.stdout.splitlines() if sandbox_id in line]


def gone(engine, sandbox_id: str) -> bool:
    """No container, home volume, network or host rule of the sandbox is left."""
    lookups = (
        lambda: engine.containers.get(f"sandbar-{sandbox_id}"),
        lambda: engine.volumes.get(f"sandbar-home-{sandbox_id}"),
        lambda: engine.networks.get(f"sandbar-net-{sandbox_id}"),
    )
    for lookup in lookups:
        try:
            lookup()
            return False
        except docker.errors.NotFound:
            pass
    return not rules_of(sandbox_id)


def wait_until(condition: Callable[[], object], what: str, timeout: float = 60) -> None:
    waiting.wait_until(condition, timeout=timeout, interval=0.2, what=what)


def make_workspace(user: User) -> str:
    r = user.client.post("/api/workspaces", json={"name": "containers"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def make_sandbox(user: User, workspace_id: str, type_: str = "opencode") -> str:
    r = user.client.post(
        f"/api/workspaces/{workspace_id}/sandboxes", json={"name": "box", "type": type_}
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


__all__ = [
    "gone",
    "make_sandbox",
    "make_workspace",
    "register",
    "rules_of",
    "wait_for",
    "wait_until",
]


@pytest.fixture(scope="session")
def opencode_server(container_env, engine, opencode_image, tmp_path_factory):
    """One server whose worker runs the real opencode image, shared by the tests that reach
    opencode through the subdomain proxy."""
    env = container_env(SANDBAR_OPENCODE_IMAGE=opencode_image, SANDBAR_SANDBOX_MEMORY="1g")
    log = tmp_path_factory.mktemp("opencode") / "server.log"
    server = ServerProcess(env, log).start()
    yield server
    server.stop()
    remove_containers_of(engine, server.env)
    assert "Traceback" not in log.read_text(), log.read_text()

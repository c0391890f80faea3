"""Sandbar's own image (images/sandbar/build.sh, `make image`) run on the engine, and
compose.yaml brought up with Debian's docker-compose: both built locally, with no registry,
once per test session (a current image, by the hash of its inputs, is kept)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, free_port, register
from tests.containers.conftest import make_workspace, wait_until

SANDBAR = "sandbar:local"
POSTGRES = "sandbar-postgres:local"
GRACE = 30  # seconds: compose.yaml's stop_grace_period, and Docker's stop timeout here


@pytest.fixture(scope="session")
def images(docker_host: str) -> tuple[str, str]:
    built = subprocess.run(
        [str(ROOT / "images/sandbar/build.sh"), "all"],
        env={**os.environ, "DOCKER_HOST": docker_host},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert built.returncode == 0, built.stderr
    return SANDBAR, POSTGRES


def socket_of(docker_host: str) -> Path:
    if not docker_host.startswith("unix://"):
        pytest.skip("the engine's socket is mounted into Sandbar's container: unix:// only")
    return Path(docker_host.removeprefix("unix://"))


def answers(url: str, path: str) -> bool:
    try:
        return httpx.get(f"{url}{path}", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def up(url: str, what: str) -> None:
    """Alive (/healthz), then ready (/readyz: the views caught up)."""
    wait_until(lambda: answers(url, "/healthz"), what=f"{what} /healthz", timeout=120)
    wait_until(lambda: answers(url, "/readyz"), what=f"{what} /readyz", timeout=60)


def serves_the_api(url: str) -> None:
    """A user registers and makes a workspace through the server at ``url``."""
    user = register(url, "image")
    try:
        assert make_workspace(user)
        r = user.client.get("/api/workspaces")
        assert r.status_code == 200, r.text
        assert [w["name"] for w in r.json()] == ["containers"], r.text
    finally:
        user.client.close()


@pytest.fixture(scope="module")
def database(engine: Any, images: tuple[str, str]) -> Iterator[tuple[Any, str]]:
    """PostgreSQL's image, up and answering, on a network of its own: the container and
    the network's name."""
    name = f"sbimg-{uuid.uuid4().hex[:8]}"
    network = engine.networks.create(name)
    pg = engine.containers.run(
        images[1],
        name=f"{name}-pg",
        network=name,
        environment={"POSTGRES_PASSWORD": "image-test"},
        detach=True,
    )
    try:
        wait_until(
            lambda: pg.exec_run(["pg_isready", "--host=/run/postgresql"]).exit_code == 0,
            what="PostgreSQL's image ready",
        )
        yield pg, name
    finally:
        pg.remove(force=True, v=True)
        network.remove()


@pytest.fixture
def deployment(
    engine: Any, images: tuple[str, str], database: tuple[Any, str], docker_host: str
) -> Iterator[dict]:
    """Sandbar's image on a database of its own, with the worker on and the engine's
    socket mounted, run as the image says (its user, its command)."""
    pg, network = database
    sock = socket_of(docker_host)
    db = f"sandbar_{uuid.uuid4().hex[:8]}"
    made = pg.exec_run(["createdb", "--host=/run/postgresql", "--username=sandbar", db])
    assert made.exit_code == 0, made.output
    port = free_port()
    app = engine.containers.run(
        images[0],
        name=f"{network}-{db}",
        network=network,
        environment={
            "SANDBAR_DATABASE_URL": f"postgresql://sandbar:image-test@{pg.name}/{db}",
            "SANDBAR_SECRET_KEY": f"image-test-{uuid.uuid4().hex}",
            "SANDBAR_SANDBOX_FIREWALL": "false",
            "SANDBAR_ARGON2_MEMORY_KIB": "8192",
            "DOCKER_HOST": "unix:///var/run/docker.sock",
        },
        group_add=[str(sock.stat().st_gid)],
        volumes={str(sock): {"bind": "/var/run/docker.sock", "mode": "rw"}},
        ports={"8080/tcp": ("127.0.0.1", port)},
        detach=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        up(url, "the image's")
        yield {"url": url, "app": app}
    finally:
        app.remove(force=True, v=True)


def test_image_serves_the_api_as_a_non_root_user(deployment: dict) -> None:
    app = deployment["app"]
    serves_the_api(deployment["url"])
    uid = app.exec_run(["id", "-u"]).output.decode().strip()
    assert uid == "10001"
    app.reload()
    assert app.attrs["Config"]["User"] == "sandbar"
    logs = app.logs().decode()
    assert "the container engine answers" in logs, logs
    assert "Traceback" not in logs, logs


def stopped_by_sigterm(app: Any) -> tuple[int, str]:
    """SIGTERM, as `docker stop` sends; the exit status once it has exited (within the
    grace period), and the log."""
    app.kill(signal="SIGTERM")
    status = app.wait(timeout=GRACE)["StatusCode"]
    app.reload()
    assert app.status == "exited"
    return status, app.logs().decode()


def test_sigterm_stops_the_container_within_the_grace_period(deployment: dict) -> None:
    status, logs = stopped_by_sigterm(deployment["app"])
    assert "Application shutdown complete" in logs, logs
    assert "Traceback" not in logs, logs
    assert status in {0, 143}, logs


def test_sigterm_exits_zero(deployment: dict) -> None:
    status, logs = stopped_by_sigterm(deployment["app"])
    assert status == 0, logs


@pytest.fixture(scope="session")
def docker_compose() -> str:
    found = subprocess.run(
        [str(ROOT / "scripts/compose.sh")], capture_output=True, text=True, timeout=1800
    )
    assert found.returncode == 0, found.stderr
    return found.stdout.strip()


def test_compose_up_serves_the_api(
    docker_compose: str, images: tuple[str, str], docker_host: str, tmp_path: Path
) -> None:
    """compose.yaml as an operator runs it: beside a .env, with the locally built images."""
    sock = socket_of(docker_host)
    shutil.copy(ROOT / "compose.yaml", tmp_path / "compose.yaml")
    port = free_port()
    (tmp_path / ".env").write_text(
        f"SANDBAR_SECRET_KEY=compose-test-{uuid.uuid4().hex}\n"
        f"POSTGRES_PASSWORD={uuid.uuid4().hex}\n"
        f"DOCKER_GID={sock.stat().st_gid}\n"
        f"DOCKER_SOCKET={sock}\n"
        f"SANDBAR_PORT={port}\n"
        "SANDBAR_ARGON2_MEMORY_KIB=8192\n"
    )
    compose = [docker_compose, "--project-name", f"sbc{uuid.uuid4().hex[:8]}"]
    env = {**os.environ, "DOCKER_HOST": docker_host}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*compose, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )

    started = run("up", "--detach")
    try:
        assert started.returncode == 0, started.stderr
        url = f"http://127.0.0.1:{port}"
        up(url, "compose's Sandbar")
        serves_the_api(url)
        logs = run("logs", "--no-color", "sandbar").stdout
        assert "the container engine answers" in logs, logs
    finally:
        down = run("down", "--volumes", "--timeout", str(GRACE))
    assert down.returncode == 0, down.stderr
    assert run("ps", "--quiet").stdout.strip() == ""


def test_compose_file_is_valid_for_a_stack(docker_host: str, tmp_path: Path) -> None:
    """The same file deploys on a swarm: `docker stack config` (the Docker CLI's own
    loader) reads it, settings from the environment, with no `build:` and no option a
    stack refuses."""
    docker_cli = shutil.which("docker")
    if docker_cli is None:
        pytest.skip("no docker CLI")
    env = {
        **os.environ,
        "DOCKER_HOST": docker_host,
        "SANDBAR_SECRET_KEY": "stack-test",
        "POSTGRES_PASSWORD": "stack-test",
        "SANDBAR_IMAGE": "registry.example.com/sandbar:1",
    }
    shutil.copy(ROOT / "compose.yaml", tmp_path / "compose.yaml")
    (tmp_path / ".env").write_text("")
    done = subprocess.run(
        [docker_cli, "stack", "config", "--compose-file", "compose.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "build:" not in done.stdout
    assert "image: registry.example.com/sandbar:1" in done.stdout, done.stdout

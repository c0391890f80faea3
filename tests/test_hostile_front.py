"""What one anonymous client can make the front spend is bounded: a head that never ends
is refused at the cap as its bytes arrive, a head or a body that stalls is closed, a
client's connections are capped (the oldest idle one goes first), and requests
pipelined behind a slow one stop being read past a small queue."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import pytest

from interfaces.bootstrap import Sandbar
from tests.conftest import ServerProcess, User, record, register, running
from tests.front_client import Reader, request
from tests.upstream import TestAgent
from tests.waiting import wait_until

PER_CLIENT = 20


@dataclass
class Setup:
    server: ServerProcess
    owner: User
    host: str
    token: str


def _setup(env: dict[str, str], sandbar: Sandbar, agent_port: int, folder: Path) -> Iterator[Setup]:
    with running(env, folder / "server.log") as server:
        owner = register(server.url, "hostile")
        wid = owner.client.post("/api/workspaces", json={"name": "h"}).json()["id"]
        r = owner.client.post(
            f"/api/workspaces/{wid}/sandboxes", json={"name": "b", "type": "opencode"}
        )
        sid = UUID(r.json()["id"])
        record(sandbar, sid, lambda s: s.record_started(f"127.0.0.1:{agent_port}"))
        token = owner.client.post(f"/api/sandboxes/{sid}/access-tokens").json()["token"]
        yield Setup(server, owner, f"oc-{sid}.localhost", token)
        owner.client.close()


@pytest.fixture(scope="module")
def setup(
    server_env: dict[str, str],
    sandbar: Sandbar,
    agent_app: tuple[TestAgent, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Setup]:
    """Short timeouts, a short pipelining queue."""
    env = {
        **server_env,
        "SANDBAR_HEADER_TIMEOUT": "1",
        "SANDBAR_BODY_TIMEOUT": "1",
        "SANDBAR_MAX_PIPELINED": "8",
    }
    yield from _setup(env, sandbar, agent_app[1], tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def capped(
    server_env: dict[str, str],
    sandbar: Sandbar,
    agent_app: tuple[TestAgent, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Setup]:
    """Few connections per client; heads may take an hour (only the cap closes them)."""
    env = {
        **server_env,
        "SANDBAR_HEADER_TIMEOUT": "3600",
        "SANDBAR_MAX_CONNECTIONS_PER_CLIENT": str(PER_CLIENT),
    }
    yield from _setup(env, sandbar, agent_app[1], tmp_path_factory.mktemp("capped"))


def _connect(setup: Setup) -> socket.socket:
    return socket.create_connection(("127.0.0.1", setup.server.port), timeout=20)


def _closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    got = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            got += chunk
    return got


@pytest.mark.parametrize("host", ["localhost", "oc-00000000-0000-0000-0000-000000000000.localhost"])
def test_an_endless_header_is_refused_at_the_cap_as_it_arrives(setup: Setup, host: str) -> None:
    """No CRLF ever comes: the parser would keep the value to itself until it did."""
    with _connect(setup) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nX-Big: ".encode())
        sent, block = 0, b"a" * 65536
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < 64 * 1024 * 1024:  # (the old front read all of it)
                sock.sendall(block)
                sent += len(block)
        assert sent < 32 * 1024 * 1024, "the server kept reading an endless header"
        assert _closed(sock).startswith(b"HTTP/1.1 431 ")


def test_a_head_that_stalls_is_closed(setup: Setup) -> None:
    with _connect(setup) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        assert _closed(sock).startswith(b"HTTP/1.1 408 ")  # (SANDBAR_HEADER_TIMEOUT=1)


@pytest.mark.parametrize("sandbox", [False, True])
def test_a_body_that_stalls_is_closed(setup: Setup, sandbox: bool) -> None:
    host = setup.host if sandbox else "localhost"
    headers = {"Authorization": f"Bearer {setup.token}"} if sandbox else {}
    head = request("POST", host, "/echo" if sandbox else "/api/auth/login", headers)
    head = head.replace(b"Content-Length: 0", b"Content-Length: 1000")
    with _connect(setup) as sock:
        sock.sendall(head + b"x" * 10)  # ...and nothing more
        _closed(sock)  # (returns once the server has closed: SANDBAR_BODY_TIMEOUT=1)


def test_a_clients_oldest_idle_connection_makes_room_for_a_new_one(capped: Setup) -> None:
    """Slowloris: half a head on every connection. The newest pushes the oldest out."""
    idle = [_connect(capped) for _ in range(PER_CLIENT)]
    try:
        for sock in idle:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        with _connect(capped) as newest:
            newest.sendall(request("GET", "localhost", "/healthz"))
            assert Reader(newest).answer().status == 200
        assert _closed(idle[0]) == b""  # the oldest, shed (before: open for ever)
        idle[1].sendall(b"1\r\n\r\n")  # the others were kept
        assert Reader(idle[1]).answer().status == 200
    finally:
        for sock in idle:
            sock.close()


def test_a_client_busy_on_every_connection_gets_no_more(capped: Setup) -> None:
    """Connections with a request in progress are not shed: the new one is refused,
    and each busy one still gets its answer."""
    auth = {"Authorization": f"Bearer {capped.token}"}
    busy = [_connect(capped) for _ in range(PER_CLIENT)]
    try:
        for sock in busy:
            sock.sendall(request("GET", capped.host, "/late?after=5", auth))

        def newest() -> bytes:
            with _connect(capped) as sock:
                sock.sendall(request("GET", "localhost", "/healthz"))
                return _closed(sock)

        wait_until(  # once the server has taken all of them in, no answer
            newest,
            until=lambda answer: answer == b"",
            timeout=20,
            interval=0.01,
            what="a new connection refused (a client took more than its share)",
        )
        for sock in busy:
            assert Reader(sock).answer().body == b"late"
    finally:
        for sock in busy:
            sock.close()


def test_requests_pipelined_behind_a_slow_one_stop_being_read(setup: Setup) -> None:
    auth = {"Authorization": f"Bearer {setup.token}"}
    slow = request("GET", setup.host, "/late?after=3", auth)
    quick = request("GET", setup.host, "/", auth)
    flood = quick * (30 * 1024 * 1024 // len(quick))  # ~30 MiB of requests
    with _connect(setup) as sock:
        sock.sendall(slow)
        sock.setblocking(False)
        accepted = 0
        deadline = time.monotonic() + 2  # (the slow answer takes 3 s)
        while accepted < len(flood) and time.monotonic() < deadline:
            try:
                accepted += sock.send(flood[accepted : accepted + 1024 * 1024])
            except BlockingIOError:
                time.sleep(0.01)
        # The old front read (and queued) all of it; now reading stops after a few
        # requests, so what was accepted is what the sockets' buffers hold.
        assert accepted < len(flood) // 2, accepted
        sock.setblocking(True)
        reader = Reader(sock)
        assert reader.answer().body == b"late"
        for _ in range(100):  # the queue then moves on, in order
            assert reader.answer().body == b"ok"


def test_an_api_answer_before_the_body_has_come_closes_the_connection(setup: Setup) -> None:
    """A body too large for the API is refused at its head; the rest is not read."""
    with _connect(setup) as sock:
        head = request("POST", "localhost", "/api/auth/login", {"Content-Type": "application/json"})
        sock.sendall(head.replace(b"Content-Length: 0", b"Content-Length: 50000000"))
        answer = Reader(sock).answer("POST")
        assert answer.status == 413
        assert answer.header("connection") == "close"
        assert _closed(sock) == b""


def test_a_refused_request_without_a_body_keeps_its_connection(setup: Setup) -> None:
    """The gate's answer comes before the parser has seen the request's end; with no
    body to come, that is no reason to close (every refusal cost a new connection)."""
    host = f"oc-{UUID(int=7)}.localhost"
    with _connect(setup) as sock:
        reader = Reader(sock)
        for _ in range(3):
            sock.sendall(request("GET", host, "/"))
            answer = reader.answer()
            assert answer.status == 404
            assert answer.header("connection") != "close"

"""The subdomain proxy's gate under hostile traffic (issue 15), against a real ``sandbar
serve`` in front of the test agent (tests/upstream.py), spoken to with plain sockets
where a browser's own behaviour matters.

Refused requests leave nothing behind; a write or a WebSocket from another site's page
never reaches the agent; cookies are ``__Host-`` over https; a removed member's grants
stay gone when they come back; any ``next`` comes back percent-encoded, never a 5xx."""

from __future__ import annotations

import base64
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit
from uuid import UUID

import httpx
import psycopg
import pytest

from interfaces.bootstrap import Sandbar
from tests.conftest import PASSWORD, ServerProcess, User, record, register, running
from tests.errors import assert_error
from tests.upstream import TestAgent


@pytest.fixture(scope="module")
def gate_server(
    server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with running(server_env, tmp_path_factory.mktemp("gate") / "server.log") as proc:
        yield proc


@pytest.fixture(scope="module")
def https_server(
    server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Served as if behind a TLS front: public URLs and cookies are https's."""
    env = {**server_env, "SANDBAR_PUBLIC_SCHEME": "https"}
    with running(env, tmp_path_factory.mktemp("gate-https") / "server.log") as proc:
        yield proc


@dataclass
class Box:
    """A running sandbox routed to the test agent."""

    id: UUID
    owner: User
    workspace_id: str
    host: str  # its Host header
    server: ServerProcess

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.url, headers={"host": self.host, **headers}, timeout=30
        )

    def token(self) -> str:
        r = self.owner.client.post(f"/api/sandboxes/{self.id}/access-tokens")
        assert r.status_code == 201, r.text
        return r.json()["token"]


def make_box(server: ServerProcess, sandbar: Sandbar, agent_port: int) -> Box:
    owner = register(server.url, "owner")
    session = owner.client.cookies.get("__Host-sandbar_session")
    if session is not None:
        # A Secure cookie, which the client keeps to https: the test speaks plain HTTP to
        # a server that believes it is behind TLS, so the cookie goes by hand.
        owner.client.cookies.clear()
        owner.client.headers["cookie"] = f"__Host-sandbar_session={session}"
    wid = owner.client.post("/api/workspaces", json={"name": "hostile"}).json()["id"]
    r = owner.client.post(
        f"/api/workspaces/{wid}/sandboxes", json={"name": "b", "type": "opencode"}
    )
    assert r.status_code == 201, r.text
    sid = UUID(r.json()["id"])
    record(sandbar, sid, lambda s: s.record_started(f"127.0.0.1:{agent_port}"))
    return Box(sid, owner, wid, f"oc-{sid}.localhost:{server.port}", server)


@pytest.fixture
def box(
    gate_server: ServerProcess, sandbar: Sandbar, agent_app: tuple[TestAgent, int]
) -> Iterator[Box]:
    made = make_box(gate_server, sandbar, agent_app[1])
    yield made
    made.owner.client.close()


def grant_by_ticket(box: Box, user: User, next_path: str = "/echo") -> httpx.Response:
    """The ticket flow, as a browser walks it: the sandbox host's answer to the ticket."""
    r = user.client.get(f"/api/sandboxes/{box.id}/open", params={"next": next_path})
    assert r.status_code == 302, r.text
    back = urlsplit(r.headers["location"])
    with box.client() as client:
        return client.get(f"{back.path}?{back.query}")


def grant_cookie(answer: httpx.Response, name: str = "sandbar_sandbox") -> str:
    assert answer.status_code == 302, answer.text
    first = answer.headers["set-cookie"].split(";")[0]
    cookie_name, _, value = first.partition("=")
    assert cookie_name == name
    return value


def raw(port: int, request: bytes) -> bytes:
    """The whole answer to ``request`` on a connection of its own (the proxy closes it
    after a refusal)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and answer.startswith(b"HTTP/1.1 101"):
                break
    return answer


def rss_kib(server: ServerProcess) -> int:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# 1. Refused requests leave nothing behind.


def test_refused_requests_leave_no_memory_behind(gate_server: ServerProcess) -> None:
    """Each refusal once raised one shared exception object, which kept every refused
    request's frames, headers and connection on its traceback: some 11 KiB a request,
    far more with big headers, never freed."""
    host = f"oc-{uuid.uuid4()}.localhost:{gate_server.port}".encode()
    pad = b"x" * 16_000
    request = (
        b"GET /nothing HTTP/1.1\r\nHost: " + host + b"\r\nX-Pad: " + pad + b"\r\n"
        b"X-Pad2: " + pad + b"\r\nConnection: close\r\n\r\n"
    )

    def refuse(n: int) -> None:
        for _ in range(n):
            assert raw(gate_server.port, request).startswith(b"HTTP/1.1 404 ")

    refuse(500)  # warm up: caches, allocator arenas
    before = rss_kib(gate_server)
    refuse(3000)
    grown = rss_kib(gate_server) - before
    # With the shared exception: ~3000 x 40 KiB. Without: allocator noise.
    assert grown < 5 * 1024, f"RSS grew {grown} KiB over 3000 refused requests"


# 3. Writes and WebSockets from another site's page.


def ws_handshake(host: str, **headers: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET /ws HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_cross_origin_writes_and_websockets_never_reach_the_agent(
    box: Box, gate_server: ServerProcess, agent_app: tuple[TestAgent, int]
) -> None:
    app, _ = agent_app
    cookie = grant_cookie(grant_by_ticket(box, box.owner))
    own = f"http://{box.host}"
    other = f"http://oc-{uuid.uuid4()}.localhost:{gate_server.port}"  # a sibling sandbox

    def post(probe: str, **headers: str) -> httpx.Response:
        with box.client(cookie=f"sandbar_sandbox={cookie}", **headers) as client:
            return client.post(f"/echo?probe={probe}", content=b"rm -rf")

    def reached(probe: str) -> bool:
        return any(s.get("query") == f"probe={probe}" for s in app.seen)

    # Another sandbox's page posting with the visitor's cookie: refused.
    for origin in (other, "null", f"http://evil.example:{gate_server.port}", own + ".evil"):
        probe = uuid.uuid4().hex
        r = post(probe, origin=origin, **{"content-type": "text/plain"})
        assert_error(r, 403, "cross_origin")
        assert not reached(probe)
    # The sandbox's own page: passes (Origin as browsers write it).
    probe = uuid.uuid4().hex
    assert post(probe, origin=own).status_code == 200 and reached(probe)
    # The cookie alone, with no Origin: not how a browser writes; refused.
    probe = uuid.uuid4().hex
    r = post(probe)
    assert_error(r, 403, "origin_required")
    assert not reached(probe)
    # Reading is no write: a GET from another origin passes (the browser keeps the answer
    # from that page).
    with box.client(cookie=f"sandbar_sandbox={cookie}", origin=other) as client:
        assert client.get("/echo").status_code == 200
    # A program with an access token needs no Origin; a foreign one is refused even so.
    token = box.token()
    with box.client(authorization=f"Bearer {token}") as client:
        probe = uuid.uuid4().hex
        assert client.post(f"/echo?probe={probe}", content=b"x").status_code == 200
        assert reached(probe)
        probe = uuid.uuid4().hex
        r = client.post(f"/echo?probe={probe}", content=b"x", headers={"origin": other})
        assert r.status_code == 403 and not reached(probe)
    # A WebSocket: another origin's is refused before the agent sees it; the sandbox's
    # own page and a program with a token are let through.
    jar = f"sandbar_sandbox={cookie}"
    refused = raw(box.server.port, ws_handshake(box.host, Cookie=jar, Origin=other))
    assert refused.startswith(b"HTTP/1.1 403 "), refused[:200]
    refused = raw(box.server.port, ws_handshake(box.host, Cookie=jar))
    assert refused.startswith(b"HTTP/1.1 403 "), refused[:200]
    accepted = raw(box.server.port, ws_handshake(box.host, Cookie=jar, Origin=own))
    assert accepted.startswith(b"HTTP/1.1 101 "), accepted[:200]
    accepted = raw(box.server.port, ws_handshake(box.host, Authorization=f"Bearer {token}"))
    assert accepted.startswith(b"HTTP/1.1 101 "), accepted[:200]


def test_cookies_are_host_prefixed_over_https(
    https_server: ServerProcess, sandbar: Sandbar, agent_app: tuple[TestAgent, int]
) -> None:
    """``__Host-`` cookies can be set only by their own host, Secure, for Path=/: no
    sandbox's page (a sibling subdomain) can plant or shadow Sandbar's cookies."""
    box = make_box(https_server, sandbar, agent_app[1])
    # The API's session cookie: registering signed the owner in over "https".
    with httpx.Client(base_url=https_server.url, timeout=30) as c:
        username = f"https-{uuid.uuid4().hex[:10]}"
        r = c.post("/api/auth/register", json={"username": username, "password": PASSWORD})
        assert r.status_code == 201, r.text
        set_cookie = r.headers["set-cookie"]
        assert set_cookie.startswith("__Host-sandbar_session="), set_cookie
        attributes = [a.strip().lower() for a in set_cookie.split(";")[1:]]
        assert "secure" in attributes and "path=/" in attributes
        assert not any(a.startswith("domain") for a in attributes)
        session = set_cookie.split(";")[0].split("=", 1)[1]
        # Only the prefixed name is read: a planted unprefixed cookie is no session.
        headers = {"cookie": f"sandbar_session={session}"}
        assert c.get("/api/auth/me", headers=headers).status_code == 401
        headers = {"cookie": f"__Host-sandbar_session={session}"}
        assert c.get("/api/auth/me", headers=headers).status_code == 200
    # The sandbox host's grant cookie.
    answer = grant_by_ticket(box, box.owner)
    grant = grant_cookie(answer, "__Host-sandbar_sandbox")
    attributes = [a.strip().lower() for a in answer.headers["set-cookie"].split(";")[1:]]
    assert "secure" in attributes and "path=/" in attributes and "httponly" in attributes
    assert not any(a.startswith("domain") for a in attributes)
    own = f"https://{box.host}"
    with box.client(cookie=f"__Host-sandbar_sandbox={grant}; theme=dark", origin=own) as c:
        r = c.post("/echo", content=b"x")
        assert r.status_code == 200, r.text
        seen = dict(r.json()["headers"])
        assert seen["cookie"] == "theme=dark"  # Sandbar's cookie never reaches the agent
        # Over https the unprefixed name is no grant (a sibling could have set it).
        c.headers["cookie"] = f"sandbar_sandbox={grant}"
        assert c.post("/echo", content=b"x").status_code == 401
    box.owner.client.close()


# 4. A removed member's grants are revoked, not suspended.


def test_a_removed_members_grants_stay_revoked_when_they_are_added_again(
    box: Box, gate_server: ServerProcess
) -> None:
    dev = register(gate_server.url, "dev")
    members = f"/api/workspaces/{box.workspace_id}/members"
    add = {"username": dev.username, "role": "developer"}
    assert box.owner.client.post(members, json=add).status_code == 201
    cookie = grant_cookie(grant_by_ticket(box, dev))
    token = dev.client.post(f"/api/sandboxes/{box.id}/access-tokens").json()["token"]
    with box.client(cookie=f"sandbar_sandbox={cookie}") as browser:
        assert browser.get("/echo").status_code == 200
    with box.client(authorization=f"Bearer {token}") as program:
        assert program.get("/echo").status_code == 200
    assert box.owner.client.delete(f"{members}/{dev.id}").status_code == 204
    assert box.owner.client.post(members, json=add).status_code == 201
    # Back as a developer, but the old cookie and token open nothing: the browser is
    # sent for a new ticket, the program refused.
    with box.client(cookie=f"sandbar_sandbox={cookie}") as browser:
        assert browser.get("/echo").status_code == 302
    with box.client(authorization=f"Bearer {token}") as program:
        assert program.get("/echo").status_code == 401
    # A new grant works as ever.
    assert grant_by_ticket(box, dev).status_code == 302
    dev.client.close()


# 5. Any next comes back percent-encoded, never a 5xx, and a ticket is never lost to one.


@pytest.mark.parametrize(
    "next_path",
    ["/\u2028x", "/caf\u00e9?q=\u00fc&r=1", "/%E2%80%A8x", "/a%zz", "/\U0001f600/x#frag"],
)
def test_any_next_comes_back_percent_encoded(box: Box, next_path: str) -> None:
    answer = grant_by_ticket(box, box.owner, next_path)
    assert answer.status_code == 302, answer.text  # was 503, the ticket burnt
    location = answer.headers["location"]
    assert location.isascii() and location.startswith("/")
    assert unquote(location) == unquote(next_path)
    grant_cookie(answer)


def test_open_with_an_encoded_line_separator_in_next(box: Box) -> None:
    """Issue 15's reproduction, byte for byte: ``open?next=/%E2%80%A8x``."""
    r = box.owner.client.get(f"/api/sandboxes/{box.id}/open?next=/%E2%80%A8x")
    assert r.status_code == 302, r.text
    back = urlsplit(r.headers["location"])
    with box.client() as client:
        answer = client.get(f"{back.path}?{back.query}")
        assert answer.status_code == 302, answer.text
        assert answer.headers["location"] == "/%E2%80%A8x"
        # The ticket was spent on this success, once.
        assert client.get(f"{back.path}?{back.query}").status_code == 403


def test_a_server_error_never_spends_a_ticket(
    server_env: dict[str, str],
    sandbar: Sandbar,
    agent_app: tuple[TestAgent, int],
    tmp_path: Path,
) -> None:
    """The database refusing the grant (a trigger, here) answers 503 and leaves the
    ticket as it was: the same link works once the database does."""
    server = ServerProcess(server_env, tmp_path / "server.log").start()
    trigger = f"refuse_grants_{uuid.uuid4().hex[:8]}"
    url = server_env["SANDBAR_DATABASE_URL"]
    try:
        box = make_box(server, sandbar, agent_app[1])
        r = box.owner.client.get(f"/api/sandboxes/{box.id}/open", params={"next": "/echo"})
        back = urlsplit(r.headers["location"])
        ticket_path = f"{back.path}?{back.query}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                f"CREATE FUNCTION {trigger}() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN RAISE EXCEPTION 'no grants today'; END $$"
            )
            conn.execute(
                f"CREATE TRIGGER {trigger} BEFORE INSERT ON sandbar_grants"
                f" FOR EACH ROW EXECUTE FUNCTION {trigger}()"
            )
        try:
            with box.client() as client:
                refused = client.get(ticket_path)
                assert refused.status_code == 503, refused.text
                assert "set-cookie" not in refused.headers
        finally:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"DROP TRIGGER {trigger} ON sandbar_grants")
                conn.execute(f"DROP FUNCTION {trigger}()")
        with box.client() as client:
            assert grant_cookie(client.get(ticket_path))  # the same ticket, good once
            assert client.get(ticket_path).status_code == 403
        box.owner.client.close()
    finally:
        server.stop()

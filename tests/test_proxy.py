"""The subdomain proxy, end to end: a real ``sandbar serve`` in front of a real test agent
on loopback (tests/upstream.py), reached as a browser or a program would reach it."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from domain.sandboxes import Sandbox
from interfaces.bootstrap import Sandbar
from tests.conftest import ServerProcess, User, record, register, running, settled
from tests.errors import assert_error
from tests.upstream import TestAgent
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def proxy_server(
    server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("proxy") / "server.log"
    env = {**server_env, "SANDBAR_OPEN_WAIT": "20", "SANDBAR_TRUSTED_PROXIES": "127.0.0.2"}
    with running(env, log) as proc:
        yield proc


@dataclass
class Box:
    """A sandbox routed to the test agent, and how to reach its host."""

    id: UUID
    owner: User
    workspace_id: str
    host: str
    server: ServerProcess

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.url, headers={"host": self.host, **headers}, timeout=30
        )


@pytest.fixture
def make_box(
    proxy_server: ServerProcess, sandbar: Sandbar, agent_app: tuple[TestAgent, int]
) -> Iterator[Callable[..., Box]]:
    users: list[User] = []

    def make(type_: str = "opencode", running: bool = True) -> Box:
        owner = register(proxy_server.url, "owner")
        users.append(owner)
        wid = owner.client.post("/api/workspaces", json={"name": "proxy"}).json()["id"]
        r = owner.client.post(
            f"/api/workspaces/{wid}/sandboxes", json={"name": "box", "type": type_}
        )
        assert r.status_code == 201, r.text
        sid = UUID(r.json()["id"])
        if running:
            record(sandbar, sid, lambda s: s.record_started(f"127.0.0.1:{agent_app[1]}"))
        prefix = "oc" if type_ == "opencode" else "claw"
        host = f"{prefix}-{sid}.localhost:{proxy_server.port}"
        return Box(sid, owner, wid, host, proxy_server)

    yield make
    for u in users:
        u.client.close()


def open_in_browser(box: Box, user: User, path: str = "/echo") -> httpx.Client:
    """Walk the ticket flow by hand, as a browser would; returns a client holding the
    sandbox host's cookie."""
    client = box.client()
    first = client.get(path)
    assert first.status_code == 302, first.text
    to_api = urlsplit(first.headers["location"])
    assert to_api.netloc == f"localhost:{box.server.port}"
    assert to_api.path == f"/api/sandboxes/{box.id}/open"
    assert parse_qs(to_api.query)["next"] == [path]
    second = user.client.get(f"{to_api.path}?{to_api.query}")
    assert second.status_code == 302, second.text
    back = urlsplit(second.headers["location"])
    assert back.netloc == box.host and back.path == "/_sandbar/ticket"
    assert "sandbar_session" not in second.headers["location"]
    third = client.get(f"{back.path}?{back.query}")
    assert third.status_code == 302, third.text
    assert third.headers["location"] == path
    cookie = third.headers["set-cookie"]
    assert cookie.startswith("sandbar_sandbox=sbx_")
    attributes = cookie.lower()
    assert "httponly" in attributes and "domain" not in attributes
    client.cookies.clear()
    client.cookies.set("sandbar_sandbox", cookie.split(";")[0].split("=", 1)[1])
    return client


def ticket_url(box: Box, user: User) -> str:
    r = user.client.get(f"/api/sandboxes/{box.id}/open", params={"next": "/echo"})
    assert r.status_code == 302, r.text
    back = urlsplit(r.headers["location"])
    return f"{back.path}?{back.query}"


def seen_headers(response: httpx.Response) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        out.setdefault(name, []).append(value)
    return out


# Routing


def test_unknown_and_malformed_hosts_are_404_and_never_forwarded(
    make_box: Callable[..., Box], agent_app: tuple[TestAgent, int], proxy_server: ServerProcess
) -> None:
    box = make_box()
    app, _ = agent_app
    before = len(app.seen)
    port = proxy_server.port
    hosts = [
        f"oc-{uuid.uuid4()}.localhost:{port}",  # no such sandbox
        f"claw-{box.id}.localhost:{port}",  # right id, wrong agent type
        f"oc-{str(box.id).upper()}x.localhost:{port}",
        f"oc-{box.id}.evil.localhost:{port}",
        f"x.oc-{box.id}.localhost:{port}",
        f"127.0.0.1.localhost:{port}",
        f"oc-127.0.0.1:{port}.localhost",
    ]
    for host in hosts:
        r = httpx.get(f"{proxy_server.url}/echo", headers={"host": host})
        assert_error(r, 404, "not_found")
    assert len(app.seen) == before


def test_a_sandbox_in_another_state_answers_with_a_clear_page(
    make_box: Callable[..., Box], sandbar: Sandbar, agent_app: tuple[TestAgent, int]
) -> None:
    box = make_box(running=False)  # creating: no worker runs here
    token = box.owner.client.post(f"/api/sandboxes/{box.id}/access-tokens").json()["token"]
    with box.client(authorization=f"Bearer {token}", accept="text/html") as client:
        r = client.get("/")
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) > 0
        assert "text/html" in r.headers["content-type"] and "Starting" in r.text
        record(sandbar, box.id, lambda s: s.record_failed("the image is missing"))
        r = settled(lambda: client.get("/"), 502)
        assert r.status_code == 502 and "not running" in r.text
    with box.client(authorization=f"Bearer {token}") as client:
        assert_error(client.get("/"), 502, "sandbox_failed")


def test_an_agent_that_refuses_connections_is_502(
    make_box: Callable[..., Box], sandbar: Sandbar
) -> None:
    box = make_box(running=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    record(sandbar, box.id, lambda s: s.record_started(f"127.0.0.1:{closed_port}"))
    token = box.owner.client.post(f"/api/sandboxes/{box.id}/access-tokens").json()["token"]
    with box.client(authorization=f"Bearer {token}") as client:
        r = client.get("/echo")
    assert_error(r, 502, "agent_unreachable")


# The ticket flow and who may pass


def test_browser_flow_reaches_the_agent_without_sandbar_credentials(
    make_box: Callable[..., Box],
) -> None:
    box = make_box()
    client = open_in_browser(box, box.owner, "/echo?a=1&b=2")
    session = box.owner.client.cookies["sandbar_session"]
    grant = client.cookies["sandbar_sandbox"]
    r = box.client().get(
        "/echo?a=1&b=2",
        headers={
            "cookie": f"sandbar_sandbox={grant}; theme=dark; sandbar_session={session}",
            "x-forwarded-for": "6.6.6.6",
            "x-forwarded-host": "evil.example",
            "forwarded": "for=6.6.6.6",
            "connection": "keep-alive, x-drop-me",
            "x-drop-me": "1",
            "x-kept": "a",
        },
    )
    assert r.status_code == 200, r.text
    seen = seen_headers(r)
    assert r.json()["query"] == "a=1&b=2"
    assert seen["cookie"] == ["theme=dark"]
    assert session not in json.dumps(r.json())
    assert "sbx_" not in json.dumps(r.json())
    assert seen["authorization"][0].startswith("Basic ")  # opencode's own password
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-host"] == [box.host]
    assert seen["x-forwarded-proto"] == ["http"]
    assert "forwarded" not in seen and "x-drop-me" not in seen
    assert seen["x-kept"] == ["a"]


def test_openclaw_gets_its_gateway_token(make_box: Callable[..., Box]) -> None:
    box = make_box("openclaw")
    assert box.host.startswith("claw-")
    client = open_in_browser(box, box.owner)
    seen = seen_headers(client.get("/echo"))
    assert seen["authorization"][0].startswith("Bearer ")


def test_a_ticket_works_once_and_only_on_its_own_sandbox(
    make_box: Callable[..., Box],
) -> None:
    a, b = make_box(), make_box()
    url = ticket_url(a, a.owner)
    with b.client() as other:
        r = other.get(url)  # A's ticket on B's host
        assert r.status_code == 403 and "set-cookie" not in r.headers
    with a.client() as client:
        assert client.get(url).status_code == 403  # burnt by the try on B
    url = ticket_url(a, a.owner)
    with a.client() as client:
        assert client.get(url).status_code == 302
        replay = client.get(url)
        assert_error(replay, 403, "invalid_ticket")
    with a.client() as client:
        assert client.get("/_sandbar/ticket?ticket=forged&next=/").status_code == 403


def test_next_is_a_path_on_the_sandbox_host_only(make_box: Callable[..., Box]) -> None:
    box = make_box()
    for bad in ("https://evil.example/", "//evil.example/", "/\\evil.example", "evil", "/a\nb"):
        r = box.owner.client.get(f"/api/sandboxes/{box.id}/open", params={"next": bad})
        assert_error(r, 422, field="next")


def test_who_may_open(make_box: Callable[..., Box], proxy_server: ServerProcess) -> None:
    box = make_box()
    guest = register(proxy_server.url, "guest")
    dev = register(proxy_server.url, "dev")
    stranger = register(proxy_server.url, "stranger")
    anonymous = httpx.Client(base_url=proxy_server.url)
    for user, role in ((guest, "guest"), (dev, "developer")):
        r = box.owner.client.post(
            f"/api/workspaces/{box.workspace_id}/members",
            json={"username": user.username, "role": role},
        )
        assert r.status_code == 201, r.text
    path = f"/api/sandboxes/{box.id}/open"
    assert guest.client.get(path).status_code == 403
    assert stranger.client.get(path).status_code == 404
    assert anonymous.get(path).status_code == 401
    assert guest.client.post(f"/api/sandboxes/{box.id}/access-tokens").status_code == 403
    assert dev.client.get(path).status_code == 302
    # A developer's grant stops working on the very next request once they are demoted,
    # and once they are removed.
    client = open_in_browser(box, dev)
    assert client.get("/echo").status_code == 200
    members = f"/api/workspaces/{box.workspace_id}/members/{dev.id}"
    assert box.owner.client.put(members, json={"role": "guest"}).status_code == 200
    assert client.get("/echo").status_code == 403
    assert box.owner.client.put(members, json={"role": "developer"}).status_code == 200
    assert client.get("/echo").status_code == 200
    assert box.owner.client.delete(members).status_code == 204
    assert client.get("/echo").status_code == 302  # the grant is revoked: off for a ticket


def test_signing_out_ends_the_sandbox_cookie(make_box: Callable[..., Box]) -> None:
    box = make_box()
    user = register(box.server.url, "leaver")
    r = box.owner.client.post(
        f"/api/workspaces/{box.workspace_id}/members",
        json={"username": user.username, "role": "developer"},
    )
    assert r.status_code == 201
    client = open_in_browser(box, user)
    assert client.get("/echo").status_code == 200
    assert user.client.post("/api/auth/logout").status_code == 204
    again = client.get("/echo")
    assert again.status_code == 302  # back to the API host for a new ticket
    assert client.post("/echo").status_code == 401


def test_access_tokens_for_programs(make_box: Callable[..., Box]) -> None:
    box = make_box()
    r = box.owner.client.post(f"/api/sandboxes/{box.id}/access-tokens")
    assert r.status_code == 201
    token = r.json()["token"]
    assert r.json()["url"] == f"http://{box.host}/"
    with box.client(authorization=f"Bearer {token}") as client:
        r = client.post("/echo", content=b"hello")
        assert r.status_code == 200
        assert token not in r.text and r.json()["body_size"] == 5
    with box.client(authorization="Bearer sbx_forged") as client:
        r = client.get("/echo")
        assert_error(r, 401, "unauthenticated")
    other = make_box()
    with other.client(authorization=f"Bearer {token}") as client:
        assert client.get("/echo").status_code == 401  # a token opens its own sandbox only
    # Deleting the sandbox ends it at once.
    assert box.owner.client.delete(f"/api/sandboxes/{box.id}").status_code == 202
    with box.client(authorization=f"Bearer {token}") as client:
        assert client.get("/echo").status_code == 404


def test_pausing_takes_effect_and_opening_a_paused_sandbox_resumes_it(
    make_box: Callable[..., Box], sandbar: Sandbar, agent_app: tuple[TestAgent, int]
) -> None:
    box = make_box()
    token = box.owner.client.post(f"/api/sandboxes/{box.id}/access-tokens").json()["token"]
    client = box.client(authorization=f"Bearer {token}")
    assert client.get("/echo").status_code == 200
    assert box.owner.client.post(f"/api/sandboxes/{box.id}/pause").status_code == 202
    assert client.get("/echo").status_code == 503  # pausing
    record(sandbar, box.id, Sandbox.record_paused)

    def worker() -> None:  # stands in for the container worker: resumes when asked
        wait_until(
            lambda: box.owner.client.get(f"/api/sandboxes/{box.id}").json()["status"],
            until=lambda status: status == "resuming",
            timeout=20,
            what="the sandbox resuming",
        )
        record(sandbar, box.id, lambda s: s.record_started(f"127.0.0.1:{agent_app[1]}"))

    thread = threading.Thread(target=worker)
    thread.start()
    # Once the proxy has heard of the pause, a request resumes the sandbox and is held
    # until it runs again.
    r = settled(lambda: client.get("/echo"), 200)
    thread.join()
    assert r.status_code == 200, r.text
    assert box.owner.client.get(f"/api/sandboxes/{box.id}").json()["status"] == "running"


# Forwarding


def test_agent_cookies_stay_on_the_sandbox_host(make_box: Callable[..., Box]) -> None:
    box = make_box()
    client = open_in_browser(box, box.owner)
    r = client.get("/cookies")
    cookies = r.headers.get_list("set-cookie")
    assert "agent=1; Path=/" in cookies  # Domain=localhost removed: host-only
    assert "plain=2; Path=/" in cookies
    assert not any(c.startswith("sandbar_") for c in cookies)
    assert "x-private-hop" not in r.headers  # named by the agent's Connection header


def test_sse_events_pass_as_they_are_sent(
    make_box: Callable[..., Box], agent_app: tuple[TestAgent, int]
) -> None:
    app, _ = agent_app
    box = make_box()
    client = open_in_browser(box, box.owner)
    app.sse_gated = True
    try:
        with client.stream("GET", "/sse?n=3") as r:
            assert r.headers["content-type"] == "text/event-stream"
            events = []
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line)
                    # The next event is only sent once this one has arrived here: a
                    # proxy that buffered would hang this test.
                    app.sse_release.release()
        assert events == ["data: event 0", "data: event 1", "data: event 2"]
    finally:
        app.sse_gated = False


def test_large_bodies_stream_both_ways_with_flat_memory(
    make_box: Callable[..., Box], proxy_server: ServerProcess
) -> None:
    box = make_box()
    token = box.owner.client.post(f"/api/sandboxes/{box.id}/access-tokens").json()["token"]
    client = box.client(authorization=f"Bearer {token}")
    # 256 MiB each way: eight times what the proxy may grow by, which buffering either
    # body would show.
    size = 256 * 1024 * 1024
    client.get("/bytes?n=1000000")  # warm up
    before = rss_mib(proxy_server)
    digest, received = hashlib.sha256(), 0
    with client.stream("GET", f"/bytes?n={size}") as r:
        assert r.status_code == 200
        for chunk in r.iter_raw(1024 * 1024):
            received += len(chunk)
    assert received == size
    block = b"u" * (1024 * 1024)

    def upload() -> Iterator[bytes]:
        for _ in range(size // len(block)):
            digest.update(block)
            yield block

    r = client.post("/echo", content=upload())  # chunked: no length given
    assert r.status_code == 200
    assert r.json()["body_size"] == size
    assert r.json()["body_sha256"] == digest.hexdigest()
    peak = peak_mib(proxy_server)
    assert peak - before < 32, (before, peak)


def rss_mib(server: ServerProcess) -> float:
    return _status_mib(server, "VmRSS")


def peak_mib(server: ServerProcess) -> float:
    return _status_mib(server, "VmHWM")


def _status_mib(server: ServerProcess, field: str) -> float:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(field)


def test_websocket_round_trip_with_close_codes(
    make_box: Callable[..., Box], agent_app: tuple[TestAgent, int]
) -> None:
    box = make_box()
    token = box.owner.client.post(f"/api/sandboxes/{box.id}/access-tokens").json()["token"]

    def dial(**kwargs: object) -> object:
        sock = socket.create_connection(("127.0.0.1", box.server.port))
        return ws_connect(f"ws://{box.host}/ws", sock=sock, **kwargs)  # type: ignore[arg-type]

    with dial(additional_headers={"authorization": f"Bearer {token}"}, subprotocols=["chat"]) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert ws.subprotocol == "chat"
        assert hello["headers"]["authorization"].startswith("Basic ")
        ws.send("ping")
        assert ws.recv(timeout=10) == "ping"
        ws.send(b"\x00\x01binary")
        assert ws.recv(timeout=10) == b"\x00\x01binary"
        ws.send("close 4001")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
    with dial(additional_headers={"authorization": f"Bearer {token}"}) as ws:
        ws.recv(timeout=10)
        ws.close(4002, "bye")  # the browser's close code reaches the agent
    app, _ = agent_app
    wait_until(
        lambda: {"ws_closed": 4002} in app.seen, interval=0.02, what="the close code at the agent"
    )
    # Without a grant, the upgrade is refused.
    with pytest.raises(Exception, match="401"):
        dial()


def test_head_and_a_response_cut_short(make_box: Callable[..., Box]) -> None:
    box = make_box()
    token = box.owner.client.post(f"/api/sandboxes/{box.id}/access-tokens").json()["token"]
    with box.client(authorization=f"Bearer {token}") as client:
        r = client.head("/bytes?n=5000")
        assert r.status_code == 200 and r.headers["content-length"] == "5000"
        assert client.get("/bytes?n=10").content == b"x" * 10  # the connection is fine after
        # An agent that hangs up mid-body: the client sees a broken transfer, not a
        # short body passed off as whole.
        with pytest.raises(httpx.TransportError):
            client.get("/broken")
        assert client.get("/echo").status_code == 200
        # A head goes out with its body's first bytes: a body that comes late comes
        # whole; one that never comes breaks the transfer, as above.
        assert client.get("/late?after=0.5").content == b"late"
        with pytest.raises(httpx.TransportError):
            client.get("/broken?sent=0")
        assert client.get("/echo").status_code == 200


def test_proxied_requests_count_as_activity(make_box: Callable[..., Box], sandbar: Sandbar) -> None:
    box = make_box()
    assert sandbar.activity.last_seen(box.id) is None
    client = open_in_browser(box, box.owner)
    assert client.get("/echo").status_code == 200
    wait_until(  # the proxy writes its notes every few seconds
        lambda: sandbar.activity.last_seen(box.id), timeout=30, interval=0.1, what="activity"
    )


def raw_exchange(server: ServerProcess, data: bytes) -> bytes:
    """Send bytes as they are; read until the server closes the connection (the last
    request says ``Connection: close``)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_the_connection_level_rules(make_box: Callable[..., Box]) -> None:
    box = make_box()
    token = box.owner.client.post(f"/api/sandboxes/{box.id}/access-tokens").json()["token"]
    auth = f"Host: {box.host}\r\nAuthorization: Bearer {token}\r\n".encode()
    # Two pipelined requests: two answers, in order.
    got = raw_exchange(
        box.server,
        b"GET /first HTTP/1.1\r\n"
        + auth
        + b"\r\nGET /echo?second HTTP/1.1\r\n"
        + auth
        + b"Connection: close\r\n\r\n",
    )
    assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.count(b"HTTP/1.1 200 OK") == 2
    assert got.index(b"\r\n\r\nok") < got.index(b'"query": "second"')
    # A client that waits for 100 Continue gets it, and its body arrives.
    with socket.create_connection(("127.0.0.1", box.server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\n" + auth + b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"hello")
        answer = b""
        while b'"body_size": 5' not in answer:
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    # Garbage, and a head that never ends, are refused and the connection closed.
    assert raw_exchange(box.server, b"NONSENSE\x00\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    huge = b"GET / HTTP/1.1\r\n" + auth + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    assert raw_exchange(box.server, huge).startswith(b"HTTP/1.1 431 ")
    # Each request of a connection goes where its own Host says: after the sandbox's
    # answer, the API's (not signed in on this connection: 401 in the API's shape).
    got = raw_exchange(
        box.server,
        b"GET /echo HTTP/1.1\r\n"
        + auth
        + b"\r\n"
        + b"GET /api/auth/me HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    assert got.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"HTTP/1.1 401 " in got and got.endswith(b'"message":"sign in first"}}')


def test_forwarding_headers_of_a_trusted_front_proxy_are_kept(
    make_box: Callable[..., Box],
) -> None:
    box = make_box()
    token = box.owner.client.post(f"/api/sandboxes/{box.id}/access-tokens").json()["token"]
    forged = {"x-forwarded-for": "6.6.6.6", "x-forwarded-proto": "https"}
    headers = {"host": box.host, "authorization": f"Bearer {token}", **forged}
    # From 127.0.0.1 (untrusted): replaced.
    seen = seen_headers(httpx.get(f"{box.server.url}/echo", headers=headers))
    assert seen["x-forwarded-for"] == ["127.0.0.1"] and seen["x-forwarded-proto"] == ["http"]
    # From 127.0.0.2 (SANDBAR_TRUSTED_PROXIES): kept, and the hop appended.
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=transport) as client:
        seen = seen_headers(client.get(f"{box.server.url}/echo", headers=headers))
    assert seen["x-forwarded-for"] == ["6.6.6.6, 127.0.0.2"]
    assert seen["x-forwarded-proto"] == ["https"]

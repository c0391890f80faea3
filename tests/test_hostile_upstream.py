"""The sandbox's server is hostile too (issue 22): whatever bytes it sends, a browser gets
only the answer to its own request, framed as HTTP/1.1 frames it, and Sandbar spends
bounded memory on it. A raw-socket server (tests/hostile_upstream.py) behind a real
``sandbar serve``, reached through real sockets; the browser side is read with h11, a
strict client parser, so an answer that is not well framed fails the test."""

from __future__ import annotations

import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import h11
import httpx
import pytest

from interfaces.bootstrap import Sandbar
from tests.conftest import ServerProcess, record, register, running, settled
from tests.hostile_upstream import Connection, HostileUpstream, Request, hostile_serving, response

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def proxy(
    server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    with running({**server_env, "SANDBAR_UPSTREAM_TIMEOUT": "30"}, log) as proc:
        yield proc


@pytest.fixture
def hostile() -> Iterator[HostileUpstream]:
    with hostile_serving() as server:
        yield server


@dataclass
class Sandbox:
    host: str
    token: str
    proxy: ServerProcess

    def browser(self) -> Browser:
        return Browser(self)


@pytest.fixture
def sandbox(proxy: ServerProcess, sandbar: Sandbar, hostile: HostileUpstream) -> Sandbox:
    """A sandbox whose server is the hostile one, and a token to reach it with."""
    owner = register(proxy.url, "hostile")
    try:
        wid = owner.client.post("/api/workspaces", json={"name": "hostile"}).json()["id"]
        r = owner.client.post(
            f"/api/workspaces/{wid}/sandboxes", json={"name": "box", "type": "opencode"}
        )
        assert r.status_code == 201, r.text
        sid = uuid.UUID(r.json()["id"])
        record(sandbar, sid, lambda s: s.record_started(f"127.0.0.1:{hostile.port}"))
        token = owner.client.post(f"/api/sandboxes/{sid}/access-tokens").json()["token"]
    finally:
        owner.client.close()
    box = Sandbox(f"oc-{sid}.localhost:{proxy.port}", token, proxy)
    headers = {"host": box.host, "authorization": f"Bearer {token}"}
    settled(lambda: httpx.get(f"{proxy.url}/ready", headers=headers, timeout=30), 200)
    return box


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]


class Browser:
    """One browser connection to the proxy, its answers read by h11 (requests may be
    pipelined: h11 is told of each once the answer before it is read)."""

    def __init__(self, box: Sandbox) -> None:
        self.box = box
        self.sock = socket.create_connection(("127.0.0.1", box.proxy.port), timeout=15)
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=256 * 1024)
        self._pipelined: list[h11.Request] = []

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def send(
        self, target: str, method: str = "GET", headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        base = [("host", self.box.host), ("authorization", f"Bearer {self.box.token}")]
        request = h11.Request(method=method, target=target, headers=[*base, *headers])
        if self.h11.our_state is h11.IDLE and not self._pipelined:
            self.sock.sendall(self.h11.send(request) + self.h11.send(h11.EndOfMessage()))
        else:  # written now, told to h11 when its turn comes
            writer = h11.Connection(h11.CLIENT)
            self.sock.sendall(writer.send(request) + writer.send(h11.EndOfMessage()))
            self._pipelined.append(request)

    def request(
        self, target: str, method: str = "GET", headers: tuple[tuple[str, str], ...] = ()
    ) -> Answer:
        self.send(target, method, headers)
        return self.read()

    def read(self) -> Answer:
        answer = Answer(0, [], b"")
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(self.sock.recv(65536))
            elif isinstance(event, h11.Response):
                answer.status = event.status_code
                answer.headers = [(n.decode(), v.decode("latin-1")) for n, v in event.headers]
            elif isinstance(event, h11.Data):
                answer.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError("the proxy closed the browser's connection")
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            if self._pipelined:
                self.h11.send(self._pipelined.pop(0))
                self.h11.send(h11.EndOfMessage())
        return answer


def rss_mib(server: ServerProcess) -> float:
    assert server.proc is not None
    with open(f"/proc/{server.proc.pid}/status") as status:
        found = re.search(r"VmRSS:\s+(\d+) kB", status.read())
    assert found is not None
    return int(found.group(1)) / 1024


OK = response(200, b"ok")


# 1. A pooled connection is reused only when provably clean.

FAKE = response(200, b"fake")
# Bytes after a whole answer: the start of a second one, the rest of which (FAKE) the
# server sends when the connection carries its next request; a whole second answer; a
# head cut short; a byte of garbage.
POISONS = {
    "second head": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(FAKE),
    "second answer": FAKE,
    "half a head": b"HTTP/1.1 200 OK\r\nX-Pad: a",
    "garbage": b"X",
}


def poisoner(tail: bytes) -> Callable[[Connection, Request], None]:
    def answer(conn: Connection, request: Request) -> None:
        conn.notes["poisoned"] = True
        conn.send(OK + tail)

    return answer


@pytest.mark.parametrize("tail", list(POISONS.values()), ids=list(POISONS))
def test_bytes_after_an_answer_close_its_connection(
    sandbox: Sandbox, hostile: HostileUpstream, tail: bytes
) -> None:
    hostile.routes["/poison"] = poisoner(tail)

    def victim(conn: Connection, request: Request) -> None:
        conn.send(FAKE if conn.notes.get("poisoned") else response(200, b"real"))

    hostile.routes["/victim"] = victim
    with sandbox.browser() as browser:
        first = browser.request("/poison")
    assert (first.status, first.body) == (200, b"ok")
    poisoned = hostile.connection_of("/poison")
    assert poisoned.closed.wait(10), "the proxy kept a connection that sent more than its answer"
    with sandbox.browser() as other:  # another client, on the same sandbox
        second = other.request("/victim")
    assert (second.status, second.body) == (200, b"real")
    assert hostile.connection_of("/victim") is not poisoned


@pytest.mark.parametrize("tail", list(POISONS.values()), ids=list(POISONS))
def test_a_pipelined_request_never_gets_the_bytes_after_an_answer(
    sandbox: Sandbox, hostile: HostileUpstream, tail: bytes
) -> None:
    # On one client connection (as a pooling front proxy gives): the next request starts
    # as the answer before it ends, and must not be sent where those bytes wait.
    hostile.routes["/poison"] = poisoner(tail)
    hostile.routes["/victim"] = lambda conn, request: conn.send(response(200, b"real"))
    with sandbox.browser() as browser:
        browser.send("/poison")
        browser.send("/victim")
        assert browser.read().body == b"ok"
        assert browser.read().body == b"real"
        assert browser.request("/after").body == b"real /after"
    assert hostile.connection_of("/victim") is not hostile.connection_of("/poison")


def test_a_connection_that_speaks_while_idle_is_closed(
    sandbox: Sandbox, hostile: HostileUpstream
) -> None:
    with sandbox.browser() as browser:
        assert browser.request("/clean").body == b"real /clean"
        idle = hostile.connection_of("/clean")
        # Unasked, while it waits in the pool: the head of an answer to come.
        assert idle.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(FAKE))
        assert idle.closed.wait(10), "the proxy kept a connection that spoke while idle"
        hostile.routes["/next"] = lambda conn, request: conn.send(FAKE if conn is idle else OK)
        answer = browser.request("/next")
    assert (answer.status, answer.body) == (200, b"ok")


def test_a_clean_connection_is_still_reused(sandbox: Sandbox, hostile: HostileUpstream) -> None:
    with sandbox.browser() as browser:
        for i in range(3):
            assert browser.request(f"/again?{i}").body == f"real /again?{i}".encode()
    used = {id(c) for c in hostile.connections if any(r.path == "/again" for r in c.requests)}
    assert len(used) == 1


# 2. A response head is capped as its bytes arrive.


def endless(head: bytes, chunk: bytes, sent: list[int]) -> Callable[[Connection, Request], None]:
    def answer(conn: Connection, request: Request) -> None:
        conn.send(head)
        sent.append(conn.send_until_closed(chunk, 64 * MIB))

    return answer


@pytest.mark.parametrize(
    "head, chunk",
    [
        (b"HTTP/1.1 200 OK\r\nX-Big: ", b"a" * 65536),  # one header value, no end
        (b"HTTP/1.1 200 OK\r\n", b"X-H: " + b"h" * 1024 + b"\r\n"),  # headers, no end
        (b"HTTP/1.1 200 ", b"r" * 65536),  # a reason phrase, no end
    ],
    ids=["value", "headers", "reason"],
)
def test_a_response_head_over_64_kib_is_502_and_closed(
    sandbox: Sandbox, hostile: HostileUpstream, head: bytes, chunk: bytes
) -> None:
    sent: list[int] = []
    hostile.routes["/big"] = endless(head, chunk, sent)
    with sandbox.browser() as browser:
        assert browser.request("/big").status == 502
        assert hostile.connection_of("/big").closed.wait(10)
        assert browser.request("/after").body == b"real /after"  # (still usable)
    # Read no further than the cap (and what the sockets' buffers hold): not 64 MiB.
    assert sent and sent[0] < 16 * MIB, sent


def test_a_head_under_the_cap_passes_even_in_one_read_with_its_body(
    sandbox: Sandbox, hostile: HostileUpstream
) -> None:
    headers = [f"X-H{i}: {'h' * 1000}" for i in range(60)]  # ~60 KiB
    body = b"b" * (512 * 1024)
    hostile.routes["/wide"] = lambda conn, request: conn.send(response(200, body, *headers))
    with sandbox.browser() as browser:
        answer = browser.request("/wide")
    assert answer.status == 200 and answer.body == body
    assert len(answer.header("x-h59")) == 1


# 3. 101 only for a request that asked to upgrade.


def test_a_101_to_a_request_that_asked_no_upgrade_is_502_never_spliced(
    sandbox: Sandbox, hostile: HostileUpstream
) -> None:
    switch = (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    hostile.routes["/switch"] = lambda conn, request: conn.send(switch + b"raw sandbox bytes")
    with sandbox.browser() as browser:
        assert browser.request("/switch").status == 502
        assert hostile.connection_of("/switch").closed.wait(10)
        # The browser's connection is still HTTP: the next request gets its own answer.
        assert browser.request("/after").body == b"real /after"


# 4. Set-Cookie read as a browser reads it (RFC 6265bis).

HOSTILE_COOKIES = [
    "agent=1; Path=/; Domain=localhost",
    "spaced=1; DOMAIN = localhost; Path=/",
    "tabbed=1;\tdomain\t=\t.localhost;Secure",
    "bare=1; Domain",
    "=sandbar_session=evil; Path=/",  # nameless: sent as "sandbar_session=evil"
    " =sandbar_session=evil",
    "sandbar_session",  # no "=": nameless too
    "sandbar_session=forged; Path=/",
    "Sandbar_Sandbox=forged",
    "__Host-sandbar_session=forged; Path=/; Secure",
    "__Secure-sandbar_session=forged; Secure",
    "plain=2; Path=/",
]


def test_set_cookie_cannot_widen_its_scope_or_take_sandbars_names(
    sandbox: Sandbox, hostile: HostileUpstream
) -> None:
    lines = [f"Set-Cookie: {c}" for c in HOSTILE_COOKIES]
    hostile.routes["/cookies"] = lambda conn, request: conn.send(response(200, b"ok", *lines))
    with sandbox.browser() as browser:
        cookies = browser.request("/cookies").header("set-cookie")
    assert sorted(cookies) == sorted(
        ["agent=1; Path=/", "spaced=1; Path=/", "tabbed=1;Secure", "bare=1", "plain=2; Path=/"]
    )
    for cookie in cookies:  # as RFC 6265bis 5.7 parses it
        pair, *attributes = cookie.split(";")
        name = pair.split("=", 1)[0].strip()
        assert "=" in pair and name and "sandbar_" not in name.lower()
        assert all(a.split("=", 1)[0].strip().lower() != "domain" for a in attributes)


# 5. Framing: Connection never takes it away; 1xx, 204 and 304 as RFC 9112 says.


def test_connection_cannot_name_away_the_answers_framing(
    sandbox: Sandbox, hostile: HostileUpstream
) -> None:
    hostile.routes["/cl"] = lambda conn, request: conn.send(
        response(200, b"framed", "Connection: content-length")
    )
    chunked = (
        b"HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"7\r\nchunked\r\n0\r\n\r\n"
    )
    hostile.routes["/te"] = lambda conn, request: conn.send(chunked)
    with sandbox.browser() as browser:  # (h11 fails the test on an unframed answer)
        assert browser.request("/cl").body == b"framed"
        assert browser.request("/te").body == b"chunked"
        assert browser.request("/after").body == b"real /after"


def test_connection_cannot_name_away_the_requests_framing(
    sandbox: Sandbox, hostile: HostileUpstream
) -> None:
    with sandbox.browser() as browser:
        base = [("host", sandbox.host), ("authorization", f"Bearer {sandbox.token}")]
        headers = [*base, ("content-length", "5"), ("connection", "content-length, host")]
        request = h11.Request(method="POST", target="/upload", headers=headers)
        data = browser.h11.send(request) + browser.h11.send(h11.Data(data=b"hello"))
        browser.sock.sendall(data + browser.h11.send(h11.EndOfMessage()))
        assert browser.read().body == b"real /upload"
    (seen,) = hostile.connection_of("/upload").requests[-1:]
    assert seen.header("content-length") == "5" and seen.body == b"hello"
    assert seen.header("host") == sandbox.host


def test_bodiless_and_interim_answers_are_framed_as_rfc_9112_says(
    sandbox: Sandbox, hostile: HostileUpstream
) -> None:
    hostile.routes["/204"] = lambda conn, request: conn.send(
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"
    )
    hostile.routes["/304"] = lambda conn, request: conn.send(
        b'HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: "x"\r\n\r\n'
    )
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + hints
    hostile.routes["/103"] = lambda conn, request: conn.send(interim + OK)
    with sandbox.browser() as browser:
        no_content = browser.request("/204")
        assert no_content.status == 204 and not no_content.header("content-length")
        not_modified = browser.request("/304")
        assert not_modified.status == 304 and not_modified.body == b""
        hinted = browser.request("/103")
        assert (hinted.status, hinted.body) == (200, b"ok")
        assert browser.request("/after").body == b"real /after"


# 6. Answers that are not HTTP are 502, and the browser's connection goes on.

NOT_HTTP = {
    "status 099": b"HTTP/1.1 099 X\r\nContent-Length: 2\r\n\r\nok",
    "status 600": b"HTTP/1.1 600 X\r\nContent-Length: 2\r\n\r\nok",
    "status 000": b"HTTP/1.1 000 X\r\nContent-Length: 2\r\n\r\nok",
    "interim with a body": b"HTTP/1.1 150 X\r\nContent-Length: 5\r\n\r\nhello" + OK,
    "interim chunked": b"HTTP/1.1 100 X\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + OK,
    # What held already, and must go on holding:
    "CL and TE": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok",
    "two lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    "bad length": b"HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nok",
    "bare LF": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    "bare CR": b"HTTP/1.1 200 OK\r\nContent-Length: 2\rX: y\r\n\r\nok",
    "NUL": b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
}


@pytest.mark.parametrize("bad", list(NOT_HTTP.values()), ids=list(NOT_HTTP))
def test_an_answer_that_is_not_http_is_502(
    sandbox: Sandbox, hostile: HostileUpstream, bad: bytes
) -> None:
    hostile.routes["/bad"] = lambda conn, request: conn.send(bad)
    with sandbox.browser() as browser:
        answer = browser.request("/bad")
        assert answer.status == 502
        assert hostile.connection_of("/bad").closed.wait(10)
        assert browser.request("/after").body == b"real /after"


# 7. Floods stay flat.


def test_a_million_100_continue_stay_flat(
    sandbox: Sandbox, hostile: HostileUpstream, proxy: ServerProcess
) -> None:
    continues = b"HTTP/1.1 100 Continue\r\n\r\n" * 10_000

    def flood(conn: Connection, request: Request) -> None:
        for _ in range(100):
            conn.send(continues)
        conn.send(OK)

    hostile.routes["/continue"] = flood
    before = rss_mib(proxy)
    with sandbox.browser() as browser:
        assert browser.request("/continue").body == b"ok"
    assert rss_mib(proxy) - before < 20


def test_an_endless_chunked_body_to_a_slow_reader_stays_flat(
    sandbox: Sandbox, hostile: HostileUpstream, proxy: ServerProcess
) -> None:
    blocked = threading.Event()
    sent: list[int] = []
    chunk = b"10000\r\n" + b"c" * 65536 + b"\r\n"

    def stream(conn: Connection, request: Request) -> None:
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        conn.sock.settimeout(2)  # a write that waits this long: the proxy reads no more
        total = 0
        while total < 512 * MIB:
            try:
                conn.sock.sendall(chunk)
            except TimeoutError:
                blocked.set()
                break
            except OSError:
                break
            total += len(chunk)
        sent.append(total)

    hostile.routes["/stream"] = stream
    before = rss_mib(proxy)
    with sandbox.browser() as browser:
        browser.send("/stream")  # and reads nothing
        assert blocked.wait(120), sent
        assert rss_mib(proxy) - before < 20
    assert sent[0] < 128 * MIB
    assert hostile.connection_of("/stream").closed.wait(10)  # the browser went: so does it


def test_a_malformed_answer_on_a_reused_connection_is_not_asked_again(
    sandbox: Sandbox, hostile: HostileUpstream
) -> None:
    """A GET that fails on a pooled connection is sent again on a fresh one only when
    the agent said nothing (it may have closed the idle connection just then); an answer
    it did send, malformed, is its own: it does not get the request twice."""
    hostile.routes["/twice"] = lambda conn, request: conn.send(
        b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n"
    )
    with sandbox.browser() as browser:
        # Pipelined: /twice is sent on /warm's connection once /warm is answered.
        browser.send("/warm")
        browser.send("/twice")
        assert browser.read().body == b"real /warm"
        assert browser.read().status == 502
    assert len({id(c) for c in hostile.connections if c.requests[-1].path == "/twice"}) == 1
    asked = [r for c in hostile.connections for r in c.requests if r.path == "/twice"]
    assert len(asked) == 1

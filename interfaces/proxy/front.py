"""The server side of every connection to Sandbar's port: an HTTP/1.1 protocol that
uvicorn runs for each one (its ``http`` setting).

Each request is routed by its own ``Host``, whatever came before it on the connection (a
reverse proxy in front pools its connections and sends any host down any of them). A
sandbox host's request is decided by the Gate and relayed to the agent over a pooled
keep-alive connection, bodies streamed in both directions with backpressure (a slow
reader pauses the writer's socket; nothing is buffered beyond a few chunks), WebSocket
upgrades spliced into a byte pipe once the agent answers 101. The Anthropic proxy's path
is relayed the same way (interfaces/proxy/anthropic.py); an agent's tunnel dial hands the
connection to the tunnel's protocol; anything else is answered by the REST API through
``ApiExchange`` (interfaces/proxy/api_exchange.py).

What a client can make this spend is bounded: a request head at ``MAX_HEAD`` bytes,
counted as they arrive; a head or a body that stalls is closed after
``SANDBAR_HEADER_TIMEOUT`` / ``SANDBAR_BODY_TIMEOUT``; at most ``SANDBAR_MAX_PIPELINED``
requests wait on one connection (reading pauses past it, and what was read is parsed in
slices so one read cannot queue thousands); connections are capped in total and per
client (interfaces/proxy/connections.py).

Working at this level rather than through a generic server is what makes the proxy fast
enough: no task, scope or message per request on the common path (see
bench/bench_proxy.py)."""

from __future__ import annotations

import asyncio
import http
import time
from collections import deque
from typing import Any, TypeAlias

import httptools

from interfaces.proxy import http1
from interfaces.proxy.api_exchange import ApiExchange, Application
from interfaces.proxy.exchange import HIGH_WATER, Exchange
from interfaces.proxy.gate import Refused, Request
from interfaces.proxy.headers import Headers, Index
from interfaces.proxy.server import SandboxProxy
from interfaces.proxy.upstream import Upstream
from interfaces.tunnel.server import PATH_PREFIX, TunnelConnection

MAX_HEAD = 64 * 1024  # request line and headers
SLICE = 16 * 1024  # bytes parsed at a time, so a full queue stops the parse soon
MAX_BACKLOG = 1024 * 1024  # read after the queue filled, before the pause took effect
TUNNEL_PATH = PATH_PREFIX.encode()
# Headers a request may carry once only (RFC 9112 3.2; h11 refuses a second
# Transfer-Encoding too).
_SINGLE = frozenset({b"host", b"transfer-encoding"})
NO_WEBSOCKET = Refused(
    404,
    "not_found",
    "Not found",
    "WebSockets are served on sandbox hosts and the tunnel's path only",
)


class _Malformed(Exception):
    """Raised in a parser callback (a fresh one each time: an exception kept between
    requests would keep the first one's frames alive through its traceback)."""

    def __init__(self, status: int) -> None:
        self.status = status


class TunnelHandOff:
    """An agent dialing its tunnel: when this request has its turn, the tunnel's protocol
    takes the connection, with the upgrade request and whatever followed it."""

    def __init__(self, front: FrontProtocol, request: Request) -> None:
        self.front = front
        self.request = request
        self.keep_alive = False
        self._early: list[bytes] = []
        self._early_size = 0
        self._inner: TunnelConnection | None = None

    def start(self) -> None:
        request = self.request
        handshake = http1.request_head(request.method, request.target, request.headers)
        self._inner = self.front.hand_off_tunnel(handshake)
        early, self._early = self._early, []
        for data in early:
            self._inner.data_received(data)

    def client_raw(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
            return
        self._early.append(data)
        self._early_size += len(data)
        if self._early_size > HIGH_WATER:
            self.front.pause_reading("upgrade")

    def request_body(self, chunk: bytes) -> None:
        pass

    def request_complete(self) -> None:
        pass

    def client_writable(self, writable: bool) -> None:
        pass

    def abort(self) -> None:
        self._early = []


QueuedExchange: TypeAlias = "Exchange | ApiExchange | TunnelHandOff"


class FrontProtocol(asyncio.Protocol):
    """One client connection. Each request is routed by its own ``Host`` (an
    absolute-form target's authority wins): a sandbox host to its agent (``Exchange``),
    the Anthropic proxy's path to ``HotPath``, a tunnel's dial to the tunnel's protocol,
    anything else to the REST API (``ApiExchange``). Requests are answered in order, one
    at a time; those pipelined behind wait in a queue of at most ``max_pipelined``
    (reading pauses past it)."""

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        proxy: SandboxProxy,
    ) -> None:
        self._server_connections = server_state.connections
        self._keep_alive_timeout = config.timeout_keep_alive
        self.proxy = proxy
        if proxy.application is None:
            proxy.application = Application(config, server_state, app_state)
        self._application = proxy.application
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.client_address = b""
        self.client_text = ""
        self._queue: deque[QueuedExchange] = deque()
        self._paused: set[str] = set()
        self._closing = False
        self._spliced: QueuedExchange | None = None
        self._backlog: bytes | None = None  # read while the queue was full
        self._corked: list[bytes] | None = None
        self._holding = False  # a response head kept corked until its body comes
        self._corked_upstreams: list[Upstream] | None = None  # while a read is parsed
        # The request being parsed.
        self._url = b""
        self._headers: Headers = []
        self._index: Index = {}  # each header's first value
        self._head_size = 0  # exact, from the parser's callbacks
        self._in_head = False
        self._partial_head = 0  # bytes read of a head the parser has not finished
        self._began = False  # a message began during this feed
        self._completed = False  # a message completed during this feed
        self._head_since: float | None = None
        self._body_expected = False
        self._body_moved = False
        self._body_since = 0.0
        self._idle_since: float | None = None

    # Connection

    @property
    def closing(self) -> bool:
        return self._closing

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._server_connections.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = (str(peer[0]), int(peer[1]))
            self.client_address = self.client[0].encode()
            self.client_text = f"{self.client[0]}:{self.client[1]}"
        sock = transport.get_extra_info("sockname")
        if isinstance(sock, tuple) and len(sock) >= 2:
            self.server = (str(sock[0]), int(sock[1]))
        self.proxy.started()
        # A connection that never asks anything is closed like an idle one.
        self._idle_since = time.monotonic()
        if not self.proxy.connections.add(self):
            self._closing = True
            transport.close()  # (every slot is busy answering someone)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server_connections.discard(self)
        self.proxy.connections.discard(self)
        self._closing = True
        self._backlog = None
        while self._queue:
            self._queue.popleft().abort()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close now if idle, else after this response."""
        self._closing = True
        if not self._queue and self.transport is not None:
            self.transport.close()

    @property
    def idle(self) -> bool:
        """Answering nothing (a head half-sent counts as nothing): may be shed."""
        return not self._queue

    def shed(self) -> None:
        """Closed to make room for a newer connection."""
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        if self._queue:
            self._queue[0].client_writable(False)

    def resume_writing(self) -> None:
        if self._queue:
            self._queue[0].client_writable(True)

    def data_received(self, data: bytes) -> None:
        if self._spliced is not None:
            self._spliced.client_raw(data)
        elif self._backlog is not None:  # (read before the pause took effect)
            self._backlog += data
            if len(self._backlog) > MAX_BACKLOG:
                self._fail(429)
        elif len(data) <= SLICE and len(self._queue) < self.proxy.max_pipelined:
            self._parse(data)  # (the common case: one read, one slice)
        else:
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Parse ``data`` in slices; once the queue is full, keep the rest for later."""
        start, end = 0, len(data)
        while start < end:
            if len(self._queue) >= self.proxy.max_pipelined:
                self._backlog = data[start:]
                self.pause_reading("pipeline")
                return
            stop = min(end, start + SLICE)
            if not self._parse(data if stop - start == end else data[start:stop]):
                return
            if self.transport is None or self.transport.is_closing():
                return
            if self._spliced is not None:
                if stop < end:
                    self._spliced.client_raw(data[stop:])
                return
            start = stop

    def _parse(self, data: bytes) -> bool:
        """Feed one slice to the parser; False once the connection failed (the caller
        also stops at a closing transport, and at an upgrade: what follows is its)."""
        self._began = self._completed = False
        counted = self._in_head  # a head in progress before this slice: count it all
        self._corked_upstreams = []
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            exchange = self._queue[-1] if self._queue else None
            rest = data[e.args[0] :]
            if exchange is None or not exchange.request.websocket:
                if isinstance(exchange, ApiExchange):  # (an Upgrade the API ignores)
                    return self._parse(rest) if rest else True
                self._fail(400)
                return False
            self._spliced = exchange  # what follows is the upgraded connection's
            if rest:
                exchange.client_raw(rest)
            return True
        except httptools.HttpParserError as e:
            # An exception raised in a callback arrives wrapped, as its context.
            reason = e.__context__
            self._fail(reason.status if isinstance(reason, _Malformed) else 400)
            return False
        finally:
            corked, self._corked_upstreams = self._corked_upstreams, None
            for conn in corked:
                conn.uncork()
        if self._in_head:
            # The parser keeps a partial head to itself: count what it read as it
            # comes, so an endless header is refused at the cap, not at its end. (A
            # head that began after another request in the same slice is counted from
            # the next slice: at most one slice more.)
            if counted or (self._began and not self._completed):
                self._partial_head += len(data)
            if self._partial_head > MAX_HEAD:
                self._fail(431)
                return False
        return True

    def cork_upstream(self, conn: Upstream) -> None:
        """What a read of the browser's makes for the agent goes in one write (a
        request's head and its body, say), once the read is parsed."""
        if self._corked_upstreams is not None and conn.cork():
            self._corked_upstreams.append(conn)

    def hand_off_tunnel(self, handshake: bytes) -> TunnelConnection:
        """The connection becomes an agent's tunnel."""
        inner = TunnelConnection(self.proxy.tunnels, self._server_connections)
        self._server_connections.discard(self)
        self.proxy.connections.discard(self)
        assert self.transport is not None
        self.transport.set_protocol(inner)
        inner.connection_made(self.transport)
        if self._paused:  # (ours end here; the tunnel pauses for its own reasons after)
            self._paused.clear()
            self.transport.resume_reading()
        inner.data_received(handshake)
        return inner

    def _fail(self, status: int) -> None:
        """A request we cannot parse or accept: answer if nothing else is being
        answered, close."""
        self._closing = True
        self._backlog = None
        if self.transport is None or self.transport.is_closing():
            return
        if not self._queue:
            body = http.HTTPStatus(status).phrase.encode()
            length = [(b"content-length", b"%d" % len(body)), (b"connection", b"close")]
            self.transport.write(http1.response_head(status, length) + body)
        self.transport.close()

    def tick(self, now: float) -> None:
        """Close the connection if it idles past keep-alive, or a head or a body stalls
        past its limit (a stall while we paused reading is ours, not the client's)."""
        if self.transport is None or self._paused:
            return
        if self._head_since is not None:
            if not self._head_since:
                self._head_since = now
            elif now - self._head_since > self.proxy.header_timeout:
                self._fail(408)
            return
        if self._body_expected:
            if self._body_moved or not self._body_since:
                self._body_moved = False
                self._body_since = now
            elif now - self._body_since > self.proxy.body_timeout:
                self._fail(408)
            return
        idle = self._idle_since
        if idle is not None and not self._queue and now - idle > self._keep_alive_timeout:
            self.transport.close()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._index = {}
        self._head_size = 0
        self._partial_head = 0
        self._in_head = self._began = True
        self._head_since = 0.0  # (the ticker starts the clock: no clock read per request)
        self._idle_since = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD:
            raise _Malformed(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self._headers.append((name, value))
        self._head_size += len(name) + len(value)
        if self._head_size > MAX_HEAD:
            raise _Malformed(431)
        if name not in self._index:
            self._index[name] = value
        elif name in _SINGLE:
            raise _Malformed(400)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_since = None
        parser = self._parser
        version = parser.get_http_version()
        index = self._index
        host, target = self._route_of(self._url, self._headers, index, version)
        sandbox = self.proxy.gate.sandbox_of(host)
        upgrade = parser.should_upgrade()
        websocket = upgrade and (index.get(b"upgrade") or b"").lower() == b"websocket"
        keep_alive = parser.should_keep_alive()
        method = parser.get_method()
        request = Request(host, method, target, self._headers, index, websocket, sandbox)
        exchange: QueuedExchange
        if sandbox is not None or self.proxy.is_sandbox_host(host):
            if upgrade and not websocket:
                raise _Malformed(400)
            exchange = Exchange(self, request, keep_alive)
        elif (hot := self.proxy.hot_path) is not None and target.startswith(hot.prefix):
            if upgrade:
                raise _Malformed(400)
            exchange = hot.exchange(self, request, keep_alive)
        elif websocket and target.startswith(TUNNEL_PATH):
            exchange = TunnelHandOff(self, request)
        elif websocket:
            exchange = Exchange(self, request, keep_alive)
            exchange.preset = NO_WEBSOCKET.answer(request)
        else:
            request.websocket = False
            exchange = ApiExchange(self, self._application, request, keep_alive, version)
        # (cleared at once by on_message_complete when there is no body; the ticker
        # starts the clock, so no clock is read per request)
        self._body_expected = True
        self._body_since = 0.0
        self._queue.append(exchange)
        if len(self._queue) == 1:
            exchange.start()

    @staticmethod
    def _route_of(url: bytes, headers: Headers, index: Index, version: str) -> tuple[str, bytes]:
        """The request's host and its target in origin-form (RFC 9112, 3.2: an
        absolute-form target's authority wins over ``Host``; HTTP/1.1 needs exactly one
        ``Host``, and a second is refused as it is parsed). Refused as h11 refuses: a
        request line with no HTTP/1.x version, and a transfer coding other than
        ``chunked`` alone, once (RFC 9112, 6.1)."""
        if version != "1.1" and version != "1.0":
            raise _Malformed(400)
        host = index.get(b"host")
        if host is None:
            if version != "1.0":
                raise _Malformed(400)
            host = b""
        coding = index.get(b"transfer-encoding")
        if coding is not None and coding.strip().lower() != b"chunked":
            raise _Malformed(400)
        target = url
        if not url.startswith(b"/"):
            scheme, sep, rest = url.partition(b"://")
            if not sep or scheme.lower() not in (b"http", b"https"):
                raise _Malformed(400)
            cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=-1)
            authority, path = (rest, b"") if cut < 0 else (rest[:cut], rest[cut:])
            if not authority or b"@" in authority:
                raise _Malformed(400)
            host = authority
            target = path if path.startswith(b"/") else b"/" + path
            headers[:] = [(n, v) for n, v in headers if n != b"host"] + [(b"host", host)]
            index[b"host"] = host
        return host.decode("latin-1"), target

    def on_body(self, body: bytes) -> None:
        self._body_moved = True
        if self._queue:  # (else: the body of a request already refused)
            self._queue[-1].request_body(body)

    def on_message_complete(self) -> None:
        self._completed = True
        self._body_expected = False
        if self._queue:
            self._queue[-1].request_complete()

    # Used by exchanges

    def pause_reading(self, reason: str) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason in self._paused:
            self._paused.discard(reason)
            if not self._paused and self.transport is not None and not self._closing:
                self.transport.resume_reading()
                # (the stall was ours: the clocks start again at the next tick)
                if self._head_since is not None:
                    self._head_since = 0.0
                self._body_since = 0.0

    def write(self, data: bytes) -> None:
        if self._corked is not None:
            self._corked.append(data)
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def cork(self) -> None:
        if self._corked is None:
            self._corked = []

    def hold(self) -> None:
        """Until ``release``, ``uncork`` keeps what is corked: a head whose body is on its
        way (many servers write the two apart) goes out with the body's first bytes."""
        self._holding = True

    def release(self, write: bool = False) -> None:
        """Stop holding; what is held goes with the next uncork, or now if ``write``."""
        if self._holding:
            self._holding = False
            if write:
                self.uncork()

    def uncork(self) -> None:
        if self._holding:
            return
        corked, self._corked = self._corked, None
        if corked:
            self.write(b"".join(corked))

    def answering(self, exchange: object) -> bool:
        """Whether ``exchange`` has its turn (pipelined ones wait for those before)."""
        return bool(self._queue) and self._queue[0] is exchange

    def finished(self, exchange: QueuedExchange) -> None:
        if self._queue and self._queue[0] is exchange:
            self._queue.popleft()
        if not exchange.keep_alive or self._closing:
            self._closing = True
            self._backlog = None
            self.uncork()
            if self.transport is not None:
                self.transport.close()
            return
        if self._queue:
            self._queue[0].start()
        else:
            self._idle_since = time.monotonic()
        if self._backlog is not None and len(self._queue) < self.proxy.max_pipelined:
            # (not from here: this may run inside a parser callback)
            asyncio.get_running_loop().call_soon(self._read_backlog)

    def _read_backlog(self) -> None:
        backlog, self._backlog = self._backlog, None
        if backlog is None or self.transport is None or self._closing:
            return
        self._feed(backlog)
        if self._backlog is None:
            self.resume_reading("pipeline")

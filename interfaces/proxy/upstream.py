"""Connections to the agents: HTTP/1.1 with keep-alive, responses parsed by httptools and
handed, piece by piece, to whoever sent the request (a ``Sink``), which writes them on to
the browser as they come. No response is held in memory: when the browser reads slowly,
the sink pauses reading from the agent.

Generic clients (httpx, aiohttp) cost more per request than a proxy can afford (see
docs/benchmarks.md); this does only what forwarding needs."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Protocol

import httptools

from interfaces.proxy.headers import Headers, Index

TLS = "https://"  # a target so named is reached over TLS
MAX_IDLE = 64  # idle connections kept per agent address
# An idle connection older than this is not reused: agents' servers close idle
# connections after a few seconds (5 s for Node's and uvicorn's), and a request sent just
# as that happens is lost. (nginx's upstream keep-alive has the same race.)
MAX_IDLE_AGE = 2.0
MAX_HEAD = 64 * 1024  # a response's status line and headers, as for requests (front.py)
TOO_LARGE = "the agent's response head is over 64 KiB"


class _Refusal(Exception):
    """Raised in a parser callback: this answer cannot be forwarded (why: ``args[0]``)."""


class _Stop(Exception):
    """Raised in a parser callback: the answer has ended, parse no further (what would
    follow is not for anyone: the connection is not reused)."""


class Sink(Protocol):
    def cork(self) -> None: ...
    def uncork(self) -> None: ...
    def response_head(
        self, status: int, headers: Headers, index: Index, upgraded: bool
    ) -> None: ...
    def response_body(self, data: bytes) -> None: ...
    def response_end(self) -> None: ...
    def upstream_failed(self, reason: str) -> None: ...
    def upstream_writable(self, writable: bool) -> None: ...
    def upstream_raw(self, data: bytes) -> None: ...
    def upstream_closed(self) -> None: ...


class Upstream(asyncio.Protocol):
    """One connection to an agent, one exchange at a time; after a 101 it is a plain
    byte pipe (a WebSocket, relayed frame bytes as they are).

    The agent's server is not trusted: a connection is kept for another exchange only
    when its answer ended exactly where the next message would begin, with nothing after
    it, and it stayed silent while idle. Any other byte closes it, so no answer can be
    handed to a request it was not sent for. A response head is counted as its bytes
    arrive (``MAX_HEAD``), and only a request that asked to upgrade may be answered 101."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._sink: Sink | None = None
        self._headers: Headers = []
        self._index: Index = {}  # each response header's first value
        self._status = 0
        self._head_only = False
        self._upgrade = False
        self._keep_alive = False
        self._head_seen = False
        self._framed = False
        self._in_head = False  # reading a head: its bytes count toward MAX_HEAD
        self._head_bytes = 0  # bytes read since this head began (whole reads)
        self._interim = False  # an interim answer came first (its bytes left uncounted)
        self._ended = False  # the answer has ended; the sink hears so once the read is parsed
        self.done = True
        self.closed = False
        self.spliced = False
        self.idle_since = 0.0
        self._corked: list[bytes] | None = None

    # Used by the proxy.

    def send(self, sink: Sink, data: bytes, *, head_only: bool, upgrade: bool = False) -> None:
        """Start an exchange: the request's head (and what is at hand of its body).
        ``upgrade``: the request asked for a WebSocket (only then may a 101 answer it)."""
        assert self.transport is not None
        if self.closed:  # (closed by the agent, or for speaking out of turn, before this)
            sink.upstream_failed("the agent closed the connection")
            return
        self._sink = sink
        self._headers = []
        self._index = {}
        self._status = 0
        self._head_seen = False
        self._head_only = head_only
        self._upgrade = upgrade
        self._in_head = True
        self._head_bytes = 0
        self._interim = False
        self.done = False
        self.write(data)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            if self._corked is not None:
                self._corked.append(data)
            else:
                self.transport.write(data)

    def cork(self) -> bool:
        """Gather what is written until ``uncork`` (False: it already is)."""
        if self._corked is not None:
            return False
        self._corked = []
        return True

    def uncork(self) -> None:
        corked, self._corked = self._corked, None
        if corked:
            self.write(b"".join(corked))

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    @property
    def heard(self) -> bool:
        """Whether the agent has sent anything for this exchange (then a failure is not
        a connection that was closed before the request reached it: no replay)."""
        return self._head_bytes > 0 or self._head_seen

    @property
    def reusable(self) -> bool:
        return self.done and not self.closed and self._keep_alive and not self.spliced

    def close(self) -> None:
        self._sink = None
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.spliced:
            if self._sink is not None:
                self._sink.upstream_raw(data)
            return
        if self.done:
            # Between exchanges (idle, or in the pool) a server has nothing to say: what
            # it says would be taken as the answer to whichever request comes next.
            self.close()
            return
        if self._in_head:
            self._head_bytes += len(data)
        sink = self._sink
        if sink is not None:
            sink.cork()  # what one read yields goes on in one write (head and body, say)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            if self._status == 101 and self._sink is not None:
                self.spliced = True
                rest = data[e.args[0] :]
                if rest:
                    self._sink.upstream_raw(rest)
            else:
                self._fail("the agent switched protocols unasked")
        except httptools.HttpParserError as e:
            if self._ended:  # bytes after the answer's end: it stands, the connection goes
                self._keep_alive = False
            else:
                reason = e.__context__
                if isinstance(reason, _Refusal):
                    self._fail(reason.args[0])
                else:
                    self._fail(f"the agent sent a malformed response ({e})")
        else:
            if self._in_head and self._head_bytes > MAX_HEAD and not self.closed:
                self._fail(TOO_LARGE)  # (a header that never ends: not one byte more)
        finally:
            if self._ended:
                self._end()
            if sink is not None:
                sink.uncork()

    def _end(self) -> None:
        self._ended = False
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.response_end()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        sink, self._sink = self._sink, None
        if sink is None:
            return
        if self.spliced:
            sink.upstream_closed()
        elif not self.done:
            if self._head_seen and not self._framed and exc is None:
                self.done = True
                sink.response_end()  # a body delimited by the connection's (clean) end
            else:
                sink.upstream_failed("the agent closed the connection")

    def pause_writing(self) -> None:
        if self._sink is not None:
            self._sink.upstream_writable(False)

    def resume_writing(self) -> None:
        if self._sink is not None:
            self._sink.upstream_writable(True)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.done:
            raise _Stop  # a message after the answer's end: nobody asked for it

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self._headers.append((name, value))
        self._index.setdefault(name, value)

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        headers = self._headers
        if not 100 <= status <= 599:
            raise _Refusal(f"the agent answered with status {status:03d}")
        if status < 200:
            if status == 101:
                if not (self._upgrade and self._parser.should_upgrade()):
                    raise _Refusal("the agent switched protocols unasked")
            else:
                # An interim answer (100 Continue, 103 Early Hints): the real one follows.
                # It has no body (RFC 9112 6.3); one that claims one is not HTTP.
                if _claims_body(headers):
                    raise _Refusal(f"the agent's {status} answer claims a body")
                self._headers = []
                self._index = {}
                self._head_bytes = 0
                self._interim = True
                return
        if (self._head_bytes > MAX_HEAD or self._interim) and _size(headers) > MAX_HEAD:
            raise _Refusal(TOO_LARGE)  # (only a head that came in a large read is summed)
        self._in_head = False
        self._status = status
        self._head_seen = True
        self._keep_alive = self._parser.should_keep_alive()  # only known while parsing
        index = self._index
        self._framed = b"content-length" in index or b"transfer-encoding" in index
        if status == 204 and b"content-length" in index:  # (RFC 9110 8.6: it must not)
            headers = [(n, v) for n, v in headers if n != b"content-length"]
            index = {n: v for n, v in index.items() if n != b"content-length"}
        if self._sink is not None:
            self._sink.response_head(status, headers, index, status == 101)
        if self._head_only:
            # The parser cannot know a HEAD answer has no body: end here, and do not
            # reuse the connection.
            self._keep_alive = False
            self.done = True
            self._ended = True
            raise _Stop

    def on_body(self, body: bytes) -> None:
        if self._sink is not None:
            self._sink.response_body(body)

    def on_message_complete(self) -> None:
        if not self._head_seen or self.done or self._status == 101:
            return  # (after a 101 the connection is the WebSocket's)
        self.done = True
        self._ended = True  # (the sink hears of it once the whole read is parsed)

    def _fail(self, reason: str) -> None:
        sink, self._sink = self._sink, None
        self.close()
        if sink is not None:
            sink.upstream_failed(reason)


def _claims_body(headers: Headers) -> bool:
    return any(
        n == b"transfer-encoding" or (n == b"content-length" and v.strip() != b"0")
        for n, v in headers
    )


def _size(headers: Headers) -> int:
    """A head's size, near enough (its status line aside)."""
    return sum(len(n) + len(v) + 4 for n, v in headers)


class Pool:
    """Idle keep-alive connections per target ("host:port" or "https://host:port")."""

    def __init__(self, connect_timeout: float = 10.0) -> None:
        self._idle: dict[str, list[Upstream]] = {}
        self._connect_timeout = connect_timeout
        self._tls: ssl.SSLContext | None = None

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def idle(self, address: str) -> Upstream | None:
        idle = self._idle.get(address)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < MAX_IDLE_AGE:
                return conn
            conn.close()
        return None

    async def connect(self, target: str) -> Upstream:
        """A new connection to ``target``: "host:port", or "https://host:port" for TLS
        (pooled under that same name)."""
        tls = target.startswith(TLS)
        address = target[len(TLS) :] if tls else target
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        loop = asyncio.get_running_loop()
        context = self._tls_context() if tls else None
        try:
            transport, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Upstream(target),
                    host,
                    int(port),
                    ssl=context,
                    server_hostname=host if tls else None,
                ),
                self._connect_timeout,
            )
        except (OSError, TimeoutError, ValueError) as e:
            raise ConnectionError(f"cannot connect ({e or type(e).__name__})") from None
        conn.transport = transport  # type: ignore[assignment]  # uvloop may call back later
        return conn

    def release(self, conn: Upstream) -> None:
        if not conn.reusable:
            conn.close()
            return
        idle = self._idle.setdefault(conn.address, [])
        if len(idle) < MAX_IDLE:
            conn.idle_since = time.monotonic()
            idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


class Stream:
    """An agent connection's answer as awaitables, for an ASGI handler: ``head()``,
    then ``body()``; reading pauses while more than ``HIGH_WATER`` bytes wait."""

    HIGH_WATER = 256 * 1024
    LOW_WATER = 64 * 1024

    def __init__(self, conn: Upstream) -> None:
        self.conn = conn
        loop = asyncio.get_running_loop()
        self._head: asyncio.Future[tuple[int, Headers]] = loop.create_future()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self.ended = False
        self.error: str | None = None

    async def head(self, timeout: float) -> tuple[int, Headers]:
        return await asyncio.wait_for(asyncio.shield(self._head), timeout)

    async def write(self, data: bytes) -> None:
        """More request body, at the pace the agent reads it."""
        if self.error is not None or self.conn.closed:
            raise ConnectionError(self.error or "the connection closed")
        self.conn.write(data)
        await self._writable.wait()

    async def body(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < self.LOW_WATER:
                    self._paused = False
                    self.conn.resume_reading()
                yield chunk
            elif self.ended:
                return
            elif self.error is not None:
                raise ConnectionError(self.error)
            else:
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter

    # Sink

    def cork(self) -> None:
        pass

    def uncork(self) -> None:
        pass

    def response_head(self, status: int, headers: Headers, index: Index, upgraded: bool) -> None:
        if not self._head.done():
            self._head.set_result((status, headers))

    def response_body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > self.HIGH_WATER and not self._paused:
            self._paused = True
            self.conn.pause_reading()
        self._wake()

    def response_end(self) -> None:
        self.ended = True
        self._wake()

    def upstream_failed(self, reason: str) -> None:
        self.error = reason
        if not self._head.done():
            self._head.set_exception(ConnectionError(reason))
            self._head.exception()  # retrieved: no warning if nobody awaits it
        self._writable.set()
        self._wake()

    def upstream_writable(self, writable: bool) -> None:
        if writable:
            self._writable.set()
        else:
            self._writable.clear()

    def upstream_raw(self, data: bytes) -> None:
        self.response_body(data)

    def upstream_closed(self) -> None:
        self.response_end()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

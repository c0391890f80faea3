"""A lean HTTP/1.1 client for the proxy's hot path: keep-alive connections per agent
address, the response parsed by httptools, bodies streamed both ways with backpressure.

Generic clients spend more per request than a proxy can afford (see BASELINES.md); this
one does only what forwarding needs. Memory per exchange is bounded: reading from the
agent pauses while more than ``HIGH_WATER`` bytes wait for the client, and writing to it
waits while the socket's buffer is full."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

import httptools

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
MAX_IDLE = 64  # idle connections kept per address
Headers = list[tuple[bytes, bytes]]


class UpstreamError(Exception):
    """The agent could not be reached, or broke the exchange."""


class Exchange(asyncio.Protocol):
    """One connection to an agent, carrying one request/response at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._head: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self.status = 0
        self.headers: Headers = []
        self.done = False  # the response is complete
        self.closed = False
        self._error: Exception | None = None
        self._framed = False  # the response says where its body ends

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("the agent switched protocols unasked"))
        except httptools.HttpParserError as e:
            self._fail(UpstreamError(f"the agent sent a malformed response ({e})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.done:
            return
        if self._head is not None and self._head.done() and not self._framed:
            self.on_message_complete()  # a body delimited by the connection's end
        else:
            self._fail(UpstreamError("the agent closed the connection"))
        self._wake_drain()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_drain()

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if 100 <= self.status < 200 and self.status != 101:
            self.headers = []  # an interim response (100 Continue): wait for the real one
            return
        self._framed = any(n in (b"content-length", b"transfer-encoding") for n, _ in self.headers)
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200 and self.status != 101:
            return
        self.done = True
        self._wake()

    # Used by the proxy.

    def start(self, head: bytes) -> None:
        """Send a request's head (and any body already at hand)."""
        assert self.transport is not None
        self._head = asyncio.get_running_loop().create_future()
        self.headers = []
        self.status = 0
        self.done = False
        self.transport.write(head)

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise UpstreamError("the agent closed the connection")
        self.transport.write(data)
        if self._writing_paused:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain

    async def response_head(self, timeout: float) -> None:
        assert self._head is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._head), timeout)
        except TimeoutError:
            raise UpstreamError(f"the agent did not answer within {timeout:g} s") from None

    def ready_body(self) -> bytes | None:
        """The whole body, if it has already arrived (the common small response)."""
        if not self.done:
            return None
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return body

    async def body(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._reading_paused and self._buffered < LOW_WATER and self.transport:
                    self._reading_paused = False
                    self.transport.resume_reading()
                yield chunk
            elif self.done:
                return
            elif self._error is not None:
                raise self._error
            else:
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter

    @property
    def reusable(self) -> bool:
        return self.done and not self.closed and self._parser.should_keep_alive()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # internals

    def _fail(self, error: Exception) -> None:
        self._error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved: no "never retrieved" warning
        self._wake()
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _wake_drain(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)


class Pool:
    """Idle keep-alive connections per agent address ("host:port")."""

    def __init__(self, connect_timeout: float = 10.0) -> None:
        self._idle: dict[str, list[Exchange]] = {}
        self._connect_timeout = connect_timeout

    async def acquire(self, address: str) -> tuple[Exchange, bool]:
        """A connection to ``address``, and whether it was reused (it may have gone
        stale; a request that fails on one before any answer may be retried)."""
        idle = self._idle.get(address)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn, True
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            transport, conn = await asyncio.wait_for(
                loop.create_connection(Exchange, host.strip("[]"), int(port)),
                self._connect_timeout,
            )
        except (OSError, TimeoutError, ValueError) as e:
            raise UpstreamError(f"cannot connect to the agent ({e or type(e).__name__})") from None
        conn.transport = transport  # type: ignore[assignment]  # uvloop may call back later
        return conn, False

    def release(self, address: str, conn: Exchange) -> None:
        if not conn.reusable:
            conn.close()
            return
        idle = self._idle.setdefault(address, [])
        if len(idle) < MAX_IDLE:
            idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

"""The agent's end of a tunnel: dial Sandbar, then for every stream Sandbar opens, connect
to the local target (opencode on 127.0.0.1:4096, say) and pipe bytes both ways, at the
pace each side reads. Reconnects with capped exponential backoff and full jitter; stops
for good when Sandbar says the agent was replaced or its sandbox deleted, or refuses its
token."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from asyncio import FIRST_COMPLETED
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI

from interfaces.tunnel.link import MAX_MESSAGE, Link, Pipe
from interfaces.tunnel.server import GONE, REPLACED

BACKOFF_START = 0.5
BACKOFF_CAP = 30.0
STABLE_AFTER = 10.0  # a connection that lived this long resets the backoff
CLOSE_WAIT = 2.0  # seconds to wait for Sandbar's close frame once the tunnel has ended


class Stop(Exception):
    """Reconnecting would not help."""


class TargetPipe(Pipe, asyncio.Protocol):
    """A stream from Sandbar, piped to a TCP connection to the local target, both ways at
    the pace each side reads: what Sandbar sends is acknowledged (so more may come) once
    the target's socket takes it; what the target sends is read until the stream's window
    is full."""

    def __init__(self, link: Link, stream_id: int, host: str, port: int) -> None:
        super().__init__(link, stream_id)
        self._transport: asyncio.Transport | None = None
        self._held: deque[tuple[bytes, int]] = deque()  # from Sandbar, before connecting
        self._unacked = 0  # taken by the target's socket buffer while it is full
        self._target_full = False
        self._ended = False  # Sandbar will send nothing more
        self._target_ended = False  # the target will send nothing more
        self._connecting = asyncio.get_running_loop().create_task(self._connect(host, port))

    async def _connect(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.create_connection(lambda: self, host, port), 10)
        except (OSError, TimeoutError):
            if not self.closed:
                self.link.respond(self.stream_id, 502, end=True)
                self.closed = True
                self._drop_held()

    # The target's side (asyncio.Protocol).

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.closed:  # Sandbar gave up on the stream meanwhile
            transport.close()
            return
        self._transport = transport  # type: ignore[assignment]
        self.link.respond(self.stream_id, 200)
        while self._held:
            self.on_data(*self._held.popleft())
        if self._ended:
            self._end_target()

    def data_received(self, data: bytes) -> None:
        self.write(data)

    def eof_received(self) -> bool:
        self._target_ended = True
        self.end()
        self._close_if_done()
        return True  # half-closed: what Sandbar still sends goes on to the target

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not (self._target_ended and self._ended):
            self.reset()  # cut off before both sides ended: so is the stream
            self._drop_unacked()

    def pause_writing(self) -> None:
        self._target_full = True

    def resume_writing(self) -> None:
        self._target_full = False
        unacked, self._unacked = self._unacked, 0
        self.ack(unacked)

    # Sandbar's side (Pipe).

    def on_data(self, data: bytes, flow_length: int) -> None:
        transport = self._transport
        if transport is None:
            self._held.append((data, flow_length))
            return
        transport.write(data)
        if self._target_full:
            self._unacked += flow_length  # acknowledged once the target reads
        else:
            self.ack(flow_length)

    def on_end(self) -> None:
        self._ended = True
        if self._transport is not None:
            self._end_target()

    def on_reset(self, reason: str) -> None:
        self.closed = True
        self._connecting.cancel()
        self._drop_held()
        self._drop_unacked()
        if self._transport is not None:
            self._transport.abort()

    def on_writable(self, writable: bool) -> None:
        if self._transport is not None:
            if writable:
                self._transport.resume_reading()
            else:
                self._transport.pause_reading()

    def _end_target(self) -> None:
        assert self._transport is not None
        if self._transport.can_write_eof():
            with contextlib.suppress(OSError):
                self._transport.write_eof()
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self._ended and self._target_ended and self._transport is not None:
            self._transport.close()

    def _drop_held(self) -> None:
        """Bytes dropped unwritten: their room in the connection window is returned."""
        if self._held:
            self.ack(sum(length for _, length in self._held))
            self._held.clear()

    def _drop_unacked(self) -> None:
        unacked, self._unacked = self._unacked, 0
        self.ack(unacked)


class Sender:
    """The link's ``write`` on the websockets client, whose send is awaited: bytes queued
    here and sent in order by one task, as much as has gathered at a time, in messages
    of at most MAX_MESSAGE. ``failed`` says why sending stopped."""

    def __init__(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        self._send = send
        self._outbox: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self.failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def write(self, data: bytes) -> None:
        if not self.failed.done():
            self._outbox.append(data)
            self._wake.set()

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._outbox:
                    parts = [self._outbox.popleft()]
                    size = len(parts[0])
                    while self._outbox and size + len(self._outbox[0]) <= MAX_MESSAGE:
                        size += len(self._outbox[0])
                        parts.append(self._outbox.popleft())
                    await self._send(b"".join(parts))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the WebSocket is gone
            if not self.failed.done():
                self.failed.set_result(f"the tunnel's connection failed ({type(e).__name__})")

    def stop(self) -> None:
        self._task.cancel()


@dataclass
class Registration:
    server: str
    sandbox_id: str
    tunnel_token: str
    target: str  # http://host:port of the local agent server


def tunnel_url(registration: Registration) -> str:
    base = registration.server.rstrip("/")
    scheme = "wss" if base.startswith("https://") else "ws"
    rest = base.split("://", 1)[1]
    return (
        f"{scheme}://{rest}/api/tunnel/{registration.sandbox_id}?token={registration.tunnel_token}"
    )


def _target(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    return (host or rest).strip("[]"), int(port) if port.isdigit() else 80


async def serve_once(registration: Registration, say: Callable[[str], None]) -> str:
    """One connection, until it ends; why it ended. Raises Stop when retrying is futile."""
    host, port = _target(registration.target)
    try:
        websocket = await connect(
            tunnel_url(registration),
            max_size=None,
            compression=None,
            ping_interval=None,  # the tunnel has its own heartbeat
            open_timeout=15,
            close_timeout=CLOSE_WAIT,
        )
    except InvalidStatus as e:
        if e.response.status_code in (401, 403, 404):
            raise Stop(
                "Sandbar refused this agent (the sandbox was deleted, or its token is not"
                " valid): register it again"
            ) from None
        return f"Sandbar answered {e.response.status_code}"
    except InvalidURI as e:
        raise Stop(f"the server address is not valid ({e})") from None
    except (OSError, TimeoutError) as e:
        return f"cannot reach Sandbar ({e.strerror or type(e).__name__})"
    async with websocket:
        sender = Sender(websocket.send)
        link = Link(
            sender.write,
            client_side=False,
            on_request=lambda stream_id, _headers: TargetPipe(link, stream_id, host, port),
        )
        say(f"connected: forwarding to {registration.target}")

        async def feed() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for message in websocket:
                    if isinstance(message, str):
                        link.close("Sandbar sent text where the tunnel carries bytes")
                        return
                    link.receive(message)

        feeding = asyncio.get_running_loop().create_task(feed())
        await asyncio.wait({feeding, link.closed, sender.failed}, return_when=FIRST_COMPLETED)
        if sender.failed.done():
            link.close(sender.failed.result())
        if not feeding.done():
            # Sandbar ends a tunnel with GOAWAY, then a close frame that says why (replaced,
            # deleted): wait a moment for it. (A heartbeat that died waits in vain.)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(feeding), CLOSE_WAIT)
            feeding.cancel()
        reason = link.closed.result() if link.closed.done() else "the connection closed"
        link.close(reason)
        sender.stop()
        rcvd = websocket.close_code
        if rcvd == REPLACED:
            raise Stop("another connection of this agent took over")
        if rcvd == GONE:
            raise Stop("the sandbox was deleted")
        return websocket.close_reason or reason


async def run(registration: Registration, say: Callable[[str], None]) -> None:
    """Stay connected: reconnect with capped exponential backoff and full jitter."""
    delay = BACKOFF_START
    while True:
        started = time.monotonic()
        reason = await serve_once(registration, say)
        if time.monotonic() - started > STABLE_AFTER:
            delay = BACKOFF_START
        wait = random.uniform(0, delay)  # noqa: S311 - jitter, not a secret
        say(f"disconnected ({reason}); reconnecting in {wait:.1f} s")
        await asyncio.sleep(wait)
        delay = min(delay * 2, BACKOFF_CAP)

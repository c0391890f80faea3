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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI

from interfaces.tunnel.link import Link, Pipe
from interfaces.tunnel.server import GONE, REPLACED

READ_SIZE = 64 * 1024
BACKOFF_START = 0.5
BACKOFF_CAP = 30.0
STABLE_AFTER = 10.0  # a connection that lived this long resets the backoff


class Stop(Exception):
    """Reconnecting would not help."""


class TargetPipe(Pipe):
    """A stream from Sandbar, piped to a TCP connection to the local target."""

    def __init__(self, link: Link, stream_id: int, host: str, port: int) -> None:
        super().__init__(link, stream_id)
        self._incoming: deque[tuple[bytes, int]] = deque()
        self._more = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._ended = False
        self._writer: asyncio.StreamWriter | None = None
        self._task = asyncio.get_running_loop().create_task(self._run(host, port))

    async def _run(self, host: str, port: int) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        except (OSError, TimeoutError):
            self.link.respond(self.stream_id, 502, end=True)
            self.closed = True
            return
        self._writer = writer
        self.link.respond(self.stream_id, 200)
        outbound = asyncio.get_running_loop().create_task(self._to_target(writer))
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                self.write(data)
                await self._writable.wait()  # the stream's window is full: wait for Sandbar
            self.end()
            await outbound
        except (OSError, asyncio.CancelledError):
            self.reset()
        finally:
            outbound.cancel()
            writer.close()

    async def _to_target(self, writer: asyncio.StreamWriter) -> None:
        while True:
            while self._incoming:
                data, length = self._incoming.popleft()
                writer.write(data)
                await writer.drain()
                self.ack(length)  # only now may Sandbar send more on this stream
            if self._ended:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            self._more.clear()
            await self._more.wait()

    def on_data(self, data: bytes, flow_length: int) -> None:
        writer = self._writer
        if writer is not None and not self._incoming and not self._ended:
            transport = writer.transport
            if transport.get_write_buffer_size() < READ_SIZE and not transport.is_closing():
                writer.write(data)  # the socket takes it now: no task hop, ack at once
                self.ack(flow_length)
                return
        self._incoming.append((data, flow_length))
        self._more.set()

    def on_end(self) -> None:
        self._ended = True
        self._more.set()

    def on_reset(self, reason: str) -> None:
        self.closed = True
        if self._incoming:  # dropped unwritten: return its room in the connection window
            self.ack(sum(length for _, length in self._incoming))
            self._incoming.clear()
        self._task.cancel()
        if self._writer is not None:
            self._writer.close()

    def on_writable(self, writable: bool) -> None:
        if writable:
            self._writable.set()
        else:
            self._writable.clear()


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
        link = Link(
            websocket.send,
            client_side=False,
            on_request=lambda stream_id, _headers: TargetPipe(link, stream_id, host, port),
        )
        say(f"connected: forwarding to {registration.target}")
        try:
            async for message in websocket:
                if isinstance(message, str):
                    link.close("Sandbar sent text where the tunnel carries bytes")
                    break
                link.receive(message)
                if link.closed.done():
                    break
        except ConnectionClosed:
            pass
        reason = link.closed.result() if link.closed.done() else "the connection closed"
        link.close(reason)
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

"""The agent's end of a tunnel: dial Sandbar, then for every stream Sandbar opens, connect
to the local target (opencode on 127.0.0.1:4096, say) and pipe bytes both ways, at the
pace each side reads. Reconnects with capped exponential backoff and full jitter (and
no sooner than Sandbar's Retry-After); stops for good when Sandbar says the agent was
replaced, its sandbox deleted or its registrant no longer a developer, or refuses its
token. The token goes in the Authorization header, never in the URL. Its clocks (the
heartbeat, the longest wait between dials) are a ``Pace``, which ``sandbar agent
connect`` reads from the same ``SANDBAR_TUNNEL_*`` variables Sandbar does."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from asyncio import FIRST_COMPLETED
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.frames import DATA_OPCODES, Frame, Opcode
from websockets.protocol import Event, State

from interfaces.tunnel.link import DEFAULT_HEARTBEAT, Heartbeat, Link, Pipe
from interfaces.tunnel.server import GONE, REPLACED, REVOKED

BACKOFF_START = 0.5
BACKOFF_CAP = 30.0
RETRY_AFTER_CAP = 300.0  # seconds: the most a Retry-After is heeded
STABLE_AFTER = 10.0  # a connection that lived this long resets the backoff
CLOSE_WAIT = 2.0  # seconds to wait for Sandbar's close frame once the tunnel has ended


@dataclass(frozen=True)
class Pace:
    """The agent's clocks: its link's heartbeat (so that it finds alone a Sandbar that
    stopped answering) and the longest wait between two dials."""

    heartbeat: Heartbeat = DEFAULT_HEARTBEAT
    backoff_cap: float = BACKOFF_CAP

    def __post_init__(self) -> None:
        if self.backoff_cap <= 0:
            raise ValueError(
                f"the longest wait between dials ({self.backoff_cap:g} s) must be above 0"
            )


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


class TunnelClient(ClientConnection):
    """websockets' asyncio client (its handshake, TLS, proxies, closing handshake), with the
    tunnel's messages going straight between the socket and the link, as on Sandbar's
    side: each is given to the link as it is parsed, and the link's bytes (all it made
    over a turn of the event loop) are written at once, with no task, queue or lock
    between (awaiting each message cost more than the rest). While the socket's buffer
    is above its high-water mark, messages wait in an outbox instead (asyncio's buffer
    moves what it holds at every send: megabytes in it made a bulk transfer CPU-bound);
    what waits is bounded by the streams' windows."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.link: Link | None = None
        self._early: list[Frame] = []  # messages that came before the link
        self._outbox: deque[bytes] = deque()  # while the socket's buffer is full
        # Done once Sandbar's close frame has come, or the connection is lost.
        self.ended: asyncio.Future[None] = self.loop.create_future()

    def hold_reading(self, held: bool) -> None:
        """The link has frames for a later turn: read no more until then."""
        if held:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def attach(self, link: Link) -> None:
        self.link = link
        early, self._early = self._early, []
        for frame in early:
            self._deliver(link, frame)

    def write(self, data: bytes) -> None:
        if self.paused or self._outbox:
            self._outbox.append(data)
        else:
            self._send(data)

    def resume_writing(self) -> None:
        super().resume_writing()
        while self._outbox and not self.paused:
            self._send(self._outbox.popleft())

    def _send(self, data: bytes) -> None:
        if self.protocol.state is State.OPEN:
            self.protocol.send_binary(data)
            with contextlib.suppress(Exception):  # the connection is gone: connection_lost
                self.send_data()

    def process_event(self, event: Event) -> None:
        if self.response is None or not isinstance(event, Frame):
            super().process_event(event)  # (the handshake's response)
        elif event.opcode in DATA_OPCODES:
            if self.link is None:
                self._early.append(event)
            else:
                self._deliver(self.link, event)
        elif event.opcode is Opcode.CLOSE:
            self._end()
        else:
            super().process_event(event)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._outbox.clear()
        self._end()

    def _end(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)

    @staticmethod
    def _deliver(link: Link, frame: Frame) -> None:
        if frame.opcode is Opcode.TEXT:
            link.close("Sandbar sent text where the tunnel carries bytes")
        else:
            link.receive(bytes(frame.data))  # (bytes already: no copy)


@dataclass
class Registration:
    server: str
    sandbox_id: str
    tunnel_token: str
    target: str  # http://host:port of the local agent server


def tunnel_url(registration: Registration) -> str:
    base = registration.server.rstrip("/")
    scheme = "wss" if base.startswith("https://") else "ws"
    rest = base.split("://", 1)[-1]
    return f"{scheme}://{rest}/api/tunnel/{registration.sandbox_id}"


@dataclass
class Ended:
    """How one connection ended: why, how long it was connected (0: never), and how
    long Sandbar asked the agent to wait before the next dial."""

    reason: str
    lasted: float = 0.0
    wait_at_least: float = 0.0


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value or 0), 0.0), RETRY_AFTER_CAP)
    except ValueError:
        return 0.0


def _target(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    return (host or rest).strip("[]"), int(port) if port.isdigit() else 80


async def serve_once(
    registration: Registration,
    say: Callable[[str], None],
    heartbeat: Heartbeat = DEFAULT_HEARTBEAT,
) -> Ended:
    """One connection, until it ends. Raises Stop when retrying is futile."""
    host, port = _target(registration.target)
    try:
        websocket = await connect(
            tunnel_url(registration),
            additional_headers={"Authorization": f"Bearer {registration.tunnel_token}"},
            max_size=None,
            compression=None,
            ping_interval=None,  # the tunnel has its own heartbeat
            open_timeout=15,
            close_timeout=CLOSE_WAIT,
            create_connection=TunnelClient,
        )
    except InvalidStatus as e:
        if e.response.status_code in (401, 403, 404):
            raise Stop(
                "Sandbar refused this agent (the sandbox was deleted, its token is not"
                " valid, or whoever registered it is no longer a developer in its"
                " workspace): register it again"
            ) from None
        wait = _retry_after(e.response.headers.get("Retry-After"))
        return Ended(f"Sandbar answered {e.response.status_code}", 0.0, wait)
    except InvalidURI as e:
        raise Stop(f"the server address is not valid ({e})") from None
    except (OSError, TimeoutError) as e:
        return Ended(f"cannot reach Sandbar ({e.strerror or type(e).__name__})")
    except (InvalidHandshake, EOFError, ConnectionClosed) as e:
        # No answer, or not HTTP (a restarting front). (On uvloop a connection dropped
        # mid-handshake surfaces as ConnectionClosed.)
        return Ended(f"no valid answer from Sandbar ({e})")
    connected = time.monotonic()
    async with websocket:
        assert isinstance(websocket, TunnelClient)
        link = Link(
            websocket.write,
            client_side=False,
            on_request=lambda stream_id, _headers: TargetPipe(link, stream_id, host, port),
            on_backlog=websocket.hold_reading,
            heartbeat=heartbeat,
        )
        websocket.attach(link)
        say(f"connected: forwarding to {registration.target}")
        ends: set[asyncio.Future[Any]] = {websocket.ended, link.closed}
        await asyncio.wait(ends, return_when=FIRST_COMPLETED)
        if not websocket.ended.done():
            # Sandbar ends a tunnel with GOAWAY, then a close frame that says why (replaced,
            # deleted): wait a moment for it. (A heartbeat that died waits in vain.)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(websocket.ended), CLOSE_WAIT)
        reason = link.closed.result() if link.closed.done() else "the connection closed"
        link.close(reason)
        rcvd = websocket.protocol.close_rcvd  # (its close frame, if Sandbar sent one)
        if rcvd is not None and rcvd.code == REPLACED:
            raise Stop("another connection of this agent took over")
        if rcvd is not None and rcvd.code == GONE:
            raise Stop("the sandbox was deleted")
        if rcvd is not None and rcvd.code == REVOKED:
            raise Stop("whoever registered this agent is no longer a developer in its workspace")
        lasted = time.monotonic() - connected
        return Ended((rcvd.reason if rcvd is not None else "") or reason, lasted)


async def run(registration: Registration, say: Callable[[str], None], pace: Pace = Pace()) -> None:
    """Stay connected: reconnect with capped exponential backoff and full jitter."""
    start = min(BACKOFF_START, pace.backoff_cap)
    delay = start
    while True:
        ended = await serve_once(registration, say, pace.heartbeat)
        if ended.lasted > STABLE_AFTER:  # (a dial that only timed out is no stable connection)
            delay = start
        wait = max(random.uniform(0, delay), ended.wait_at_least)  # noqa: S311 - jitter
        say(f"disconnected ({ended.reason}); reconnecting in {wait:.1f} s")
        await asyncio.sleep(wait)
        delay = min(delay * 2, pace.backoff_cap)

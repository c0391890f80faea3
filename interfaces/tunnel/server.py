"""Sandbar's end of the tunnels: the WebSocket endpoint agents dial
(``/api/tunnel/{sandboxId}``, the tunnel token in ``Authorization: Bearer``: never in the
URL, which logs keep), the live tunnel of each local sandbox, and streams into it that look
to the subdomain proxy like TCP connections to the agent.

One tunnel per sandbox: a second connection replaces the first (closed with
``REPLACED``, so that agent stops instead of reconnecting). The sandbox goes ``running``
when its tunnel connects and ``offline`` once it has stayed away for ``Timing.grace``
seconds (a quick redial records nothing); deleting the sandbox closes its tunnel
(``GONE``), and so does its registrant losing the developer role (``REVOKED``).

The agent is treated as hostile: dials are limited (interfaces/tunnel/dials.py), the
link counts control frames (WebSocket PING and PONG too), the socket's reading pauses
while the link has frames waiting, and writes toward an agent that does not read pause the
streams; one that takes none of it for ``Timing.stall_after`` seconds, or lets
``MAX_BUFFERED`` bytes pile up, loses its tunnel.

``Tunnels`` is given what it uses (the local agents' use case, the change feed, the
timings and trusted proxies of the settings) by the composition root,
interfaces/bootstrap.py."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from interfaces.tunnel.dials import Dials
from interfaces.tunnel.link import DEAD_AFTER, DEFAULT_HEARTBEAT, MAX_MESSAGE, Heartbeat, Link, Pipe

if TYPE_CHECKING:  # (the agent imports this module's close codes: it needs neither)
    from application.local_agents import LocalAgents
    from infrastructure.changes import ChangeFeed

log = logging.getLogger(__name__)
# websockets says "connection open" and the like at INFO: the tunnel's own lines say more.
_WEBSOCKET_LOG = logging.getLogger(__name__ + ".websocket")
_WEBSOCKET_LOG.setLevel(logging.WARNING)

PATH_PREFIX = "/api/tunnel/"
# WebSocket close codes an agent acts on (docs/tunnel.md).
REPLACED = 4409  # another connection of the same agent took over: stop
GONE = 4404  # the sandbox was deleted: stop
REVOKED = 4403  # its registrant is no longer a developer in the workspace: stop
BROKEN = 1002  # the peer broke the protocol
POLICY = 1008  # the peer spent more than its budget (control frames, an unread buffer)
RESTARTING = 1012  # Sandbar is shutting down: dial again
CLOSE_WAIT = 2.0  # seconds the agent has to answer a close frame
GRACE = 3.0  # seconds a tunnel may be away before its sandbox is recorded offline
STALL_AFTER = DEAD_AFTER  # seconds the agent may take nothing of what it is sent
# (GRACE and STALL_AFTER are the defaults: see Timing.)
MAX_BUFFERED = 32 * 1024 * 1024  # bytes waiting for an agent that does not read
# Bytes of WebSocket given to the parser per turn of the loop: as many as hold about
# WS_FRAMES_PER_TURN frames (parsing one costs some 10 us: 64 KiB of empty frames held
# the loop 85 ms), between MIN_SLICE and READ_SLICE, grown again while frames are large.
READ_SLICE = 64 * 1024
MIN_SLICE = 1024
WS_FRAMES_PER_TURN = 256


class StreamTransport(Pipe):
    """A tunnel stream presented as an asyncio transport to an ``asyncio.Protocol`` (the
    proxy's upstream HTTP client), as if it were a TCP connection to the agent's target."""

    def __init__(self, link: Link, stream_id: int, protocol: asyncio.Protocol) -> None:
        super().__init__(link, stream_id)
        self._protocol = protocol
        self._paused = False
        self._held: deque[tuple[bytes, int]] = deque()
        self._ended = False
        self._lost = False

    # The transport side (called by the protocol).

    def pause_reading(self) -> None:
        self._paused = True  # nothing is acknowledged, so the agent's window closes

    def resume_reading(self) -> None:
        self._paused = False
        while self._held and not self._paused and not self._lost:
            data, length = self._held.popleft()
            self._protocol.data_received(data)
            self.ack(length)
        if self._ended and not self._held:
            self._lose(None)

    def close(self) -> None:
        if not self._lost:
            self.reset()
            self._lose(None)

    def is_closing(self) -> bool:
        return self._lost

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    # The pipe side (called by the link).

    def on_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        status = dict(headers).get(b":status")
        if status != b"200":
            self.reset()
            self._lose(ConnectionError("the agent could not reach its local server"))

    def on_data(self, data: bytes, flow_length: int) -> None:
        if self._lost:
            self.ack(flow_length)
        elif self._paused or self._held:
            self._held.append((data, flow_length))
        else:
            self._protocol.data_received(data)
            self.ack(flow_length)

    def on_end(self) -> None:
        self._ended = True
        if not self._held:
            self._lose(None)

    def on_reset(self, reason: str) -> None:
        self._lose(ConnectionError(reason))

    def on_writable(self, writable: bool) -> None:
        if self._lost:
            return
        if writable:
            self._protocol.resume_writing()
        else:
            self._protocol.pause_writing()

    def _lose(self, exc: Exception | None) -> None:
        # What was held for the reader is dropped with the stream: give its room in the
        # connection's window back, or cancelled streams would shrink it for good.
        if self._held:
            self.ack(sum(length for _, length in self._held))
            self._held.clear()
        if not self._lost:
            self._lost = True
            self.closed = True
            self._protocol.connection_lost(exc)


@dataclass(frozen=True)
class Timing:
    """The tunnels' clocks on Sandbar's side (``SANDBAR_TUNNEL_*`` in the settings): the
    links' heartbeat, how long an agent may take nothing it is sent (``stall_after``),
    and how long a tunnel may be away before its sandbox is recorded offline (``grace``)."""

    heartbeat: Heartbeat = DEFAULT_HEARTBEAT
    stall_after: float = STALL_AFTER
    grace: float = GRACE

    def __post_init__(self) -> None:
        if self.stall_after <= 0 or self.grace < 0:
            raise ValueError(
                f"a tunnel's stall limit ({self.stall_after:g} s) must be above 0 and its"
                f" offline grace ({self.grace:g} s) at least 0"
            )


class Tunnels:
    """The live tunnels of this process, one per sandbox, and the endpoint agents dial."""

    def __init__(
        self,
        agents: LocalAgents,
        changes: ChangeFeed,
        *,
        timing: Timing = Timing(),
        trusted_proxies: Iterable[str] = (),
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self._agents = agents
        self._ready = ready  # the views caught up (after an upgrade: not at once)
        self._changes = changes
        self.timing = timing
        self._links: dict[UUID, Link] = {}
        self._watching = False
        self._check_task: asyncio.Task[None] | None = None
        self._check_again = False
        self._dials = Dials()
        # One running/offline write at a time per sandbox (see _settle).
        self._status_locks: weakref.WeakValueDictionary[UUID, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._later: set[asyncio.Task[None]] = set()  # offline writes after their grace
        self._trusted = frozenset(trusted_proxies)

    def open_stream(self, sandbox_id: UUID, protocol: asyncio.Protocol) -> StreamTransport | None:
        """A new stream to the sandbox's agent, connected to ``protocol``; None when its
        agent is not connected to this process."""
        link = self._links.get(sandbox_id)
        if link is None or link.closed.done():
            return None
        pipe = link.open(lambda stream_id: StreamTransport(link, stream_id, protocol))
        assert isinstance(pipe, StreamTransport)
        protocol.connection_made(pipe)  # type: ignore[arg-type]
        return pipe

    async def serve(self, connection: TunnelConnection, request: Request, peer: str) -> None:
        """One agent's WebSocket, from its handshake to its end."""
        self._watch()
        path = request.path
        sandbox_id = _sandbox_id(path.split("?", 1)[0])
        client = self._client(peer, request.headers)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if sandbox_id is None:
            connection.refuse(404, "a tunnel is /api/tunnel/{sandbox id}")
            return
        if "?" in path or scheme.lower() != "bearer" or not token.strip():
            # (A query was the old place of the token: it is never read from there, as
            # URLs end up in logs; such an agent is told to update, and stops.)
            connection.refuse(401, "a tunnel's token goes in its Authorization header")
            return
        wait = self._dials.client_wait(client)
        if wait:
            self._dials.refused(client, sandbox_id)
            connection.refuse(429, "too many unknown tokens from here", wait)
            return
        wait = self._dials.sandbox_wait(sandbox_id)  # (no look at the database either)
        if wait:
            connection.refuse(429, "this agent dialled too often", wait)
            return
        if not self._ready():
            # A token read from half-built views would look unknown, and a 403 stops the
            # agent for good: it is told to dial again instead.
            connection.refuse(503, "Sandbar is rebuilding its views; dial again", 5)
            return
        agents = self._agents
        if not await asyncio.to_thread(agents.may_connect, sandbox_id, token.strip()):
            self._dials.wrong_token(client, sandbox_id)
            connection.refuse(403, "unknown sandbox or token")
            return
        wait = self._dials.sandbox_wait(sandbox_id)  # (a dial that came meanwhile)
        if wait:
            connection.refuse(429, "this agent dialled too often", wait)
            return
        self._dials.dialed(sandbox_id)
        link = connection.accept()
        if link is None:
            return
        previous = self._links.get(sandbox_id)
        self._links[sandbox_id] = link
        self._check_soon()  # (a deletion that came after may_connect read the sandbox)
        reason = "Sandbar failed"
        try:
            if previous is not None:
                previous.close("replaced by a newer connection of the same agent")
            await self._settle(sandbox_id)
            log.info("agent of sandbox %s connected", sandbox_id)
            reason = await link.closed
        finally:  # (also when recording it failed: the agent dials again, anew)
            if self._links.get(sandbox_id) is link:
                del self._links[sandbox_id]
                log.info("agent of sandbox %s disconnected", sandbox_id)
                if "shutting down" in reason:
                    await self._settle(sandbox_id)  # (no later turn comes)
                else:
                    self._settle_later(sandbox_id)
        log.info("tunnel of sandbox %s ended: %s", sandbox_id, reason)
        connection.close(_close_code(reason), reason)

    def _client(self, peer: str, headers: Headers) -> str:
        """The agent's address: the peer's, or what a trusted proxy says it forwarded."""
        if peer in self._trusted:
            forwarded = headers.get("x-forwarded-for", "").rsplit(",", 1)[-1].strip()
            if forwarded:
                return forwarded
        return peer

    async def _settle(self, sandbox_id: UUID) -> None:
        """Record the sandbox ``running`` or ``offline`` as its tunnel is when this runs:
        one such write at a time per sandbox, so the last one written says the last state
        (a quick redial, or a replacement, while an earlier write was on its way, left it
        wrong)."""
        lock = self._status_locks.get(sandbox_id)
        if lock is None:
            lock = self._status_locks[sandbox_id] = asyncio.Lock()
        async with lock:
            link = self._links.get(sandbox_id)
            agents = self._agents
            live = link is not None and not link.closed.done()
            await asyncio.to_thread(agents.connected if live else agents.disconnected, sandbox_id)

    def _settle_later(self, sandbox_id: UUID) -> None:
        """Record the sandbox offline if its agent is still away after the grace: an
        agent that dials again at once costs no event."""

        async def later() -> None:
            await asyncio.sleep(self.timing.grace)
            if sandbox_id not in self._links:
                await self._settle(sandbox_id)

        task = asyncio.get_running_loop().create_task(later())
        self._later.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._later.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("recording a sandbox offline failed", exc_info=task.exception())

    def _watch(self) -> None:
        """Close the tunnel of a sandbox that is deleted, or whose registrant lost the
        developer role (checked when anything changes)."""
        if self._watching:
            return
        self._watching = True
        loop = asyncio.get_running_loop()

        def changed() -> None:  # (from the feed's thread; its last call may come after
            if not loop.is_closed():  # the server stopped, as it stops)
                loop.call_soon_threadsafe(self._check_soon)

        self._changes.subscribe(changed)
        self._changes.start()

    def _check_soon(self) -> None:
        if not self._links:
            return
        if self._check_task is not None and not self._check_task.done():
            self._check_again = True  # (a change after the running check read a route)
            return
        self._check_task = asyncio.get_running_loop().create_task(self._check())

    async def _check(self) -> None:
        unserved = self._agents.unserved
        while True:
            self._check_again = False
            for sandbox_id, link in list(self._links.items()):
                reason = await asyncio.to_thread(unserved, sandbox_id)
                if reason is not None:
                    link.close(reason)
            if not self._check_again:
                return


def _close_code(reason: str) -> int:
    """The WebSocket close code that tells the agent what to do about ``reason``."""
    if "replaced" in reason:
        return REPLACED
    if "deleted" in reason:
        return GONE
    if "registrant" in reason:
        return REVOKED
    if "too many" in reason or "does not read" in reason:
        return POLICY
    if "protocol" in reason:
        return BROKEN
    if "shutting down" in reason:
        return RESTARTING
    return 1000


class _AgentSide(ServerProtocol):
    """websockets' server protocol, with the agent's PING and PONG frames counted in its
    link's budget of control frames: past it none is answered (and the tunnel ends), so
    PINGs sent by an agent that never reads cannot pile PONGs up."""

    link: Link | None = None

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode in (Opcode.PING, Opcode.PONG) and (
            self.link is None or not self.link.calm(f"WebSocket {frame.opcode.name}")
        ):
            return
        super().recv_frame(frame)


class TunnelConnection(asyncio.Protocol):
    """An agent's connection, answered at the protocol level (the subdomain proxy's
    front hands it over with the bytes of its upgrade request) with websockets' Sans-I/O
    server: each message goes straight into the link as it is parsed, and the link's bytes
    straight to the socket, with no task or queue between. Reading pauses while the link
    has frames waiting for a later turn, while the token is checked, and between slices
    of a large read."""

    def __init__(self, tunnels: Tunnels, connections: set[Any]) -> None:
        self._tunnels = tunnels
        self._connections = connections  # uvicorn's, for its graceful shutdown
        # Agents cut their messages at MAX_MESSAGE; a far larger one is refused (1009).
        self._ws = _AgentSide(max_size=4 * MAX_MESSAGE, logger=_WEBSOCKET_LOG)
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._request: Request | None = None
        self._link: Link | None = None
        self._serving: asyncio.Task[None] | None = None
        self._closer: asyncio.TimerHandle | None = None
        self._stall: asyncio.TimerHandle | None = None
        self._stall_size = 0  # bytes waiting for the agent when the stall timer started
        self._holds: set[str] = set()  # why reading is paused
        self._unread = memoryview(b"")  # the rest of a read, for the next turn
        self._slice = 8 * 1024  # bytes read per turn (see READ_SLICE)
        self._slice_scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = ours = cast(asyncio.Transport, transport)  # (uvloop's: no subclass)
        self._connections.add(self)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) else ""
        # Pause the streams once a message's worth waits for the agent to read.
        ours.set_write_buffer_limits(high=MAX_MESSAGE, low=MAX_MESSAGE // 4)

    def data_received(self, data: bytes) -> None:
        if self._unread:
            self._unread = memoryview(bytes(self._unread) + data)  # (came as reading paused)
            return
        self._read(memoryview(data))

    def _read(self, data: memoryview) -> None:
        if len(data) > self._slice:  # (views: the slices copy nothing)
            data, self._unread = data[: self._slice], data[self._slice :]
            self._hold("slice", True)
            if not self._slice_scheduled:
                self._slice_scheduled = True
                asyncio.get_running_loop().call_soon(self._next_slice)
        self._ws.receive_data(data)  # type: ignore[arg-type]  # (a view will do)
        events = self._ws.events_received()
        if len(events) > WS_FRAMES_PER_TURN:
            self._slice = max(MIN_SLICE, len(data) * WS_FRAMES_PER_TURN // len(events))
        elif self._slice < READ_SLICE:
            self._slice = min(READ_SLICE, 2 * self._slice)
        for event in events:
            if isinstance(event, Request):
                if self._request is None:
                    self._request = event
                    self._hold("handshake", True)
                    self._serving = asyncio.get_running_loop().create_task(
                        self._tunnels.serve(self, event, self._peer)
                    )
                    self._serving.add_done_callback(self._served)
            elif isinstance(event, Frame) and self._link is not None:
                if event.opcode in (Opcode.BINARY, Opcode.CONT):
                    if event.opcode is Opcode.CONT and not self._link.calm("WebSocket fragments"):
                        break
                    self._link.receive(bytes(event.data))  # (bytes already: no copy)
                elif event.opcode is Opcode.TEXT:
                    self._link.close("the agent sent text where the tunnel carries bytes")
                elif event.opcode is Opcode.CLOSE:
                    self._link.close("the agent hung up")
        if self._link is not None and self._ws.state is not State.OPEN:
            # The WebSocket failed (a message over the size limit, a bad frame).
            sent = self._ws.close_sent
            why = f"{sent.code} {sent.reason}".strip() if sent else "closed"
            self._link.close(f"the agent broke the tunnel's protocol (WebSocket {why})")
        self._flush()

    def _next_slice(self) -> None:
        self._slice_scheduled = False
        data, self._unread = self._unread, memoryview(b"")
        if not data:
            self._hold("slice", False)
            return
        self._read(data)
        if not self._unread:
            self._hold("slice", False)

    def eof_received(self) -> None:
        self._ws.receive_eof()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._transport = None
        self._unread = memoryview(b"")
        if self._link is not None:
            self._link.close("the agent hung up")
        elif self._serving is not None:
            self._serving.cancel()  # still checking its token: nobody to answer
        for timer in (self._closer, self._stall):
            if timer is not None:
                timer.cancel()

    def pause_writing(self) -> None:
        """The agent is not reading what it is sent: hold the streams; if it stays so,
        the tunnel ends."""
        if self._link is not None:
            self._link.pause_output(True)
        if self._stall is None and self._transport is not None:
            self._stall_size = self._transport.get_write_buffer_size()
            stall_after = self._tunnels.timing.stall_after
            self._stall = asyncio.get_running_loop().call_later(stall_after, self._stalled)

    def resume_writing(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self._link is not None:
            self._link.pause_output(False)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: the agent is told to dial again (1012)."""
        if self._link is not None:
            self._link.close("Sandbar is shutting down")
        elif self._transport is not None:
            self._transport.close()

    # Used by Tunnels.serve.

    def accept(self) -> Link | None:
        """Complete the handshake; the tunnel's link (None if the request was no valid
        WebSocket handshake: it was answered with its error)."""
        assert self._request is not None
        response = self._ws.accept(self._request)
        self._ws.send_response(response)
        self._flush()
        if response.status_code != 101 or self._transport is None:
            self._close_soon(0)
            return None
        self._link = Link(
            self._write,
            client_side=True,
            on_backlog=self._backlog,
            heartbeat=self._tunnels.timing.heartbeat,
        )
        self._ws.link = self._link
        self._hold("handshake", False)
        return self._link

    def refuse(self, status: int, text: str, retry_after: float = 0) -> None:
        response: Response = self._ws.reject(status, text)
        if retry_after:
            response.headers["Retry-After"] = str(int(retry_after) + 1)
        self._ws.send_response(response)
        self._flush()
        self._close_soon(0)

    def close(self, code: int, reason: str) -> None:
        """Send the close frame that tells the agent why; the socket closes once it
        answers (or in CLOSE_WAIT seconds)."""
        if self._ws.state is State.OPEN:
            self._ws.send_close(code, reason[:120])
            self._flush()
        self._close_soon(CLOSE_WAIT)

    # Internals.

    def _backlog(self, waiting: bool) -> None:
        self._hold("link", waiting)

    def _hold(self, why: str, held: bool) -> None:
        """Pause reading while any reason holds it."""
        before = bool(self._holds)
        if held:
            self._holds.add(why)
        else:
            self._holds.discard(why)
        transport = self._transport
        if transport is None or before == bool(self._holds) or transport.is_closing():
            return
        if self._holds:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _stalled(self) -> None:
        self._stall = None
        transport = self._transport
        if transport is not None and transport.get_write_buffer_size() < self._stall_size:
            self.pause_writing()  # a slow reader, but a reader: it has taken some
            return
        if self._link is not None:
            stall_after = self._tunnels.timing.stall_after
            self._link.close(f"the agent does not read what it is sent ({stall_after:g} s)")
        if self._transport is not None:
            self._transport.abort()

    def _served(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("a tunnel failed", exc_info=task.exception())
            if self._link is not None:
                self._link.close("Sandbar failed")
            if self._transport is not None:
                self._transport.abort()

    def _write(self, data: bytes) -> None:
        """The link's bytes: all it made over a turn of the event loop, one message (up
        to MAX_MESSAGE: the link gathers them; a message and a syscall per frame would
        cost more than the rest)."""
        if self._ws.state is State.OPEN:
            self._ws.send_binary(data)
            self._flush()

    def _flush(self) -> None:
        transport = self._transport
        for data in self._ws.data_to_send():
            if transport is None or transport.is_closing():
                continue
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()
        if transport is not None and transport.get_write_buffer_size() > MAX_BUFFERED:
            if self._link is not None:
                self._link.close("the agent does not read what it is sent")
            transport.abort()
        if self._ws.close_expected():
            self._close_soon(CLOSE_WAIT)

    def _close_soon(self, delay: float) -> None:
        if self._transport is not None and self._closer is None:
            transport = self._transport
            self._closer = asyncio.get_running_loop().call_later(delay, transport.close)


def _sandbox_id(path: str) -> UUID | None:
    try:
        return UUID(path[len(PATH_PREFIX) :].strip("/"))
    except ValueError:
        return None

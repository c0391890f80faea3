"""Sandbar's end of the tunnels: the WebSocket endpoint agents dial
(``/api/tunnel/{sandboxId}?token=...``), the live tunnel of each local sandbox, and
streams into it that look to the subdomain proxy like TCP connections to the agent.

One tunnel per sandbox: a second connection replaces the first (closed with
``REPLACED``, so that agent stops instead of reconnecting). The sandbox goes ``running``
when its tunnel connects and ``offline`` when it ends (events, by ``system``); deleting the
sandbox closes its tunnel (``GONE``)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from application.opening import GONE as GONE_STATUSES
from interfaces.bootstrap import Sandbar
from interfaces.tunnel.link import MAX_MESSAGE, Link, Pipe

log = logging.getLogger(__name__)
# websockets says "connection open" and the like at INFO: the tunnel's own lines say more.
_WEBSOCKET_LOG = logging.getLogger(__name__ + ".websocket")
_WEBSOCKET_LOG.setLevel(logging.WARNING)

PATH_PREFIX = "/api/tunnel/"
# WebSocket close codes an agent acts on (docs/tunnel.md).
REPLACED = 4409  # another connection of the same agent took over: stop
GONE = 4404  # the sandbox was deleted: stop
BROKEN = 1002  # the peer broke the protocol
RESTARTING = 1012  # Sandbar is shutting down: dial again
CLOSE_WAIT = 2.0  # seconds the agent has to answer a close frame


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


class Tunnels:
    def __init__(self, sandbar: Sandbar) -> None:
        self._sb = sandbar
        self._links: dict[UUID, Link] = {}
        self._watching = False
        self._check_task: asyncio.Task[None] | None = None
        self._check_again = False
        self._status_lock = asyncio.Lock()

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

    async def serve(self, connection: TunnelConnection, path: str) -> None:
        """One agent's WebSocket, from its handshake (``path`` is the request's, with
        the query) to its end."""
        self._watch()
        sandbox_id = _sandbox_id(path.split("?", 1)[0])
        token = (parse_qs(urlsplit(path).query).get("token") or [""])[0]
        agents = self._sb.local_agents
        if sandbox_id is None or not token:
            connection.refuse(403, "a tunnel needs a sandbox id and its token")
            return
        if not await asyncio.to_thread(agents.may_connect, sandbox_id, token):
            log.warning("refused a tunnel for sandbox %s: unknown sandbox or token", sandbox_id)
            connection.refuse(403, "unknown sandbox or token")
            return
        link = connection.accept()
        if link is None:
            return
        previous = self._links.get(sandbox_id)
        self._links[sandbox_id] = link
        self._check_soon()  # (a deletion that came after may_connect read the sandbox)
        try:
            if previous is not None:
                previous.close("replaced by a newer connection of the same agent")
            await self._settle(sandbox_id)
            log.info("agent of sandbox %s connected", sandbox_id)
            reason = await link.closed
        finally:  # (also when recording it failed: the agent dials again, anew)
            if self._links.get(sandbox_id) is link:
                del self._links[sandbox_id]
                await self._settle(sandbox_id)
                log.info("agent of sandbox %s disconnected", sandbox_id)
        log.info("tunnel of sandbox %s ended: %s", sandbox_id, reason)
        code = REPLACED if "replaced" in reason else GONE if "deleted" in reason else 1000
        if "protocol" in reason:
            code = BROKEN
        elif "shutting down" in reason:
            code = RESTARTING
        connection.close(code, reason)

    async def _settle(self, sandbox_id: UUID) -> None:
        """Record the sandbox ``running`` or ``offline`` as its tunnel is when this runs:
        one such write at a time, so the last one written says the last state (a quick
        redial, or a replacement, while an earlier write was on its way, left it wrong)."""
        async with self._status_lock:
            link = self._links.get(sandbox_id)
            agents = self._sb.local_agents
            live = link is not None and not link.closed.done()
            await asyncio.to_thread(agents.connected if live else agents.disconnected, sandbox_id)

    def _watch(self) -> None:
        """Close the tunnel of a sandbox that is deleted (checked when anything changes)."""
        if self._watching:
            return
        self._watching = True
        loop = asyncio.get_running_loop()
        self._sb.changes.subscribe(lambda: loop.call_soon_threadsafe(self._check_soon))
        self._sb.changes.start()

    def _check_soon(self) -> None:
        if not self._links:
            return
        if self._check_task is not None and not self._check_task.done():
            self._check_again = True  # (a change after the running check read a route)
            return
        self._check_task = asyncio.get_running_loop().create_task(self._check())

    async def _check(self) -> None:
        while True:
            self._check_again = False
            for sandbox_id, link in list(self._links.items()):
                route = await asyncio.to_thread(self._sb.reads.route, sandbox_id)
                if route is None or route["status"] in GONE_STATUSES:
                    link.close("the sandbox was deleted")
            if not self._check_again:
                return


class TunnelConnection(asyncio.Protocol):
    """An agent's connection, answered at the protocol level (the subdomain proxy's
    front hands it over with the bytes of its upgrade request) with websockets' Sans-I/O
    server: each message goes straight into the link as it is parsed, and the link's bytes
    straight to the socket, with no task or queue between."""

    def __init__(self, tunnels: Tunnels, connections: set[Any]) -> None:
        self._tunnels = tunnels
        self._connections = connections  # uvicorn's, for its graceful shutdown
        # Agents cut their messages at MAX_MESSAGE; a far larger one is refused (1009).
        self._ws = ServerProtocol(max_size=4 * MAX_MESSAGE, logger=_WEBSOCKET_LOG)
        self._transport: asyncio.Transport | None = None
        self._request: Request | None = None
        self._link: Link | None = None
        self._serving: asyncio.Task[None] | None = None
        self._closer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # (uvloop's is no subclass)
        self._connections.add(self)

    def data_received(self, data: bytes) -> None:
        self._ws.receive_data(data)
        for event in self._ws.events_received():
            if isinstance(event, Request):
                self._request = event
                self._serving = asyncio.get_running_loop().create_task(
                    self._tunnels.serve(self, event.path)
                )
                self._serving.add_done_callback(self._served)
            elif isinstance(event, Frame) and self._link is not None:
                if event.opcode in (Opcode.BINARY, Opcode.CONT):
                    self._link.receive(event.data)
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

    def eof_received(self) -> None:
        self._ws.receive_eof()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._transport = None
        if self._link is not None:
            self._link.close("the agent hung up")
        elif self._serving is not None:
            self._serving.cancel()  # still checking its token: nobody to answer
        if self._closer is not None:
            self._closer.cancel()

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
        self._link = Link(self._write, client_side=True)
        return self._link

    def refuse(self, status: int, text: str) -> None:
        self._ws.send_response(self._ws.reject(status, text))
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

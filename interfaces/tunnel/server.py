"""Sandbar's end of the tunnels: the WebSocket endpoint agents dial
(``/api/tunnel/{sandboxId}?token=...``), the live tunnel of each local sandbox, and
streams into it that look to the subdomain proxy like TCP connections to the agent.

One tunnel per sandbox: a second connection replaces the first (closed with
``REPLACED``, so that agent stops instead of reconnecting). The sandbox goes ``running``
when its tunnel connects and ``offline`` when it ends (events, by ``system``); deleting the
sandbox closes its tunnel (``GONE``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any
from urllib.parse import parse_qs
from uuid import UUID

from starlette.types import Receive, Scope, Send

from application.opening import GONE as GONE_STATUSES
from interfaces.bootstrap import Sandbar
from interfaces.tunnel.link import Link, Pipe, Sender

log = logging.getLogger(__name__)

PATH_PREFIX = "/api/tunnel/"
# WebSocket close codes an agent acts on (docs/tunnel.md).
REPLACED = 4409  # another connection of the same agent took over: stop
GONE = 4404  # the sandbox was deleted: stop
BROKEN = 1002  # the peer broke the protocol


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

    def connected(self, sandbox_id: UUID) -> bool:
        link = self._links.get(sandbox_id)
        return link is not None and not link.closed.done()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The WebSocket endpoint an agent dials."""
        if scope["type"] != "websocket":
            return
        await receive()  # websocket.connect
        self._watch()
        sandbox_id = _sandbox_id(scope["path"])
        token = (parse_qs(scope["query_string"].decode("latin-1")).get("token") or [""])[0]
        agents = self._sb.local_agents
        if sandbox_id is None or not token:
            await send({"type": "websocket.close", "code": 1008})
            return
        if not await asyncio.to_thread(agents.may_connect, sandbox_id, token):
            log.warning("refused a tunnel for sandbox %s: unknown sandbox or token", sandbox_id)
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})

        async def send_bytes(data: bytes) -> None:
            await send({"type": "websocket.send", "bytes": data})

        sender = Sender(send_bytes)
        link = Link(sender.write, client_side=True)
        previous = self._links.get(sandbox_id)
        self._links[sandbox_id] = link
        if previous is not None:
            previous.close("replaced by a newer connection of the same agent")
        else:
            await asyncio.to_thread(agents.connected, sandbox_id)
        log.info("agent of sandbox %s connected", sandbox_id)
        reason = await self._pump(receive, link, sender)
        link.close(reason)
        sender.stop()
        if self._links.get(sandbox_id) is link:
            del self._links[sandbox_id]
            await asyncio.to_thread(agents.disconnected, sandbox_id)
            log.info("agent of sandbox %s disconnected: %s", sandbox_id, reason)
        code = REPLACED if "replaced" in reason else GONE if "deleted" in reason else 1000
        if "protocol" in reason:
            code = BROKEN
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": code, "reason": reason[:120]})

    async def _pump(self, receive: Receive, link: Link, sender: Sender) -> str:
        """Feed the link until the WebSocket or the link ends; why it ended."""

        async def feed() -> str:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return "the agent hung up"
                data = message.get("bytes")
                if data is None:
                    return "the agent sent text where the tunnel carries bytes"
                link.receive(data)

        feeding = asyncio.get_running_loop().create_task(feed())
        await asyncio.wait(
            {feeding, link.closed, sender.failed}, return_when=asyncio.FIRST_COMPLETED
        )
        if sender.failed.done():
            link.close(sender.failed.result())
        if link.closed.done():
            feeding.cancel()
            return link.closed.result()
        return feeding.result()

    def _watch(self) -> None:
        """Close the tunnel of a sandbox that is deleted (checked when anything changes)."""
        if self._watching:
            return
        self._watching = True
        loop = asyncio.get_running_loop()
        self._sb.changes.subscribe(lambda: loop.call_soon_threadsafe(self._check_soon))
        self._sb.changes.start()
        self._check_task: asyncio.Task[None] | None = None

    def _check_soon(self) -> None:
        if self._links and (self._check_task is None or self._check_task.done()):
            self._check_task = asyncio.get_running_loop().create_task(self._check())

    async def _check(self) -> None:
        for sandbox_id, link in list(self._links.items()):
            route = await asyncio.to_thread(self._sb.reads.route, sandbox_id)
            if route is None or route["status"] in GONE_STATUSES:
                link.close("the sandbox was deleted")

    def close_all(self) -> None:
        for link in list(self._links.values()):
            link.close("Sandbar is shutting down")


def _sandbox_id(path: str) -> UUID | None:
    try:
        return UUID(path[len(PATH_PREFIX) :].strip("/"))
    except ValueError:
        return None

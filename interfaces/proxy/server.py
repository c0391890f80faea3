"""What every client connection of one server process shares: the gate, the pool of
agent connections, the tunnels, the REST API, the table of connections with its limits,
and the clocks (a ticker once a second rather than a timer per request)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol
from uuid import UUID

from interfaces.bootstrap import Sandbar
from interfaces.proxy.api_exchange import Application
from interfaces.proxy.connections import ConnectionTable
from interfaces.proxy.gate import Gate, Request
from interfaces.proxy.upstream import Pool
from interfaces.tunnel.server import Tunnels

if TYPE_CHECKING:
    from interfaces.proxy.exchange import Exchange
    from interfaces.proxy.front import FrontProtocol

log = logging.getLogger(__name__)

KEEPER_EVERY = 5.0  # seconds between activity flushes


class HotPath(Protocol):
    """A path of the API host answered here rather than by the REST API: the Anthropic
    proxy's, whose clients are sandboxes calling it many times a second."""

    prefix: bytes

    def exchange(self, front: FrontProtocol, request: Request, keep_alive: bool) -> Exchange: ...


class SandboxProxy:
    """What all proxy connections of a process share: the gate, the agent connection
    pool, the open streams (which keep their sandboxes from going idle), and the table of
    client connections with its limits."""

    def __init__(self, sandbar: Sandbar) -> None:
        self.sandbar = sandbar
        self.is_sandbox_host = sandbar.addresses.is_sandbox_host
        self.gate: Gate = sandbar.gate()
        self.pool = Pool()
        self.tunnels: Tunnels = sandbar.tunnels()
        self.hot_path: HotPath | None = None  # set by whoever serves it
        self.streams: Counter[UUID] = Counter()
        settings = sandbar.settings
        self.proto = settings.public_scheme.encode()
        self.timeout = settings.upstream_timeout
        self.trusted = frozenset(
            a.strip().encode() for a in settings.trusted_proxies.split(",") if a.strip()
        )
        self.connections = ConnectionTable(
            settings.max_connections, settings.max_connections_per_client, self.trusted
        )
        self.header_timeout = settings.header_timeout
        self.body_timeout = settings.body_timeout
        self.max_pipelined = max(1, settings.max_pipelined)
        self.application: Application | None = None  # the REST API, once a server runs
        self._keeper: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        # Deadlines checked once a second, rather than a timer per request.
        self.waiting: dict[Exchange, float] = {}  # exchange -> when its answer is late

    def protocol(self) -> Callable[..., asyncio.Protocol]:
        """The protocol factory to give uvicorn as its ``http`` setting."""
        from interfaces.proxy.front import FrontProtocol  # (which needs this module)

        return functools.partial(FrontProtocol, proxy=self)

    def started(self) -> None:
        if self._keeper is None:
            self.sandbar.changes.start()
            loop = asyncio.get_running_loop()
            self._keeper = loop.create_task(self._keep())
            self._ticker = loop.create_task(self._tick())

    async def _tick(self) -> None:
        """Once a second: answer requests whose agent is late, close connections that
        idle or stall past their limits."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for exchange, deadline in list(self.waiting.items()):
                if now > deadline:
                    exchange.timed_out()
            for connection in self.connections.all():
                connection.tick(now)

    async def _keep(self) -> None:
        """Open streams count as activity; notes reach the table every few seconds."""
        activity = self.sandbar.activity
        while True:
            await asyncio.sleep(KEEPER_EVERY)
            for sandbox_id in list(self.streams):
                activity.note(sandbox_id)
            try:
                await asyncio.to_thread(activity.flush)
            except Exception:
                log.warning("could not record sandbox activity", exc_info=True)

    def stream_opened(self, sandbox_id: UUID) -> None:
        self.streams[sandbox_id] += 1

    def stream_closed(self, sandbox_id: UUID) -> None:
        self.streams[sandbox_id] -= 1
        if self.streams[sandbox_id] <= 0:
            del self.streams[sandbox_id]

"""How ``sandbar serve`` stops, on SIGTERM (systemd, Docker, Kubernetes) as on SIGINT:
it drains, then exits 0.

1. It stops accepting, and ends the API's live event streams (they never end by
   themselves).
2. The browsers' and clients' requests in flight finish, for up to the grace period
   (``SANDBAR_SHUTDOWN_GRACE``); past it, what is left is cut. The agents' tunnels stay up
   meanwhile: some of those requests go through them.
3. The tunnels close with 1012 (dial again), and have CLOSE_WAIT seconds to answer.
4. The lifespan's shutdown writes the Anthropic proxy's queued usage.

uvicorn's server does the rest as usual; unlike uvicorn's, it does not raise the signal
again once stopped (which made a SIGTERMed server die of it, exit 143, before its
embedded PostgreSQL was stopped). A second Ctrl-C skips the waits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from interfaces.tunnel.server import CLOSE_WAIT, TunnelConnection

log = logging.getLogger("sandbar")

TICK = 0.05  # seconds between two looks at what is left


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, end_streams: Callable[[], None], grace: float):
        super().__init__(config)
        self._end_streams = end_streams
        self._grace = grace

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's handlers while serving, and no signal raised again after."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        before = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets: Any = None) -> None:
        log.info("stopping: finishing the requests in flight (at most %g s)", self._grace)
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        self._end_streams()
        connections = self.server_state.connections
        tunnels = [c for c in connections if isinstance(c, TunnelConnection)]
        others = [c for c in connections if not isinstance(c, TunnelConnection)]
        for connection in others:
            connection.shutdown()  # (closes once its response is sent)
        tasks = self.server_state.tasks

        def busy() -> list[Any]:
            return [c for c in others if c in connections]

        if not await self._until(lambda: not (busy() or tasks), self._grace):
            left = busy()
            log.warning(
                "cutting %d connection(s) and %d task(s) still busy after %g s",
                len(left),
                len(tasks),
                self._grace,
            )
            for connection in left:
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.abort()
            for task in tasks:
                task.cancel()
        tunnels += [c for c in connections if isinstance(c, TunnelConnection)]
        for tunnel in set(tunnels):
            tunnel.shutdown()  # 1012: Sandbar is shutting down, dial again
        await self._until(lambda: not (set(tunnels) & connections), CLOSE_WAIT + 1)
        for server in self.servers:
            await server.wait_closed()
        if not self.force_exit:
            await self.lifespan.shutdown()  # (writes the queued usage)

    async def _until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``done()``, for at most ``timeout`` seconds; whether it is."""
        deadline = time.monotonic() + timeout
        while not done():
            if self.force_exit or time.monotonic() >= deadline:
                return done()
            await asyncio.sleep(TICK)
        return True

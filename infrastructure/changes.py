"""A generation number that moves whenever anything a proxy may have cached could have
changed: a save to the event log (any process) or a revoked session.

Saves in this process move it before they return, so their effect shows on the very next
request; other processes' saves arrive by PostgreSQL NOTIFY, a millisecond or so later.
While the LISTEN connection is down the feed reports itself unreliable, and callers must
not cache at all."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)


class ChangeFeed:
    def __init__(self, conninfo: str, channels: Iterable[str]) -> None:
        self._conninfo = conninfo
        self._channels = tuple(channels)
        self.generation = 0
        self.reliable = False
        self._listeners: list[Callable[[], object]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def bump(self) -> None:
        self.generation += 1
        for listener in self._listeners:
            listener()

    def subscribe(self, listener: Callable[[], object]) -> None:
        """Call ``listener`` (from any thread) after each change."""
        self._listeners.append(listener)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sandbar-changes", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop listening (within about a second)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10) as conn:
                    for channel in self._channels:
                        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self.reliable = True
                    self.bump()  # whatever happened while we were not listening
                    delay = 0.1
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self.bump()
                        conn.execute("SELECT 1")  # notice a dead connection
            except Exception as e:
                if self._stop.is_set():
                    break
                log.warning("change feed lost its connection (%s); retrying", e)
            finally:
                self.reliable = False
                self.bump()
            self._stop.wait(delay)
            delay = min(delay * 2, 5.0)

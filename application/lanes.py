"""Per-key serial work on a thread pool, with a low-water mark of finished positions.

The container worker follows the log in order but must not wait for one sandbox's slow
start before touching another: each sandbox gets a lane (one job at a time, later events
for it coalesced into one more run), lanes run in parallel, and the tracking position
only moves past an event once the run that covers it has finished."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("sandbar.worker")


class Lanes:
    def __init__(
        self,
        work: Callable[[Hashable], None],
        on_watermark: Callable[[int], None],
        workers: int = 8,
    ) -> None:
        self._work = work
        self._on_watermark = on_watermark
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbar-lane")
        self._lock = threading.Lock()
        self._queued: dict[Hashable, list[int]] = {}  # key -> positions awaiting a run
        self._active: set[Hashable] = set()
        self._outstanding: set[int] = set()
        self._highest = 0
        self._reported = 0

    def submit(self, key: Hashable, position: int = 0) -> None:
        """Run ``work(key)`` soon; ``position`` (if any) is done once that run finishes."""
        with self._lock:
            if position:
                self._outstanding.add(position)
                self._highest = max(self._highest, position)
            self._queued.setdefault(key, []).append(position)
            if key in self._active:
                return
            self._active.add(key)
        self._pool.submit(self._run, key)

    def _run(self, key: Hashable) -> None:
        while True:
            with self._lock:
                covered = self._queued.pop(key, [])
                if not covered:
                    self._active.discard(key)
                    break
            try:
                self._work(key)
            except Exception:
                log.exception("work for %s failed; it will be retried by reconciliation", key)
            with self._lock:
                self._outstanding.difference_update(covered)
        self._report()

    def _report(self) -> None:
        with self._lock:
            mark = min(self._outstanding) - 1 if self._outstanding else self._highest
            if mark <= self._reported:
                return
            self._reported = mark
        try:
            self._on_watermark(mark)
        except Exception:
            log.exception("could not record the worker's position %s", mark)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

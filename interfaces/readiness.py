"""Whether the server's views are caught up with the log, and the background catch-up
that makes them so after an upgrade changed their shape (projections/view.py).

``sandbar serve`` answers at once: ``/healthz`` says it is alive, ``/readyz`` says
whether the views are whole, and the REST API answers 503 (``not_ready``, with
``Retry-After``) until they are. What needs the views to be whole (marking local agents
offline, the container worker) runs once they are."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from projections.view import Decode, ReadModelView

log = logging.getLogger("sandbar.views")

RETRY_AFTER = 5  # seconds a client is told to wait while the views are rebuilt
PAUSE_ON_ERROR = 2.0  # seconds between two attempts of a catch-up that failed


class Readiness:
    def __init__(self, view: ReadModelView, decode: Decode) -> None:
        self._view = view
        self._decode = decode
        self.position = 0  # how far the catch-up is (notification ids of the log)
        self.head = 0
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        return self._view.ready

    def describe(self) -> str:
        """What a client is told while the views are not ready."""
        if self.head:
            return (
                "the views are being rebuilt after an upgrade"
                f" ({self.position:,} of {self.head:,} events); try again shortly"
            )
        return "the views are being rebuilt after an upgrade; try again shortly"

    def run(self, stop: threading.Event) -> bool:
        """Catch the views up here and now, retrying on errors (the database away, a lock
        timed out), until they are ready or ``stop`` is set. Whether they are ready."""
        started = time.perf_counter()
        while not self._view.ready and not stop.is_set():
            try:
                self._view.catch_up(self._decode, progress=self._note, stop=stop)
            except Exception as e:  # (logged, and tried again)
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                log.warning("rebuilding the views: %s; trying again", first)
                stop.wait(PAUSE_ON_ERROR)
        if self._view.ready:
            log.info("the views are caught up (%.1f s)", time.perf_counter() - started)
        return self._view.ready

    def start(self, stop: threading.Event, then: Callable[[], None]) -> None:
        """Run ``then`` once the views are ready: at once if they are, else after a
        catch-up in a thread of its own."""
        if self._view.ready:
            then()
            return
        standing = self._view.standing()
        self._note(standing.position, standing.head)
        log.info("the views are being rebuilt in the background")

        def work() -> None:
            if self.run(stop):
                then()

        self._thread = threading.Thread(target=work, name="sandbar-views", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _note(self, position: int, head: int) -> None:
        self.position, self.head = position, head

"""Slows password guessing: after too many failed logins for one username, or from one
client address, within a window, further attempts answer ``RateLimited`` until it passes.
A client address gets a larger allowance than a username, since many people may share
one address."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from application.errors import RateLimited


class LoginThrottle:
    CLIENT_FACTOR = 4

    def __init__(
        self, max_failures: int, window_seconds: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max = max_failures
        self._window = window_seconds
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self._window:
            times.popleft()
        return times

    def check(self, *keys: str) -> None:
        now = self._clock()
        with self._lock:
            for key in keys:
                times = self._recent(key, now)
                limit = self._max * (self.CLIENT_FACTOR if key.startswith("client:") else 1)
                if len(times) >= limit:
                    wait = int(times[0] + self._window - now) + 1
                    raise RateLimited(
                        f"too many failed sign-ins; try again in {wait} seconds", wait
                    )

    def failed(self, *keys: str) -> None:
        now = self._clock()
        with self._lock:
            for key in keys:
                self._recent(key, now).append(now)
            if len(self._failures) > 100_000:  # forget idle keys so memory stays bounded
                for key in [k for k in self._failures if not self._recent(k, now)]:
                    del self._failures[key]

    def succeeded(self, username_key: str) -> None:
        with self._lock:
            self._failures.pop(username_key, None)


class RateLimit:
    """At most ``limit`` uses per key within ``window_seconds`` (a sliding window)."""

    def __init__(
        self, limit: int, window_seconds: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window = LoginThrottle(limit, window_seconds, clock)

    def hit(self, key: str, what: str) -> None:
        """Count one use of ``key``, or raise RateLimited (saying ``what`` is limited)."""
        try:
            self._window.check(key)
        except RateLimited as e:
            raise RateLimited(
                f"too many {what} from here; try again in {e.retry_after} seconds", e.retry_after
            ) from None
        self._window.failed(key)

"""Slows password guessing without handing an attacker a way to lock the owner out.

Failed sign-ins are counted per username *and* client address: five from one address
for one username, and that address waits for that username, while the owner signing in
from anywhere else does not. Two wider limits stop what the pair cannot see: a client
address failing on many usernames (a larger allowance, since many people may share one
address), and one username failing from many addresses (a much larger one, so that
guesses spread over a botnet stay slow)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from application.errors import RateLimited

MAX_KEYS = 100_000  # past this, keys with no failure in the window are forgotten


class SlidingWindow:
    """At most ``limit`` events per key within ``window_seconds``."""

    def __init__(
        self, limit: int, window_seconds: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self._window = window_seconds
        self._clock = clock
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._events.setdefault(key, deque())
        while times and times[0] <= now - self._window:
            times.popleft()
        return times

    def wait(self, key: str) -> int:
        """Seconds until ``key`` may have another event; 0: now."""
        now = self._clock()
        with self._lock:
            times = self._recent(key, now)
            if len(times) < self.limit:
                return 0
            return int(times[0] + self._window - now) + 1

    def add(self, key: str) -> None:
        now = self._clock()
        with self._lock:
            self._recent(key, now).append(now)
            if len(self._events) > MAX_KEYS:  # memory stays bounded
                for idle in [k for k in self._events if not self._recent(k, now)]:
                    del self._events[idle]

    def forget(self, key: str) -> None:
        with self._lock:
            self._events.pop(key, None)


class LoginThrottle:
    CLIENT_FACTOR = 4  # an address, on any usernames
    USERNAME_FACTOR = 20  # a username, from any addresses

    def __init__(
        self, max_failures: int, window_seconds: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._pair = SlidingWindow(max_failures, window_seconds, clock)
        self._client = SlidingWindow(max_failures * self.CLIENT_FACTOR, window_seconds, clock)
        self._username = SlidingWindow(max_failures * self.USERNAME_FACTOR, window_seconds, clock)

    def _counters(self, username: str, client: str) -> list[tuple[SlidingWindow, str]]:
        return [
            (self._pair, f"{client}\n{username}"),
            (self._client, client),
            (self._username, username),
        ]

    def check(self, username: str, client: str) -> None:
        """RateLimited if ``client`` may not try ``username`` now."""
        wait = max(window.wait(key) for window, key in self._counters(username, client))
        if wait:
            raise RateLimited(f"too many failed sign-ins; try again in {wait} seconds", wait)

    def failed(self, username: str, client: str) -> None:
        for window, key in self._counters(username, client):
            window.add(key)

    def succeeded(self, username: str, client: str) -> None:
        """The pair starts afresh (the wider counts stay: they are others' failures)."""
        self._pair.forget(f"{client}\n{username}")


class RateLimit:
    """At most ``limit`` uses per key within ``window_seconds`` (a sliding window)."""

    def __init__(
        self, limit: int, window_seconds: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window = SlidingWindow(limit, window_seconds, clock)

    def hit(self, key: str, what: str) -> None:
        """Count one use of ``key``, or raise RateLimited (saying ``what`` is limited)."""
        wait = self._window.wait(key)
        if wait:
            raise RateLimited(f"too many {what} from here; try again in {wait} seconds", wait)
        self._window.add(key)

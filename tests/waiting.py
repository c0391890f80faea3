"""Waiting for another process, thread or socket to do something: on a condition, never
for a fixed time. One helper, so that every wait in the tests is bounded, polls the same
way and, when it gives up, says what it waited for and what it saw last."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _shown(value: object) -> str:
    """The last value seen, short: an HTTP answer by its status and body."""
    status, text = getattr(value, "status_code", None), getattr(value, "text", None)
    if isinstance(status, int) and isinstance(text, str):
        return f"{status} {text[:500]}"
    return repr(value)[:1000]


def wait_until(
    condition: Callable[[], T],
    *,
    until: Callable[[T], object] = bool,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "the condition",
) -> T:
    """Call ``condition`` every ``interval`` seconds until what it returns is truthy (or
    passes ``until``), and return that value; after ``timeout`` seconds, fail naming
    ``what`` and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if until(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s; last seen: {_shown(value)}")
        time.sleep(interval)

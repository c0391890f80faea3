"""The aggregate base every Sandbar aggregate shares: who caused each event.

Every event carries ``actor`` (a user id as text, or ``"system"``), taken from a context
variable so command methods never pass it by hand. The event's own ``timestamp`` says when.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import field

from eventsourcing.domain import Aggregate

SYSTEM = "system"

_actor: ContextVar[str] = ContextVar("sandbar_actor", default=SYSTEM)


@contextmanager
def acting_as(actor: object) -> Iterator[None]:
    """Attribute every event triggered inside the block to ``actor``."""
    token = _actor.set(str(actor))
    try:
        yield
    finally:
        _actor.reset(token)


def current_actor() -> str:
    return _actor.get()


class SandbarAggregate(Aggregate):
    class Event(Aggregate.Event):
        actor: str = field(default_factory=current_actor, init=False)

"""The one eventsourcing Application that holds every aggregate, so one table holds one
ordered log (the audit log) and a save of several aggregates is atomic."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, Recording

from application.errors import Conflict
from application.ports import VersionChecks
from domain.workspaces import Workspace

T = TypeVar("T")
A = TypeVar("A")

# Optimistic concurrency: a command that loses a race on an aggregate's version is run
# again on fresh state, so it re-checks its rules (an index claim then fails cleanly).
MAX_ATTEMPTS = 40


class StaleRead(IntegrityError):
    """Raised by a check in a save's transaction: what the command read to decide has
    changed since (a version conflict by another name), so the command runs again."""


class EventLog(Application[UUID]):
    name = "Sandbar"
    # Workspaces made before sandboxes stopped giving them an event (docs/design.md, "The
    # workspace boundary") hold one per sandbox made in them: snapshots keep loading
    # those short. A workspace made since gains events only from its owners and limits.
    snapshotting_intervals: ClassVar[dict[type, int]] = {Workspace: 50}

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        """As the library's, and more: an aggregate given to the save that gained no
        event (a command read it to decide, say the workspace's owners when a member's
        role changes) must still be at the version it was loaded at, else the save fails
        as a version conflict and the command runs again on fresh state. Without this,
        two commands could each decide on a stale copy of the aggregate the other one
        changed, and both commit (write skew)."""
        unchanged = [a for a in objs if isinstance(a, Aggregate) and not a.pending_events]
        recorder = self.recorder
        if unchanged and isinstance(recorder, VersionChecks):
            checks = [recorder.unchanged(a.id, a.version) for a in unchanged]
            kwargs["checks"] = [*checks, *kwargs.get("checks", ())]
        return super().save(*objs, **kwargs)

    def _record(self, processing_event: ProcessingEvent[UUID]) -> list[Recording[UUID]]:
        # Hand the domain events to the recorder, which projects them in the same
        # transaction that stores them.
        processing_event.saved_kwargs["projected_events"] = processing_event.events
        return super()._record(processing_event)

    def find(self, aggregate_id: UUID, cls: type[A]) -> A | None:
        try:
            aggregate: object = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        return aggregate if isinstance(aggregate, cls) else None

    def retrying(self, command: Callable[[], T]) -> T:
        """Run ``command`` (load, check, change, save) until it saves without a conflict."""
        for attempt in range(MAX_ATTEMPTS):
            try:
                return command()
            except IntegrityError:
                time.sleep(random.uniform(0, min(0.05, 0.002 * 2**attempt)))  # noqa: S311
        raise Conflict("too many concurrent changes; try again", code="busy")

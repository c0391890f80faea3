"""The audit log: every event in order, who caused it and when, and any workspace's
members and sandboxes as they were at a given moment, folded from the log itself."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast
from uuid import UUID

from application.eventlog import EventLog
from domain.base import SandbarAggregate
from domain.sandboxes import Sandbox, Status
from domain.users import User
from domain.workspaces import Membership, Workspace

PAGE = 1000
# Events are stamped when made, just before their save, so two concurrent saves can commit
# out of time order by a moment: a reader looking for "up to T" reads a little past T.
SKEW = timedelta(seconds=30)
# Event attributes that are bookkeeping rather than what happened.
_META = {"originator_id", "originator_version", "timestamp", "originator_topic", "actor"}


@dataclass(frozen=True)
class Entry:
    position: int
    time: datetime
    actor: str
    event: str  # e.g. "Sandbox.Requested"
    aggregate_id: UUID
    workspace_id: UUID | None
    fields: dict[str, Any]
    user_id: str | None = None  # the user the event is about, if any


@dataclass(frozen=True)
class Filter:
    workspace_id: UUID | None = None
    user_id: UUID | None = None  # events by or about this user
    since: datetime | None = None
    until: datetime | None = None

    def admits(self, entry: Entry) -> bool:
        if self.workspace_id and entry.workspace_id != self.workspace_id:
            return False
        if self.user_id and str(self.user_id) not in (entry.actor, entry.user_id):
            return False
        if self.since and entry.time < self.since:
            return False
        return not (self.until and entry.time > self.until)


@dataclass
class Snapshot:
    """A workspace as it was at a moment."""

    at: datetime
    workspace: Workspace | None
    members: list[tuple[Membership, str]]  # with the username
    sandboxes: list[Sandbox]


class AuditLog:
    def __init__(self, log: EventLog) -> None:
        self._log = log
        # User id (as text) -> username, for every user registered in what was read so far.
        self.names: dict[str, str] = {}

    def events(self, until: datetime | None = None) -> Iterator[tuple[int, Any]]:
        """Every domain event with its position in the log, oldest first (stopping a
        little past ``until`` when given)."""
        start = 1
        while True:
            page = self._log.recorder.select_notifications(start=start, limit=PAGE)
            if not page:
                return
            for n in page:
                # Every event in the log is one of our aggregates' (domain.base).
                event = cast(SandbarAggregate.Event, self._log.mapper.to_domain_event(n))
                if until is not None and event.timestamp > until + SKEW:
                    return
                if isinstance(event, User.Registered):
                    self.names[str(event.originator_id)] = event.username
                yield n.id, event
            start = page[-1].id + 1

    def entries(self, where: Filter | None = None) -> Iterator[Entry]:
        where = where or Filter()
        workspace_of: dict[UUID, UUID] = {}
        user_of: dict[UUID, str] = {}  # aggregate -> the user it is about
        for position, e in self.events(until=where.until):
            owner = type(e).__qualname__.split(".")[0]
            if owner == "Workspace":
                workspace_of[e.originator_id] = e.originator_id
            elif hasattr(e, "workspace_id"):
                workspace_of[e.originator_id] = e.workspace_id
            if owner == "User":
                user_of[e.originator_id] = str(e.originator_id)
            elif owner == "Membership" and hasattr(e, "user_id"):
                user_of[e.originator_id] = str(e.user_id)
            subject = str(e.user_id) if hasattr(e, "user_id") else user_of.get(e.originator_id)
            entry = Entry(
                position=position,
                time=e.timestamp,
                actor=e.actor,
                event=type(e).__qualname__,
                aggregate_id=e.originator_id,
                workspace_id=workspace_of.get(e.originator_id),
                fields={k: v for k, v in e.__dict__.items() if k not in _META},
                user_id=subject,
            )
            if where.until and entry.time > where.until:
                continue
            if where.admits(entry):
                yield entry

    def replay(self, workspace_id: UUID, at: datetime) -> Snapshot:
        """Fold the log up to ``at`` with the aggregates' own event handlers."""
        aggregates: dict[UUID, Any] = {}
        for _, e in self.events(until=at):
            if e.timestamp <= at:
                aggregates[e.originator_id] = e.mutate(aggregates.get(e.originator_id))
        workspace = aggregates.get(workspace_id)
        if not isinstance(workspace, Workspace):
            return Snapshot(at, None, [], [])
        members = [
            (a, self.names.get(str(a.user_id), str(a.user_id)))
            for a in aggregates.values()
            if isinstance(a, Membership) and a.workspace_id == workspace_id and a.active
        ]
        sandboxes = [
            a
            for a in aggregates.values()
            if isinstance(a, Sandbox)
            and a.workspace_id == workspace_id
            and a.status is not Status.deleted
        ]
        members.sort(key=lambda m: (-m[0].level, m[1]))
        sandboxes.sort(key=lambda s: s.created_on)
        return Snapshot(at, workspace, members, sandboxes)

"""The audit log: every event in order, who caused it and when, and any workspace's
members and sandboxes as they were at a given moment, folded from the log itself.

Both read through the audit index (``AuditIndex``): the filters are the database's, the
events come a page at a time, and what is held here is bounded whatever the log's size
(a page of entries, and a bounded cache of usernames)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast
from uuid import UUID

from eventsourcing.persistence import Notification

from application.eventlog import EventLog
from domain.base import SandbarAggregate
from domain.sandboxes import Sandbox, Status
from domain.users import User, Username
from domain.workspaces import Membership, Workspace

PAGE = 1000  # entries decoded, named and handed on together
NAMES = 10_000  # usernames remembered
# Event attributes that are bookkeeping rather than what happened.
_META = {"originator_id", "originator_version", "timestamp", "originator_topic", "actor"}
# Fields that hold a user id, shown with the username.
USER_FIELDS = ("user_id", "owner_id")


class AuditIndex(Protocol):
    """The log, filtered by the database (projections/audit_reads.py)."""

    def events(
        self,
        workspace_id: UUID | None = None,
        user_id: UUID | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Iterator[tuple[Notification, UUID | None, UUID | None]]: ...

    def first_events(self, aggregate_ids: Collection[UUID]) -> list[Notification]: ...

    def caught_up(self) -> bool: ...


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


@dataclass
class Snapshot:
    """A workspace as it was at a moment."""

    at: datetime
    workspace: Workspace | None
    members: list[tuple[Membership, str]]  # with the username
    sandboxes: list[Sandbox]


class Usernames:
    """User id (as text) -> username, for the users asked about lately: read from each
    user's registration, at most ``NAMES`` of them kept."""

    def __init__(self, log: EventLog, index: AuditIndex, limit: int = NAMES) -> None:
        self._log = log
        self._index = index
        self._limit = limit
        self._known: OrderedDict[str, str] = OrderedDict()
        self._unknown: OrderedDict[str, None] = OrderedDict()  # not a user

    def get(self, user_id: str, default: str | None = None) -> str | None:
        return self._known.get(user_id, default)

    def learn(self, user_ids: Collection[str]) -> None:
        """Look up those not known yet, in one read."""
        wanted: list[UUID] = []
        for text in user_ids:
            if text in self._known:
                self._known.move_to_end(text)
            elif text not in self._unknown:
                try:
                    wanted.append(UUID(text))
                except ValueError:  # ("system")
                    self._remember(self._unknown, text, None)
        if not wanted:
            return
        found = {}
        for n in self._index.first_events(wanted):
            event = self._log.mapper.to_domain_event(n)
            if isinstance(event, User.Registered):
                found[str(event.originator_id)] = event.username
        for user_id in wanted:
            text = str(user_id)
            if text in found:
                self._remember(self._known, text, found[text])
            else:
                self._remember(self._unknown, text, None)

    def _remember(self, cache: OrderedDict[str, Any], key: str, value: Any) -> None:
        cache[key] = value
        if len(cache) > self._limit:
            cache.popitem(last=False)


class AuditLog:
    def __init__(self, log: EventLog, index: AuditIndex) -> None:
        self._log = log
        self._index = index
        # The usernames of the users the entries handed on so far name (their actors
        # and user fields), as the CLI prints them.
        self.names = Usernames(log, index)

    def caught_up(self) -> bool:
        return self._index.caught_up()

    def user_named(self, username: str) -> UUID | None:
        """The id of the user who claimed ``username`` (any case), from the log."""
        for n in self._index.first_events([Username.create_id(username)]):
            event = self._log.mapper.to_domain_event(n)
            if isinstance(event, Username.Claimed):
                return event.user_id
        return None

    def entries(self, where: Filter | None = None) -> Iterator[Entry]:
        """The events that pass ``where``, in log order, a page at a time: the usernames
        of a page are known (``names``) when it is handed on."""
        where = where or Filter()
        page: list[Entry] = []
        rows = self._index.events(where.workspace_id, where.user_id, where.since, where.until)
        for n, workspace_id, user_id in rows:
            # Every event in the log is one of our aggregates' (domain.base).
            e = cast(SandbarAggregate.Event, self._log.mapper.to_domain_event(n))
            page.append(
                Entry(
                    position=n.id,
                    time=e.timestamp,
                    actor=e.actor,
                    event=type(e).__qualname__,
                    aggregate_id=e.originator_id,
                    workspace_id=workspace_id,
                    fields={k: v for k, v in e.__dict__.items() if k not in _META},
                    user_id=str(user_id) if user_id else None,
                )
            )
            if len(page) >= PAGE:
                yield from self._named(page)
                page = []
        yield from self._named(page)

    def _named(self, page: list[Entry]) -> list[Entry]:
        ids = {e.actor for e in page}
        ids.update(str(e.fields[k]) for e in page for k in USER_FIELDS if k in e.fields)
        self.names.learn(ids)
        return page

    def replay(self, workspace_id: UUID, at: datetime) -> Snapshot:
        """Fold the workspace's events up to ``at`` with the aggregates' own event
        handlers: the workspace, its memberships and its sandboxes (those deleted by
        then are let go as soon as they are)."""
        aggregates: dict[UUID, Any] = {}
        for n, _, _ in self._index.events(workspace_id=workspace_id, until=at):
            e = cast(SandbarAggregate.Event, self._log.mapper.to_domain_event(n))
            current = aggregates.get(e.originator_id)
            if current is None and e.originator_version != 1:
                continue  # a sandbox deleted by then
            folded = e.mutate(current)
            if isinstance(folded, Sandbox) and folded.status is Status.deleted:
                aggregates.pop(e.originator_id, None)
            else:
                aggregates[e.originator_id] = folded
        workspace = aggregates.get(workspace_id)
        if not isinstance(workspace, Workspace):
            return Snapshot(at, None, [], [])
        active = [
            a
            for a in aggregates.values()
            if isinstance(a, Membership) and a.workspace_id == workspace_id and a.active
        ]
        self.names.learn({str(m.user_id) for m in active})
        members = [(m, self.names.get(str(m.user_id)) or str(m.user_id)) for m in active]
        sandboxes = [
            a
            for a in aggregates.values()
            if isinstance(a, Sandbox) and a.workspace_id == workspace_id
        ]
        members.sort(key=lambda m: (-m[0].level, m[1]))
        sandboxes.sort(key=lambda s: s.created_on)
        return Snapshot(at, workspace, members, sandboxes)

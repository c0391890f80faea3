"""Reads of the event log through the audit index (projections/audit_index.py): the
events of a workspace, of a user, of a time range, streamed from a server-side cursor
a page at a time, so a reader holds one page whatever the log's size, and the database
reads the events asked for rather than every event."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification
from eventsourcing.postgres import PostgresDatastore

PAGE = 1000

_EVENTS = (
    "SELECT e.notification_id, e.originator_id, e.originator_version, e.topic, e.state,"
    " a.workspace_id, a.user_id"
    " FROM sandbar_audit a JOIN sandbar_events e ON e.notification_id = a.position"
)


class AuditReads:
    def __init__(self, datastore: PostgresDatastore) -> None:
        self._db = datastore

    def events(
        self,
        workspace_id: UUID | None = None,
        user_id: UUID | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Iterator[tuple[Notification, UUID | None, UUID | None]]:
        """The events that pass every filter given, in log order, each with the
        workspace and the user it is about: by ``user_id`` means caused by or about
        that user; ``since`` and ``until`` are inclusive, on the events' own times."""
        where: list[str] = []
        params: list[Any] = []
        if workspace_id is not None:
            where.append("a.workspace_id = %s")
            params.append(workspace_id)
        if user_id is not None:
            where.append("(a.actor = %s OR a.user_id = %s)")
            params += [str(user_id), user_id]
        if since is not None:
            where.append("a.at >= %s")
            params.append(since)
        if until is not None:
            where.append("a.at <= %s")
            params.append(until)
        sql = _EVENTS + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY a.position"
        with self._db.transaction(commit=False) as curs:
            # A cursor's plan is by default made for its first rows (walk the log in
            # order, filtering): plan for all of them instead, so a filter uses its index.
            curs.execute("SET LOCAL cursor_tuple_fraction = 1.0")
            with curs.connection.cursor(name="sandbar_audit_events") as named:
                named.itersize = PAGE
                named.execute(sql, params)
                for row in named:
                    yield _notification(row), row["workspace_id"], row["user_id"]

    def first_events(self, aggregate_ids: Collection[UUID]) -> list[Notification]:
        """The first event of each of these aggregates that has one (who registered
        a user, which user claimed a username)."""
        if not aggregate_ids:
            return []
        with self._db.transaction(commit=False) as curs:
            curs.execute(
                "SELECT notification_id, originator_id, originator_version, topic, state"
                " FROM sandbar_events WHERE originator_id = ANY(%s) AND originator_version = 1",
                (list(aggregate_ids),),
                prepare=True,
            )
            return [_notification(row) for row in curs.fetchall()]

    def caught_up(self) -> bool:
        """Whether the index holds the whole log (it does not while the views are
        rebuilt after an upgrade)."""
        with self._db.transaction(commit=False) as curs:
            curs.execute("SELECT ready FROM sandbar_read_model_meta")
            row = curs.fetchone()
            return bool(row and row["ready"])


def _notification(row: dict[str, Any]) -> Notification:
    return Notification(
        id=row["notification_id"],
        originator_id=row["originator_id"],
        originator_version=row["originator_version"],
        topic=row["topic"],
        state=bytes(row["state"]),
    )

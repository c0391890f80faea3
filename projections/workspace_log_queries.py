"""Reads of the workspace log view (projections/workspace_log.py): what happened in a workspace
past a position, a page of its history, and its members and sandboxes at a moment."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.postgres import PostgresDatastore

from projections.workspace_log import TABLE

Row = dict[str, Any]
# Each row with its actor's username (null for "system", or a user id no longer known).
_COLUMNS = (
    "position, workspace_id, aggregate_id, kind, event, actor, subject, time, item,"
    " (SELECT u.username FROM sandbar_users u WHERE u.id = CASE WHEN actor ~"
    " '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN actor::uuid END)"
    " AS actor_name"
)


# Every read of one workspace's rows bounds (workspace_id, position) by a row comparison
# rather than ``workspace_id = %s``: with an equality, PostgreSQL takes the order by
# position as the order of the whole log and may walk the primary key, filtering out
# every other workspace's later rows (25 ms for a workspace whose rows all precede a
# busier one's); a row range can be read only from the (workspace_id, position) index,
# and only the workspace's own rows are read (the log's positions are all in FIRST..LAST).
FIRST = -(2**63)
LAST = 2**63 - 1
_IN_RANGE = "(workspace_id, position) > (%s, %s) AND (workspace_id, position) < (%s, %s)"
_NEWEST_FIRST = "ORDER BY workspace_id DESC, position DESC"


def _between(workspace_id: UUID, after: int, before: int) -> tuple[Any, ...]:
    """The parameters of ``_IN_RANGE``: the workspace's rows strictly between positions."""
    return (workspace_id, after, workspace_id, before)


def _newest(
    workspace_id: UUID, column: str | None, value: str | None, before: int
) -> tuple[str, str, list[Any]]:
    """(condition, order, parameters) of the workspace's rows before position ``before``
    whose ``column`` is ``value`` (all, if None), newest first: one backward range scan
    of the index on (workspace_id, column, position) (projections/workspace_log.py)."""
    if column is None:
        return _IN_RANGE, _NEWEST_FIRST, [*_between(workspace_id, FIRST, before)]
    key = f"(workspace_id, {column}, position)"
    return (
        f"{key} > (%s, %s, %s) AND {key} < (%s, %s, %s)",
        f"ORDER BY workspace_id DESC, {column} DESC, position DESC",
        [workspace_id, value, FIRST, workspace_id, value, before],
    )


class WorkspaceLogQueries:
    def __init__(self, datastore: PostgresDatastore) -> None:
        self._db = datastore

    def _all(self, sql: str, params: tuple[Any, ...], text_items: bool = False) -> list[Row]:
        """The rows; ``text_items``: the query sends ``item`` as text, decoded here by
        orjson (several times faster than the driver's json for a thousand rows)."""
        with self._db.get_connection() as conn:
            rows = conn.execute(sql, params, prepare=True).fetchall()
        if text_items:
            for row in rows:
                if row["item"] is not None:
                    row["item"] = orjson.loads(row["item"])
        return rows

    def head(self, workspace_id: UUID) -> int:
        """The position of the workspace's latest event (0: none)."""
        rows = self._all(
            f"SELECT position FROM {TABLE} WHERE {_IN_RANGE} {_NEWEST_FIRST} LIMIT 1",
            _between(workspace_id, FIRST, LAST),
        )
        return int(rows[0]["position"]) if rows else 0

    def latest(self) -> int:
        """The position of the latest event of any workspace (0: none)."""
        rows = self._all(f"SELECT coalesce(max(position), 0) AS p FROM {TABLE}", ())
        return int(rows[0]["p"])

    def workspaces_since(self, position: int, limit: int) -> list[Row]:
        """(position, workspace_id) of the events past ``position``, oldest first."""
        return self._all(
            f"SELECT position, workspace_id FROM {TABLE} WHERE position > %s"
            " ORDER BY position LIMIT %s",
            (position, limit),
        )

    def since(self, workspace_id: UUID, position: int, limit: int) -> list[Row]:
        """The workspace's events past ``position``, oldest first."""
        return self._all(
            f"SELECT {_COLUMNS} FROM {TABLE} WHERE {_IN_RANGE}"
            " ORDER BY workspace_id, position LIMIT %s",
            (*_between(workspace_id, position, LAST), limit),
        )

    def page(
        self,
        workspace_id: UUID,
        before: int | None,
        limit: int,
        person: UUID | None = None,
        kind: str | None = None,
    ) -> list[Row]:
        """Newest first: events before ``before`` (all, if None), by or about ``person``,
        of ``kind`` (``sandbox``, ``member``, ``workspace``, or an event's name such as
        ``Sandbox.Paused``)."""
        top = LAST if before is None else before
        # The column a kind is matched on: an event's name has a dot, a kind none.
        kind_column = None if kind is None else "event" if "." in kind else "kind"
        if person is None:  # one range: of the workspace, or of its rows of that kind
            where, order, params = _newest(workspace_id, kind_column, kind, top)
            return self._all(
                f"SELECT {_COLUMNS} FROM {TABLE} WHERE {where} {order} LIMIT %s",
                (*params, limit),
            )
        # By or about a person: the newest by them and the newest about them (not by
        # them: no row twice), each one range, merged.
        branches, params = [], []
        for column, not_by_them in (("actor", False), ("subject", True)):
            where, order, more = _newest(workspace_id, column, str(person), top)
            if not_by_them:
                where += " AND actor <> %s"
                more.append(str(person))
            if kind_column is not None:
                where += f" AND {kind_column} = %s"
                more.append(kind)
            branches.append(f"(SELECT * FROM {TABLE} WHERE {where} {order} LIMIT %s)")
            params += [*more, limit]
        return self._all(
            f"SELECT {_COLUMNS} FROM ({' UNION ALL '.join(branches)}) AS mine"
            " ORDER BY position DESC LIMIT %s",
            (*params, limit),
        )

    def as_at(self, workspace_id: UUID, at: datetime) -> list[Row]:
        """The last event of each of the workspace's aggregates (itself, its members,
        its sandboxes) up to ``at``: its item is that thing as it then was (null: gone).
        (The last positions are found on the narrow columns first, then only those rows
        are read whole.)"""
        return self._all(
            f"SELECT position, kind, aggregate_id, item::text AS item FROM {TABLE}"
            " WHERE position IN ("
            f" SELECT DISTINCT ON (aggregate_id) position FROM {TABLE}"
            "  WHERE workspace_id = %s AND time <= %s ORDER BY aggregate_id, position DESC)",
            (workspace_id, at),
            text_items=True,
        )

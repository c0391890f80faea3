"""The audit index: one row per event of the log, saying when it happened, who caused it,
which workspace it belongs to and which user it is about, so that ``sandbar audit``
filters in SQL rather than decoding every event (the event's own state may be
compressed or encrypted by the library's settings: nothing is read from it in SQL).

It is a view like the others (projections/read_model.py): written in the transaction
that records the events, rebuilt from the log with them. Which workspace or user an event
is about is often said by an earlier event of the same aggregate only (a sandbox's
``Started`` names no workspace; its ``Requested`` does): ``sandbar_audit_scope`` keeps
that, one row per aggregate, written by the event that says it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from psycopg import Cursor

TABLES: dict[str, tuple[str, str]] = {
    # An aggregate's workspace and the user it is about, as its first events say.
    "sandbar_audit_scope": (
        "aggregate_id uuid PRIMARY KEY, workspace_id uuid, user_id uuid",
        "aggregate_id",
    ),
    # position: the event's notification id in sandbar_events.
    "sandbar_audit": (
        "position bigint PRIMARY KEY, at timestamptz NOT NULL, actor text NOT NULL, "
        "workspace_id uuid, user_id uuid",
        "position",
    ),
}

INDEXES = (
    "CREATE INDEX IF NOT EXISTS sandbar_audit_workspace_idx"
    " ON sandbar_audit (workspace_id, position) WHERE workspace_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS sandbar_audit_actor_idx ON sandbar_audit (actor, position)",
    "CREATE INDEX IF NOT EXISTS sandbar_audit_user_idx"
    " ON sandbar_audit (user_id, position) WHERE user_id IS NOT NULL",
    # (A block-range index would be cheaper to keep, but summarizes new rows only when
    # vacuumed: until then it matches the whole table.)
    "CREATE INDEX IF NOT EXISTS sandbar_audit_at_idx ON sandbar_audit (at)",
)

# One statement for a whole batch of events (a save's, or a thousand of a replay), the
# rows passed as arrays: a statement per event would cost more than the views do.
_SCOPES = (
    "INSERT INTO sandbar_audit_scope (aggregate_id, workspace_id, user_id)"
    " SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::uuid[])"
    " ON CONFLICT (aggregate_id) DO NOTHING"
)
_ROWS = (
    "INSERT INTO sandbar_audit (position, at, actor, workspace_id, user_id)"
    " SELECT r.position, r.at, r.actor,"
    " COALESCE(r.workspace_id, s.workspace_id), COALESCE(r.user_id, s.user_id)"
    " FROM unnest(%s::bigint[], %s::timestamptz[], %s::text[], %s::uuid[], %s::uuid[],"
    " %s::uuid[]) AS r (position, at, actor, workspace_id, user_id, aggregate_id)"
    " LEFT JOIN sandbar_audit_scope s ON s.aggregate_id = r.aggregate_id"
)


def scope(event: Any) -> tuple[UUID | None, UUID | None]:
    """(workspace, user) the event itself says it is about, if it does."""
    owner = type(event).__qualname__.split(".")[0]
    workspace = (
        event.originator_id if owner == "Workspace" else getattr(event, "workspace_id", None)
    )
    user = event.originator_id if owner == "User" else getattr(event, "user_id", None)
    return workspace, user


def index(curs: Cursor[Any], events: Sequence[tuple[Any, int]]) -> None:
    """Record these events of the log, each with its position, in the audit index."""
    if not events:
        return
    scopes: tuple[list[Any], list[Any], list[Any]] = ([], [], [])
    rows: tuple[list[Any], ...] = ([], [], [], [], [], [])
    for event, position in events:
        workspace, user = scope(event)
        aggregate = event.originator_id
        # What an aggregate's later events are about: its workspace, and for a user or
        # a membership, the user (an ownership granted on a workspace is about that
        # user alone, not every later event of the workspace). Every aggregate says so
        # in its first event.
        owner = type(event).__qualname__.split(".")[0]
        keeps_user = user if owner in ("User", "Membership") else None
        if event.originator_version == 1 and (workspace is not None or keeps_user is not None):
            for column, value in zip(scopes, (aggregate, workspace, keeps_user), strict=True):
                column.append(value)
        values = (position, event.timestamp, event.actor, workspace, user, aggregate)
        for column, value in zip(rows, values, strict=True):
            column.append(value)
    if scopes[0]:
        curs.execute(_SCOPES, scopes, prepare=True)
    curs.execute(_ROWS, rows, prepare=True)

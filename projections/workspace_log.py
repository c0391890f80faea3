"""The workspace log view: one row per event that happened in a workspace, keyed by its
position in the log, holding the view row the event left behind.

It feeds three readers: the live stream (``GET /api/workspaces/{id}/events``: every row
past a position, so a client that reconnects with ``Last-Event-ID`` misses nothing), the
history page (newest first, by person and kind), and "as it was at" (each aggregate's
last row up to a moment). Rows are written in the save's transaction, after the view
tables (a deletion's before, while the workspace of what goes is still known), so they
are as current as the views; ``sandbar audit rebuild`` makes them again from the log.

A row's ``item`` is the changed view row (sandbox, member with its username, workspace)
or null when the thing is gone: never a secret, never an address."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from psycopg import Cursor

from domain.sandboxes import Sandbox
from domain.workspaces import Membership, Workspace

TABLE = "sandbar_workspace_log"
COLUMNS = (
    "position bigint PRIMARY KEY, workspace_id uuid NOT NULL, aggregate_id uuid NOT NULL,"
    " kind text NOT NULL, event text NOT NULL, actor text NOT NULL, subject text,"
    " time timestamptz NOT NULL, item jsonb"
)
# The history's pages, each one index range scan (projections/workspace_log_queries.py):
# all of a workspace's rows, those of one kind, of one event, by one actor, about one
# subject; newest first.
INDEXES = tuple(
    f"CREATE INDEX IF NOT EXISTS {TABLE}_{name}_idx ON {TABLE} ({columns})"
    for name, columns in (
        ("workspace", "workspace_id, position"),
        ("kind", "workspace_id, kind, position"),
        ("event", "workspace_id, event, position"),
        ("actor", "workspace_id, actor, position"),
        ("subject", "workspace_id, subject, position"),
    )
)

_INSERT = (
    f"INSERT INTO {TABLE} (position, workspace_id, aggregate_id, kind, event, actor,"
    " subject, time, item)"
)
_SANDBOX = (
    f"{_INSERT} SELECT %(position)s, s.workspace_id, s.id, 'sandbox', %(event)s, %(actor)s,"
    " NULL, %(time)s, CASE WHEN %(gone)s THEN NULL ELSE to_jsonb(s) END"
    " FROM sandbar_sandboxes s WHERE s.id = %(id)s"
)
_MEMBER = (
    f"{_INSERT} SELECT %(position)s, m.workspace_id, m.id, 'member', %(event)s, %(actor)s,"
    " m.user_id::text, %(time)s, jsonb_build_object('user_id', m.user_id, 'username',"
    " u.username, 'role', m.role, 'active', m.active, 'added_at', m.added_at)"
    " FROM sandbar_members m JOIN sandbar_users u ON u.id = m.user_id WHERE m.id = %(id)s"
)
_WORKSPACE = (
    f"{_INSERT} SELECT %(position)s, w.id, w.id, 'workspace', %(event)s, %(actor)s,"
    " NULL, %(time)s, CASE WHEN %(gone)s THEN NULL ELSE jsonb_build_object('id', w.id,"
    " 'name', w.name, 'created_at', w.created_at, 'daily_requests', w.daily_requests,"
    " 'daily_tokens', w.daily_tokens) END"
    " FROM sandbar_workspaces w WHERE w.id = %(id)s"
)

# Which events are a workspace's activity, with the statement that records each. The
# workspace's bookkeeping events (owners, attached sandboxes) are left out: the member and
# sandbox events beside them say what happened.
_RECORDED: dict[type, str] = {}
for _owner, _sql, _names in (
    (Workspace, _WORKSPACE, ("Created", "LimitsSet", "Deleted")),
    (Membership, _MEMBER, ("Added", "Rejoined", "RoleChanged", "Removed")),
    (
        Sandbox,
        _SANDBOX,
        (
            "Requested",
            "PauseRequested",
            "ResumeRequested",
            "DeletionRequested",
            "DeletionDelayed",
            "Started",
            "Resumed",
            "Relocated",
            "Failed",
            "Paused",
            "Deleted",
            "Connected",
            "Disconnected",
        ),
    ),
):
    for _name in _names:
        _cls = getattr(_owner, _name, None)
        if _cls is not None:
            _RECORDED[_cls] = _sql
_GONE = frozenset(c for c in _RECORDED if c.__name__ == "Deleted")


def project(
    curs: Cursor[Any], event: Any, position: int, apply: Callable[[Cursor[Any], Any], None]
) -> None:
    """``apply`` the event to the view tables, and record it here if it is a
    workspace's (a deletion first, while its rows still say whose it was)."""
    sql = _RECORDED.get(type(event))
    if sql is None:
        apply(curs, event)
        return
    gone = type(event) in _GONE
    params = {
        "position": position,
        "event": type(event).__qualname__,
        "actor": event.actor,
        "time": event.timestamp,
        "id": event.originator_id,
        "gone": gone,
    }
    if gone:
        curs.execute(sql, params, prepare=True)
        apply(curs, event)
    else:
        apply(curs, event)
        curs.execute(sql, params, prepare=True)

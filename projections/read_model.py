"""The read model: the view tables behind every GET endpoint and the routing table, and
the audit index (projections/audit_index.py).

``apply_all(curs, events)`` turns domain events (with their positions in the log) into
SQL on a cursor. The same function serves the inline path (run in the transaction that
records the events, so a caller reads its own writes at once), the catch-up runner, and
``sandbar audit rebuild``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from psycopg import Cursor

from domain.sandboxes import EVENT_STATUS, HOST_PREFIXES, Kind, Sandbox, SandboxType, Status
from domain.users import User
from domain.workspaces import Membership, Workspace
from projections import audit_index, workspace_log

# Bump when a table's shape or a handler's meaning changes: the views are then
# dropped and rebuilt from the log (in the background: projections/view.py).
# 3: the workspace log (projections/workspace_log.py); 4: sandbar_identities; 5: the
# workspace's created_at in sandbar_members, the lists' indexes; 6: the audit index; 7: the
# workspace log's indexes by kind, event, actor and subject (the history's filtered pages);
# 8: the sandboxes a workspace counts, by an index of their own.
VERSION = 8

VIEWS: dict[str, tuple[str, str]] = {
    # name: (columns, primary key used to order rows when comparing)
    "sandbar_users": (
        "id uuid PRIMARY KEY, username text NOT NULL, username_key text NOT NULL UNIQUE, "
        "email text, display_name text NOT NULL, created_at timestamptz NOT NULL",
        "id",
    ),
    # The sign-in providers' accounts linked to each user (no token: Sandbar keeps none).
    "sandbar_identities": (
        "user_id uuid NOT NULL, provider text NOT NULL, subject text NOT NULL, "
        "linked_at timestamptz NOT NULL, PRIMARY KEY (user_id, provider, subject)",
        "user_id, provider, subject",
    ),
    "sandbar_workspaces": (
        "id uuid PRIMARY KEY, name text NOT NULL, created_by text NOT NULL, "
        "created_at timestamptz NOT NULL, daily_requests bigint, daily_tokens bigint",
        "id",
    ),
    # One row per membership ever made; a removed member keeps the row, inactive. The
    # workspace's created_at is copied in: a user's workspaces are listed in its order.
    "sandbar_members": (
        "id uuid PRIMARY KEY, workspace_id uuid NOT NULL, user_id uuid NOT NULL, "
        "role text NOT NULL, active boolean NOT NULL, added_at timestamptz NOT NULL, "
        "workspace_created_at timestamptz NOT NULL, UNIQUE (workspace_id, user_id)",
        "id",
    ),
    "sandbar_sandboxes": (
        "id uuid PRIMARY KEY, workspace_id uuid NOT NULL, name text NOT NULL, "
        "type text NOT NULL, kind text NOT NULL, status text NOT NULL, error text, "
        "created_by text NOT NULL, created_at timestamptz NOT NULL, "
        "updated_at timestamptz NOT NULL",
        "id",
    ),
    # The routing table: sandbox id -> where its agent answers (filled by the
    # container and tunnel sides), read by the subdomain proxy.
    "sandbar_routes": (
        "sandbox_id uuid PRIMARY KEY, host text NOT NULL UNIQUE, workspace_id uuid NOT NULL, "
        "type text NOT NULL, kind text NOT NULL, status text NOT NULL, target text, "
        "updated_at timestamptz NOT NULL",
        "sandbox_id",
    ),
    # Each workspace's events with the view rows they left (projections/workspace_log.py).
    workspace_log.TABLE: (workspace_log.COLUMNS, "position"),
}
# Every table the log is replayed into: the views and the audit index.
TABLES = {**VIEWS, **audit_index.TABLES}

# The lists' sort keys (docs/api.md "Paging"), so that a page is one index range scan.
INDEXES = (
    "CREATE INDEX IF NOT EXISTS sandbar_members_user_list_idx"
    " ON sandbar_members (user_id, workspace_created_at, workspace_id) WHERE active",
    "CREATE INDEX IF NOT EXISTS sandbar_members_workspace_list_idx"
    " ON sandbar_members (workspace_id, added_at, user_id) WHERE active",
    "CREATE INDEX IF NOT EXISTS sandbar_sandboxes_workspace_idx"
    " ON sandbar_sandboxes (workspace_id, created_at, id)",
    # A workspace's sandbox count (queries._COUNTS) read off this index alone: with the
    # list's index, a few workspaces holding most sandboxes made PostgreSQL scan the
    # table once per workspace listed (1.2 s for a page of 100 beside 111k sandboxes).
    "CREATE INDEX IF NOT EXISTS sandbar_sandboxes_live_idx"
    " ON sandbar_sandboxes (workspace_id) WHERE status <> 'deleting'",
    *workspace_log.INDEXES,
    *audit_index.INDEXES,
)


def table_statements() -> list[str]:
    return [f"CREATE TABLE IF NOT EXISTS {name} ({cols})" for name, (cols, _) in TABLES.items()]


def create_statements() -> list[str]:
    """Tables and their indexes (an index may name a column only this VERSION has)."""
    return [*table_statements(), *INDEXES]


Handler = Callable[[Cursor[Any], Any], None]
_handlers: dict[type, Handler] = {}


def handles(*event_classes: type) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for cls in event_classes:
            _handlers[cls] = fn
        return fn

    return register


def apply_all(curs: Cursor[Any], events: Sequence[tuple[Any, int]]) -> None:
    """Apply domain events, each with its position in the log, in order: to the view
    tables and the workspace log (projections/workspace_log.py), then to the audit index
    (every event, in one statement)."""
    for event, position in events:
        workspace_log.project(curs, event, position, apply)
    audit_index.index(curs, events)


def apply(curs: Cursor[Any], event: Any) -> None:
    """Apply one domain event to the view tables (events no view cares about pass)."""
    handler = _handlers.get(type(event))
    if handler is not None:
        handler(curs, event)


@handles(User.Registered)
def _user_registered(curs: Cursor[Any], e: Any) -> None:
    curs.execute(
        "INSERT INTO sandbar_users (id, username, username_key, email, display_name, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (e.originator_id, e.username, e.username.lower(), e.email, e.display_name, e.timestamp),
    )


@handles(User.IdentityLinked)
def _identity_linked(curs: Cursor[Any], e: Any) -> None:
    curs.execute(
        "INSERT INTO sandbar_identities (user_id, provider, subject, linked_at)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (e.originator_id, e.provider, e.subject, e.timestamp),
    )


@handles(Workspace.Created)
def _workspace_created(curs: Cursor[Any], e: Any) -> None:
    curs.execute(
        "INSERT INTO sandbar_workspaces (id, name, created_by, created_at) VALUES (%s, %s, %s, %s)",
        (e.originator_id, e.name, e.actor, e.timestamp),
    )


@handles(Workspace.LimitsSet)
def _workspace_limits(curs: Cursor[Any], e: Any) -> None:
    curs.execute(
        "UPDATE sandbar_workspaces SET daily_requests = %s, daily_tokens = %s WHERE id = %s",
        (e.daily_requests, e.daily_tokens, e.originator_id),
    )


@handles(Workspace.Deleted)
def _workspace_deleted(curs: Cursor[Any], e: Any) -> None:
    curs.execute("DELETE FROM sandbar_members WHERE workspace_id = %s", (e.originator_id,))
    curs.execute("DELETE FROM sandbar_workspaces WHERE id = %s", (e.originator_id,))


@handles(Membership.Added)
def _member_added(curs: Cursor[Any], e: Any) -> None:
    curs.execute(
        "INSERT INTO sandbar_members"
        " (id, workspace_id, user_id, role, active, added_at, workspace_created_at)"
        " SELECT %s, %s, %s, %s, true, %s, created_at FROM sandbar_workspaces WHERE id = %s",
        (e.originator_id, e.workspace_id, e.user_id, e.role, e.timestamp, e.workspace_id),
    )


@handles(Membership.Rejoined)
def _member_rejoined(curs: Cursor[Any], e: Any) -> None:
    curs.execute(
        "UPDATE sandbar_members SET role = %s, active = true, added_at = %s WHERE id = %s",
        (e.role, e.timestamp, e.originator_id),
    )


@handles(Membership.RoleChanged)
def _member_role_changed(curs: Cursor[Any], e: Any) -> None:
    curs.execute("UPDATE sandbar_members SET role = %s WHERE id = %s", (e.role, e.originator_id))


@handles(Membership.Removed)
def _member_removed(curs: Cursor[Any], e: Any) -> None:
    curs.execute("UPDATE sandbar_members SET active = false WHERE id = %s", (e.originator_id,))


@handles(Sandbox.Requested)
def _sandbox_requested(curs: Cursor[Any], e: Any) -> None:
    kind = Kind(e.kind)
    status = Status.offline if kind is Kind.local else EVENT_STATUS["Requested"]
    curs.execute(
        "INSERT INTO sandbar_sandboxes (id, workspace_id, name, type, kind, status, error,"
        " created_by, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, NULL, %s, %s, %s)",
        (
            e.originator_id,
            e.workspace_id,
            e.name,
            e.type,
            kind,
            status,
            e.actor,
            e.timestamp,
            e.timestamp,
        ),
    )
    host = f"{HOST_PREFIXES[SandboxType(e.type)]}-{e.originator_id}"
    curs.execute(
        "INSERT INTO sandbar_routes (sandbox_id, host, workspace_id, type, kind, status,"
        " target, updated_at) VALUES (%s, %s, %s, %s, %s, %s, NULL, %s)",
        (e.originator_id, host, e.workspace_id, e.type, kind, status, e.timestamp),
    )


@handles(
    Sandbox.Started,
    Sandbox.Resumed,
    Sandbox.Relocated,
    Sandbox.Failed,
    Sandbox.PauseRequested,
    Sandbox.Paused,
    Sandbox.ResumeRequested,
    Sandbox.DeletionRequested,
    Sandbox.DeletionDelayed,
    Sandbox.Connected,
    Sandbox.Disconnected,
)
def _sandbox_status(curs: Cursor[Any], e: Any) -> None:
    status = EVENT_STATUS[type(e).__name__]
    error = getattr(e, "reason", None)
    curs.execute(
        "UPDATE sandbar_sandboxes SET status = %s, error = %s, updated_at = %s WHERE id = %s",
        (status, error, e.timestamp, e.originator_id),
    )
    # The route's target is where the agent answers, as last reported; the proxy
    # reads the status beside it before using it.
    curs.execute(
        "UPDATE sandbar_routes SET status = %s, updated_at = %s,"
        " target = COALESCE(%s, target) WHERE sandbox_id = %s",
        (status, e.timestamp, getattr(e, "address", None), e.originator_id),
    )


@handles(Sandbox.Deleted)
def _sandbox_deleted(curs: Cursor[Any], e: Any) -> None:
    curs.execute("DELETE FROM sandbar_routes WHERE sandbox_id = %s", (e.originator_id,))
    curs.execute("DELETE FROM sandbar_sandboxes WHERE id = %s", (e.originator_id,))

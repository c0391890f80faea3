"""Reads of the view tables: everything the GET endpoints and access checks need."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.postgres import PostgresDatastore

Row = dict[str, Any]
# A list's sort key, to page after (see application.paging).
After = tuple[datetime, UUID] | None

_MEMBER = (
    "SELECT m.user_id, u.username, m.role, m.added_at FROM sandbar_members m"
    " JOIN sandbar_users u ON u.id = m.user_id"
)
# A workspace's (``w``) counts: its active members, its sandboxes not being deleted. The
# same in a list's rows as in one workspace's answer; each an index range per workspace.
_COUNTS = (
    "(SELECT count(*) FROM sandbar_members cm"
    "  WHERE cm.workspace_id = w.id AND cm.active) AS member_count,"
    " (SELECT count(*) FROM sandbar_sandboxes cs"
    "  WHERE cs.workspace_id = w.id AND cs.status <> 'deleting') AS sandbox_count"
)
_SANDBOX = (
    "SELECT id, workspace_id, name, type, kind, status, error, created_by, created_at,"
    " updated_at FROM sandbar_sandboxes"
)

_USER = "SELECT id, username, email, display_name, created_at FROM sandbar_users WHERE id = %s"
_IDENTITIES = (
    "SELECT provider, linked_at FROM sandbar_identities WHERE user_id = %s"
    " ORDER BY linked_at, provider, subject"
)


class ReadModelQueries:
    def __init__(self, datastore: PostgresDatastore) -> None:
        self._db = datastore

    def _one(self, sql: str, params: tuple[Any, ...]) -> Row | None:
        with self._db.get_connection() as conn:
            return conn.execute(sql, params, prepare=True).fetchone()

    def _all(self, sql: str, params: tuple[Any, ...]) -> list[Row]:
        with self._db.get_connection() as conn:
            return conn.execute(sql, params, prepare=True).fetchall()

    def user(self, user_id: UUID) -> Row | None:
        return self._one(_USER, (user_id,))

    def user_by_username(self, username: str) -> Row | None:
        return self._one(
            "SELECT id, username, email, display_name, created_at FROM sandbar_users"
            " WHERE username_key = %s",
            (username.lower(),),
        )

    def identities(self, user_id: UUID) -> list[Row]:
        """The provider accounts linked to the user, oldest first (no subject: the
        account's id at the provider is not the API's to hand out)."""
        return self._all(_IDENTITIES, (user_id,))

    def user_with_identities(self, user_id: UUID) -> Row | None:
        """``user`` with its ``identities`` as "providers", on one connection (every
        signed-in page asks: one pool checkout, not two)."""
        with self._db.get_connection() as conn:
            user = conn.execute(_USER, (user_id,), prepare=True).fetchone()
            if user is None:
                return None
            providers = conn.execute(_IDENTITIES, (user_id,), prepare=True).fetchall()
        return {**user, "providers": providers}

    def role(self, workspace_id: UUID, user_id: UUID) -> str | None:
        row = self._one(
            "SELECT role FROM sandbar_members WHERE workspace_id = %s AND user_id = %s AND active",
            (workspace_id, user_id),
        )
        return row["role"] if row else None

    @staticmethod
    def role_check(
        workspace_id: UUID, user_id: UUID, check: Callable[[str | None], object]
    ) -> Callable[[Any], None]:
        """``check`` the user's role as a save's transaction sees it (see eventstore)."""

        def run(curs: Any) -> None:
            curs.execute(
                "SELECT role FROM sandbar_members WHERE workspace_id = %s AND user_id = %s"
                " AND active",
                (workspace_id, user_id),
            )
            row = curs.fetchone()
            check(row["role"] if row else None)

        return run

    def workspaces_of(
        self, user_id: UUID, after: After = None, limit: int | None = None
    ) -> list[Row]:
        """The user's workspaces with their role and counts, by (created_at, id); the
        sort key is copied into the membership rows so that one index scan finds a page
        (sandbar_members_user_list_idx)."""
        return self._all(
            f"SELECT w.id, w.name, m.role, w.created_at, {_COUNTS} FROM sandbar_members m"
            " JOIN sandbar_workspaces w ON w.id = m.workspace_id"
            " WHERE m.user_id = %s AND m.active"
            f"{_after(after, 'm.workspace_created_at', 'm.workspace_id')}"
            f" ORDER BY m.workspace_created_at, m.workspace_id LIMIT %s",
            (user_id, *(after or ()), limit),
        )

    def workspace(self, workspace_id: UUID) -> Row | None:
        return self._one(
            f"SELECT w.id, w.name, w.created_at, {_COUNTS}"
            " FROM sandbar_workspaces w WHERE w.id = %s",
            (workspace_id,),
        )

    def members(
        self, workspace_id: UUID, after: After = None, limit: int | None = None
    ) -> list[Row]:
        """By (added_at, user_id) (sandbar_members_workspace_list_idx)."""
        return self._all(
            f"{_MEMBER} WHERE m.workspace_id = %s AND m.active"
            f"{_after(after, 'm.added_at', 'm.user_id')}"
            f" ORDER BY m.added_at, m.user_id LIMIT %s",
            (workspace_id, *(after or ()), limit),
        )

    def member(self, workspace_id: UUID, user_id: UUID) -> Row | None:
        return self._one(
            f"{_MEMBER} WHERE m.workspace_id = %s AND m.user_id = %s AND m.active",
            (workspace_id, user_id),
        )

    def sandboxes(
        self, workspace_id: UUID, after: After = None, limit: int | None = None
    ) -> list[Row]:
        """By (created_at, id) (sandbar_sandboxes_workspace_idx)."""
        return self._all(
            f"{_SANDBOX} WHERE workspace_id = %s{_after(after, 'created_at', 'id')}"
            f" ORDER BY created_at, id LIMIT %s",
            (workspace_id, *(after or ()), limit),
        )

    def sandbox(self, sandbox_id: UUID) -> Row | None:
        return self._one(f"{_SANDBOX} WHERE id = %s", (sandbox_id,))

    def users_by_email(self, email: str) -> list[UUID]:
        rows = self._all(
            "SELECT id FROM sandbar_users WHERE lower(email) = lower(%s) LIMIT 2", (email,)
        )
        return [r["id"] for r in rows]

    def limits(self, workspace_id: UUID) -> Row | None:
        """A workspace's own daily limits (None where it uses the default)."""
        return self._one(
            "SELECT daily_requests, daily_tokens FROM sandbar_workspaces WHERE id = %s",
            (workspace_id,),
        )

    def route(self, sandbox_id: UUID) -> Row | None:
        """Where a sandbox's agent answers, and whether it may be reached now."""
        return self._one(
            "SELECT sandbox_id, host, workspace_id, type, kind, status, target"
            " FROM sandbar_routes WHERE sandbox_id = %s",
            (sandbox_id,),
        )

    def connected_local_sandboxes(self) -> list[UUID]:
        """Local sandboxes recorded as connected (running)."""
        rows = self._all(
            "SELECT id FROM sandbar_sandboxes WHERE kind = 'local' AND status = 'running'", ()
        )
        return [r["id"] for r in rows]

    def cloud_sandboxes(self) -> list[Row]:
        """Every cloud sandbox not yet deleted (for the container worker)."""
        return self._all(f"{_SANDBOX} WHERE kind = 'cloud' ORDER BY created_at", ())

    # A workspace's live sandboxes (neither deleting nor deleted: a deleted one has no
    # row), for the cascade of its deletion.
    _LIVE_SANDBOXES = (
        "SELECT id FROM sandbar_sandboxes WHERE workspace_id = %s AND status <> 'deleting'"
    )

    def live_sandbox_ids(self, workspace_id: UUID) -> list[UUID]:
        return [r["id"] for r in self._all(self._LIVE_SANDBOXES, (workspace_id,))]

    @classmethod
    def live_sandboxes_check(
        cls, workspace_id: UUID, check: Callable[[set[UUID]], object]
    ) -> Callable[[Any], None]:
        """``check`` the workspace's live sandboxes as a save's transaction sees them:
        under the events table's lock, every save committed before is in the views."""

        def run(curs: Any) -> None:
            curs.execute(cls._LIVE_SANDBOXES, (workspace_id,), prepare=True)
            check({r["id"] for r in curs.fetchall()})

        return run


def _after(after: After, first: str, second: str) -> str:
    """The keyset condition: rows whose (first, second) sort after ``after``."""
    return "" if after is None else f" AND ({first}, {second}) > (%s, %s)"

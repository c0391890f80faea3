"""A workspace's log, for its members: what happened past a position (the live
stream), its history a page at a time, and its members and sandboxes as they were at a
moment. Read from the workspace log view (projections/workspace_log.py), which the log feeds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from application.access import Access
from application.errors import Invalid
from application.paging import MAX_LIMIT
from application.ports import Row
from domain import roles

MAX_PAGE = MAX_LIMIT  # (as every list: docs/api.md "Paging")
KINDS = ("workspace", "member", "sandbox")


class WorkspaceLogReads(Protocol):
    def latest(self) -> int: ...
    def workspaces_since(self, position: int, limit: int) -> list[Row]: ...
    def head(self, workspace_id: UUID) -> int: ...
    def since(self, workspace_id: UUID, position: int, limit: int) -> list[Row]: ...
    def page(
        self,
        workspace_id: UUID,
        before: int | None,
        limit: int,
        person: UUID | None = None,
        kind: str | None = None,
    ) -> list[Row]: ...
    def as_at(self, workspace_id: UUID, at: datetime) -> list[Row]: ...


@dataclass(frozen=True)
class AsAt:
    """A workspace at a moment: itself (None: not yet made, or deleted), its active
    members and its sandboxes not yet deleted, and the last position that went in."""

    at: datetime
    position: int
    workspace: Row | None
    members: list[Row]
    sandboxes: list[Row]


class WorkspaceLog:
    def __init__(self, reads: WorkspaceLogReads, access: Access) -> None:
        self._reads = reads
        self._access = access

    @property
    def reads(self) -> WorkspaceLogReads:
        return self._reads

    def head(self, user_id: UUID, workspace_id: UUID) -> int:
        """Where a stream that asks for no past starts (a member only)."""
        self._access.require(workspace_id, user_id, roles.READ)
        return self._reads.head(workspace_id)

    def since(self, user_id: UUID, workspace_id: UUID, position: int, limit: int) -> list[Row]:
        """The events past ``position``, oldest first, while the user is a member."""
        self._access.require(workspace_id, user_id, roles.READ)
        return self._reads.since(workspace_id, position, limit)

    def history(
        self,
        user_id: UUID,
        workspace_id: UUID,
        after: int | None,
        limit: int,
        person: UUID | None,
        kind: str | None,
    ) -> list[Row]:
        """Newest first, ``limit`` at most, older than position ``after`` when given."""
        self._access.require(workspace_id, user_id, roles.READ)
        if not 1 <= limit <= MAX_PAGE:
            raise Invalid(f"limit must be 1 to {MAX_PAGE}", field="limit")
        if kind is not None and kind not in KINDS and "." not in kind:
            raise Invalid(
                "kind must be workspace, member, sandbox or an event's name such as Sandbox.Paused",
                field="kind",
            )
        return self._reads.page(workspace_id, after, limit, person, kind)

    def as_at(self, user_id: UUID, workspace_id: UUID, at: datetime) -> AsAt:
        """Each thing's last row up to ``at``: the log's replay, read from its view."""
        self._access.require(workspace_id, user_id, roles.READ)
        rows = self._reads.as_at(workspace_id, at)
        latest: dict[str, list[Any]] = {kind: [] for kind in KINDS}
        for row in rows:
            item = row["item"]
            if item is not None and not (row["kind"] == "member" and not item["active"]):
                latest[row["kind"]].append(item)
        workspace = latest["workspace"][0] if latest["workspace"] else None
        members = sorted(latest["member"], key=lambda m: (-roles.Role[m["role"]], m["username"]))
        sandboxes = sorted(latest["sandbox"], key=lambda s: (s["created_at"], s["id"]))
        position = max((r["position"] for r in rows), default=0)
        if workspace is None:  # (before it was made, or after it went: nothing to show)
            members, sandboxes = [], []
        return AsAt(at, position, workspace, members, sandboxes)

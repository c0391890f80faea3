"""Who may do what in a workspace, checked against the members view (which a write
updates in its own transaction, so a removed member loses access at once)."""

from __future__ import annotations

from uuid import UUID

from application.errors import Forbidden, NotFound
from application.ports import ReadModel
from domain.roles import Role


class Access:
    def __init__(self, reads: ReadModel) -> None:
        self._reads = reads

    def require(self, workspace_id: UUID, user_id: UUID, least: Role) -> Role:
        """The caller's role, if it is at least ``least``. A non-member gets NotFound,
        so a workspace's existence never leaks; a member lacking the role, Forbidden."""
        name = self._reads.role(workspace_id, user_id)
        if name is None:
            raise NotFound("workspace not found", code="workspace_not_found")
        role = Role[name]
        if role < least:
            raise Forbidden(f"this needs the {least.name} role or higher; you are {role.name}")
        return role

"""Who may do what in a workspace, checked against the members view (which a write
updates in its own transaction, so a removed member loses access at once)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
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
        return _judge(self._reads.role(workspace_id, user_id), least)

    def guard(self, workspace_id: UUID, user_id: UUID, least: Role) -> Callable[[Any], None]:
        """The same rule, checked again inside the save's transaction: a role lost while
        the command ran (say, an owner demoted meanwhile) refuses the save."""
        return self._reads.role_check(workspace_id, user_id, lambda name: _judge(name, least))


def _judge(name: str | None, least: Role) -> Role:
    if name is None:
        raise NotFound("workspace not found", code="workspace_not_found")
    role = Role[name]
    if role < least:
        raise Forbidden(f"this needs the {least.name} role or higher; you are {role.name}")
    return role

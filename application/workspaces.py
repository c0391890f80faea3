"""Workspaces and their members."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from application import validation
from application.access import Access
from application.errors import Forbidden, NotFound, rule_conflicts
from application.eventlog import EventLog, StaleRead
from application.paging import Page, Paged, paged
from application.ports import GrantStore, ReadModel, Row
from domain import roles
from domain.base import acting_as
from domain.roles import Role
from domain.sandboxes import Sandbox
from domain.workspaces import Membership, Workspace


class Workspaces:
    def __init__(self, log: EventLog, reads: ReadModel, access: Access, grants: GrantStore) -> None:
        self._log = log
        self._reads = reads
        self._access = access
        self._grants = grants

    # Reads.
    def list(self, actor: UUID, page: Page) -> Paged:
        """By (created_at, id)."""
        rows = self._reads.workspaces_of(actor, page.after, page.limit + 1)
        return paged(rows, page, lambda r: (r["created_at"], r["id"]))

    def get(self, actor: UUID, workspace_id: UUID) -> Row:
        role = self._access.require(workspace_id, actor, roles.READ)
        row = self._reads.workspace(workspace_id)
        if row is None:
            raise NotFound("workspace not found", code="workspace_not_found")
        return {**row, "role": role.name}

    def members(self, actor: UUID, workspace_id: UUID, page: Page) -> Paged:
        """By (added_at, user_id): one who rejoins is listed anew, at the end."""
        self._access.require(workspace_id, actor, roles.READ)
        rows = self._reads.members(workspace_id, page.after, page.limit + 1)
        return paged(rows, page, lambda r: (r["added_at"], r["user_id"]))

    # Commands.
    def create(self, actor: UUID, name: str) -> Row:
        name = validation.name(name)
        with acting_as(actor):
            workspace = Workspace(name=name, owner_id=actor)
            member = Membership(workspace_id=workspace.id, user_id=actor, role=Role.owner.name)
        self._log.save(workspace, member)
        # What a read would return, known without one.
        return {
            "id": workspace.id,
            "name": workspace.name,
            "created_at": workspace.created_on,
            "member_count": 1,
            "sandbox_count": 0,
            "role": Role.owner.name,
        }

    def delete(self, actor: UUID, workspace_id: UUID) -> None:
        self._access.require(workspace_id, actor, roles.MANAGE_MEMBERS)
        guard = self._access.guard(workspace_id, actor, roles.MANAGE_MEMBERS)

        def command() -> None:
            workspace = self._workspace(workspace_id)
            found = self._reads.live_sandbox_ids(workspace_id)
            sandboxes = [self._log.find(s, Sandbox) for s in found]
            with acting_as(actor):
                workspace.delete()
                live = [s for s in sandboxes if s is not None and s.is_live]
                for sandbox in live:
                    sandbox.delete()  # (at once when the engine holds nothing of it)
            # A sandbox made after the views were read here would outlive the workspace:
            # checked again under the save's lock (its creation, committed first, is in
            # the views by then), the command runs again and deletes it too.
            deleting = {s.id for s in live}
            none_left = self._reads.live_sandboxes_check(
                workspace_id, lambda now: _none_but(now, deleting)
            )
            self._log.save(workspace, *live, checks=[guard, none_left])

        self._log.retrying(command)

    def add_member(self, actor: UUID, workspace_id: UUID, username: str, role_name: str) -> Row:
        actor_role = self._access.require(workspace_id, actor, roles.ADD_MEMBER)
        role = validation.role(role_name)
        if role is Role.owner and actor_role is not Role.owner:
            raise Forbidden("only an owner can add another owner")
        least = Role.owner if role is Role.owner else roles.ADD_MEMBER
        guard = self._access.guard(workspace_id, actor, least)
        user = self._reads.user_by_username(username.strip())
        if user is None:
            raise NotFound(f"no user is named {username.strip()!r}", code="user_not_found")
        user_id: UUID = user["id"]

        def command() -> Membership:
            workspace = self._workspace(workspace_id)
            membership = self._log.find(Membership.create_id(workspace_id, user_id), Membership)
            with acting_as(actor), rule_conflicts():
                if membership is None:
                    membership = Membership(
                        workspace_id=workspace_id, user_id=user_id, role=role.name
                    )
                else:
                    membership.rejoin(role)
                if role is Role.owner:
                    workspace.grant_ownership(user_id)
            self._log.save(membership, workspace, checks=[guard])
            return membership

        return self._member(self._log.retrying(command))

    def change_role(self, actor: UUID, workspace_id: UUID, user_id: UUID, role_name: str) -> Row:
        self._access.require(workspace_id, actor, roles.MANAGE_MEMBERS)
        role = validation.role(role_name)
        guard = self._access.guard(workspace_id, actor, roles.MANAGE_MEMBERS)

        def command() -> Membership:
            workspace = self._workspace(workspace_id)
            membership = self._membership(workspace_id, user_id)
            with acting_as(actor), rule_conflicts():
                if role is Role.owner:
                    workspace.grant_ownership(user_id)
                else:
                    workspace.revoke_ownership(user_id)
                membership.change_role(role)
            self._log.save(membership, workspace, checks=[guard])
            return membership

        return self._member(self._log.retrying(command))

    def remove_member(self, actor: UUID, workspace_id: UUID, user_id: UUID) -> None:
        # Anyone may leave; removing someone else takes an owner.
        least = roles.READ if user_id == actor else roles.MANAGE_MEMBERS
        self._access.require(workspace_id, actor, least)
        guard = self._access.guard(workspace_id, actor, least)

        def command() -> None:
            workspace = self._workspace(workspace_id)
            membership = self._membership(workspace_id, user_id)
            with acting_as(actor), rule_conflicts():
                workspace.revoke_ownership(user_id)
                membership.remove()
            self._log.save(
                membership,
                workspace,
                checks=[guard],
                side_writes=[self._revoke(workspace_id, user_id)],
            )

        self._log.retrying(command)

    # Helpers.
    def _revoke(self, workspace_id: UUID, user_id: UUID) -> Callable[[Any], None]:
        """The member's sandbox grants and access tokens in this workspace, deleted with
        the change (revoked, not suspended: being added again brings none back)."""
        return self._grants.revoke_write(workspace_id, user_id)

    def _workspace(self, workspace_id: UUID) -> Workspace:
        workspace = self._log.find(workspace_id, Workspace)
        if workspace is None or workspace.deleted:
            raise NotFound("workspace not found", code="workspace_not_found")
        return workspace

    def _membership(self, workspace_id: UUID, user_id: UUID) -> Membership:
        membership = self._log.find(Membership.create_id(workspace_id, user_id), Membership)
        if membership is None or not membership.active:
            raise NotFound("that user is not a member of this workspace", code="member_not_found")
        return membership

    def _member(self, saved: Membership) -> Row:
        """The member as the views show it; if a concurrent request already removed them
        again, as this command left them (the command did succeed)."""
        row = self._reads.member(saved.workspace_id, saved.user_id)
        if row is not None:
            return row
        user = self._reads.user(saved.user_id) or {}
        return {
            "user_id": saved.user_id,
            "username": user.get("username", ""),
            "role": saved.role,
            "added_at": saved.modified_on,
        }


def _none_but(live: set[UUID], deleting: set[UUID]) -> None:
    """Refuse a workspace's deletion that would leave a live sandbox in it."""
    if live - deleting:
        raise StaleRead("a sandbox was made in the workspace while it was being deleted")

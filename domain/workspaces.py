"""Workspaces and their memberships.

A Membership is one aggregate per (workspace, user), its id derived from both, so it is
also the index that keeps a user from being a member twice. The Workspace aggregate holds
its lifecycle and the set of owners: every change to ownership is saved with a Workspace
event, so two concurrent commands that would together leave no owner conflict on its
version.

It does not hold its sandboxes (docs/design.md, "The workspace boundary"): a sandbox's
creation saves the Workspace unchanged, so the save checks the workspace is still at the
version read (not deleted meanwhile) without the workspace growing with every sandbox;
the deletion finds the live sandboxes in the views, and checks in its transaction that
no other was made meanwhile.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import event

from domain.base import SandbarAggregate
from domain.errors import AlreadyMember, DomainError, LastOwner, NotMember
from domain.roles import Role


class Workspace(SandbarAggregate):
    # Of its snapshots' state, as each event's below. 2: no more ``sandbox_ids``.
    class_version = 2

    # Declared events (docs/architecture.md, "Changing an event"); their names are their
    # stored topics.
    class Created(SandbarAggregate.Created):
        class_version = 1
        name: str
        owner_id: UUID

    class OwnershipGranted(SandbarAggregate.Event):
        class_version = 1
        user_id: UUID

    class OwnershipRevoked(SandbarAggregate.Event):
        class_version = 1
        user_id: UUID

    # No longer recorded (a sandbox's creation no longer gives its workspace an event);
    # declared so the logs that hold it still decode. It changes no state now.
    class SandboxAttached(SandbarAggregate.Event):
        class_version = 1
        sandbox_id: UUID

    class LimitsSet(SandbarAggregate.Event):
        class_version = 1
        daily_requests: int | None
        daily_tokens: int | None

    class Deleted(SandbarAggregate.Event):
        class_version = 1

    # Daily limits on Anthropic proxy use; None: the installation's default. (Class
    # attributes, so snapshots taken before limits existed still load.)
    daily_requests: int | None = None
    daily_tokens: int | None = None

    @event(Created)
    def __init__(self, name: str, owner_id: UUID) -> None:
        self.name = name
        self.owner_ids: list[UUID] = [owner_id]
        self.deleted = False

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        """A snapshot taken when the workspace listed its sandboxes: the list goes."""
        state.pop("sandbox_ids", None)

    def check_live(self) -> None:
        if self.deleted:
            raise DomainError("the workspace is deleted")

    def grant_ownership(self, user_id: UUID) -> None:
        self.check_live()
        if user_id not in self.owner_ids:
            self._ownership_granted(user_id=user_id)

    @event(OwnershipGranted)
    def _ownership_granted(self, user_id: UUID) -> None:
        self.owner_ids = [*self.owner_ids, user_id]

    def revoke_ownership(self, user_id: UUID) -> None:
        self.check_live()
        if user_id not in self.owner_ids:
            return
        if len(self.owner_ids) == 1:
            raise LastOwner("a workspace must keep at least one owner")
        self._ownership_revoked(user_id=user_id)

    @event(OwnershipRevoked)
    def _ownership_revoked(self, user_id: UUID) -> None:
        self.owner_ids = [u for u in self.owner_ids if u != user_id]

    def set_limits(self, daily_requests: int | None, daily_tokens: int | None) -> None:
        self.check_live()
        for value in (daily_requests, daily_tokens):
            if value is not None and value < 0:
                raise DomainError("a limit cannot be negative")
        self._limits_set(daily_requests=daily_requests, daily_tokens=daily_tokens)

    @event(LimitsSet)
    def _limits_set(self, daily_requests: int | None, daily_tokens: int | None) -> None:
        self.daily_requests = daily_requests
        self.daily_tokens = daily_tokens

    def delete(self) -> None:
        self.check_live()
        self._deleted()

    @event(Deleted)
    def _deleted(self) -> None:
        self.deleted = True


class Membership(SandbarAggregate):
    class_version = 1

    class Added(SandbarAggregate.Created):
        class_version = 1
        workspace_id: UUID
        user_id: UUID
        role: str

    class Rejoined(SandbarAggregate.Event):
        class_version = 1
        role: str

    class RoleChanged(SandbarAggregate.Event):
        class_version = 1
        role: str

    class Removed(SandbarAggregate.Event):
        class_version = 1

    @staticmethod
    def create_id(workspace_id: UUID, user_id: UUID) -> UUID:
        return uuid5(workspace_id, str(user_id))

    @event(Added)
    def __init__(self, workspace_id: UUID, user_id: UUID, role: str) -> None:
        self.workspace_id = workspace_id
        self.user_id = user_id
        self.role = role
        self.active = True

    @property
    def level(self) -> Role:
        return Role[self.role]

    def rejoin(self, role: Role) -> None:
        if self.active:
            raise AlreadyMember("already a member of this workspace")
        self._rejoined(role=role.name)

    @event(Rejoined)
    def _rejoined(self, role: str) -> None:
        self.role = role
        self.active = True

    def change_role(self, role: Role) -> None:
        if not self.active:
            raise NotMember("not a member of this workspace")
        if role.name != self.role:
            self._role_changed(role=role.name)

    @event(RoleChanged)
    def _role_changed(self, role: str) -> None:
        self.role = role

    def remove(self) -> None:
        if not self.active:
            raise NotMember("not a member of this workspace")
        self._removed()

    @event(Removed)
    def _removed(self) -> None:
        self.active = False

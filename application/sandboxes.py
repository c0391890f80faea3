"""Sandboxes: what users command. The container and tunnel sides report outcomes
through the ``record_*`` commands of the Sandbox aggregate."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any
from uuid import UUID

from application import validation
from application.access import Access
from application.errors import NotFound, rule_conflicts
from application.eventlog import EventLog
from application.paging import Page, Paged, paged
from application.ports import ReadModel, Row
from domain import roles
from domain.base import acting_as
from domain.sandboxes import Kind, Sandbox
from domain.workspaces import Workspace


class Sandboxes:
    def __init__(self, log: EventLog, reads: ReadModel, access: Access) -> None:
        self._log = log
        self._reads = reads
        self._access = access

    def list(self, actor: UUID, workspace_id: UUID, page: Page) -> Paged:
        """By (created_at, id)."""
        self._access.require(workspace_id, actor, roles.READ)
        rows = self._reads.sandboxes(workspace_id, page.after, page.limit + 1)
        return paged(rows, page, lambda r: (r["created_at"], r["id"]))

    def get(self, actor: UUID, sandbox_id: UUID) -> Row:
        return self._visible(actor, sandbox_id)

    def create(
        self,
        actor: UUID,
        workspace_id: UUID,
        name: str,
        type_name: str,
        kind: Kind = Kind.cloud,
        side_writes: Callable[[UUID], builtins.list[Any]] | None = None,  # (not the method)
    ) -> Row:
        """A new sandbox. ``side_writes`` (given the new id) commit with its events: a
        local sandbox's tunnel token, say."""
        self._access.require(workspace_id, actor, roles.OPERATE_SANDBOX)
        name = validation.name(name)
        sandbox_type = validation.sandbox_type(type_name)
        guard = self._access.guard(workspace_id, actor, roles.OPERATE_SANDBOX)

        def command() -> Sandbox:
            workspace = self._log.find(workspace_id, Workspace)
            if workspace is None or workspace.deleted:
                raise NotFound("workspace not found", code="workspace_not_found")
            with acting_as(actor):
                sandbox = Sandbox(
                    workspace_id=workspace_id,
                    name=name,
                    type=sandbox_type.value,
                    kind=kind.value,
                )
            writes = side_writes(sandbox.id) if side_writes else []
            # The workspace is saved without an event: the save checks it is still at the
            # version read, so a deletion committed meanwhile refuses this creation (and
            # the command, run again, finds the workspace gone). Creations do not move
            # the workspace's version, so they neither conflict with one another nor
            # make the workspace longer to load.
            self._log.save(sandbox, workspace, checks=[guard], side_writes=writes)
            return sandbox

        return self._answer(actor, self._log.retrying(command))

    def delete(self, actor: UUID, sandbox_id: UUID) -> Row:
        """Deleting: finished at once when the engine holds nothing of the sandbox (a local
        one, a cloud one that never started), else by the container worker; asking again
        while it is being deleted answers the same."""
        return self._transition(actor, sandbox_id, Sandbox.delete)

    def pause(self, actor: UUID, sandbox_id: UUID) -> Row:
        return self._transition(actor, sandbox_id, Sandbox.request_pause)

    def resume(self, actor: UUID, sandbox_id: UUID) -> Row:
        """Resume a paused sandbox, or retry a failed one."""
        return self._transition(actor, sandbox_id, Sandbox.request_resume)

    def _transition(self, actor: UUID, sandbox_id: UUID, change: Callable[[Sandbox], None]) -> Row:
        row = self._reads.sandbox(sandbox_id)
        if row is None:
            raise NotFound("sandbox not found", code="sandbox_not_found")
        try:
            self._access.require(row["workspace_id"], actor, roles.OPERATE_SANDBOX)
        except NotFound:
            raise NotFound("sandbox not found", code="sandbox_not_found") from None
        guard = self._access.guard(row["workspace_id"], actor, roles.OPERATE_SANDBOX)

        def command() -> Sandbox:
            sandbox = self._log.find(sandbox_id, Sandbox)
            if sandbox is None:
                raise NotFound("sandbox not found", code="sandbox_not_found")
            with acting_as(actor), rule_conflicts():
                change(sandbox)
            self._log.save(sandbox, checks=[guard])
            return sandbox

        return self._answer(actor, self._log.retrying(command))

    def _answer(self, actor: UUID, saved: Sandbox) -> Row:
        """The sandbox as the views show it, even if the caller lost sight of it meanwhile
        (their workspace deleted, or they removed): the command they sent did succeed."""
        row = self._reads.sandbox(saved.id)
        if row is not None:
            return row
        return {  # gone from the views already
            "id": saved.id,
            "workspace_id": saved.workspace_id,
            "name": saved.name,
            "type": saved.type.value,
            "kind": saved.kind.value,
            "status": saved.status.value,
            "error": saved.error,
            "created_by": str(actor) if saved.version == 1 else None,
            "created_at": saved.created_on,
            "updated_at": saved.modified_on,
        }

    def _visible(self, actor: UUID, sandbox_id: UUID) -> Row:
        row = self._reads.sandbox(sandbox_id)
        if row is None or self._reads.role(row["workspace_id"], actor) is None:
            raise NotFound("sandbox not found", code="sandbox_not_found")
        return row

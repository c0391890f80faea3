"""Local agents: a member's own machine running opencode or openclaw, reached through a
tunnel it dials. A one-time code (made by a developer or higher, short-lived, stored
hashed) registers an agent: a local sandbox (``offline`` until its tunnel connects) and a
tunnel token (stored hashed). The agent is served only while the member who registered it
is a developer or higher in the workspace. The tunnel's coming and going is recorded as
events."""

from __future__ import annotations

import contextlib
import secrets
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from application import validation
from application.access import Access
from application.errors import AppError, Unauthorized
from application.eventlog import EventLog
from application.ports import ReadModel, Row
from application.sandboxes import Sandboxes
from application.throttle import RateLimit
from domain import roles
from domain.base import SYSTEM, acting_as
from domain.sandboxes import Kind, Sandbox, Status

TOKEN_PREFIX = "sbt_"  # noqa: S105 - a prefix, not a secret


class AgentCredentialStore(Protocol):
    def issue_code(self, workspace_id: UUID, user_id: UUID, ttl: int) -> tuple[str, datetime]: ...
    def take_code(self, code: str) -> dict[str, Any] | None: ...
    def token_write(self, sandbox_id: UUID, token: str) -> object: ...
    def token_matches(self, sandbox_id: UUID, token: str) -> bool: ...


class LocalAgents:
    def __init__(
        self,
        log: EventLog,
        reads: ReadModel,
        access: Access,
        sandboxes: Sandboxes,
        store: AgentCredentialStore,
        attempts: RateLimit,
        *,
        code_ttl: int,
    ) -> None:
        self._log = log
        self._reads = reads
        self._access = access
        self._sandboxes = sandboxes
        self._store = store
        self._attempts = attempts
        self.code_ttl = code_ttl

    def agent_code(self, actor: UUID, workspace_id: UUID) -> tuple[str, datetime]:
        """A one-time code for a new agent, and when it expires."""
        self._access.require(workspace_id, actor, roles.OPERATE_SANDBOX)
        return self._store.issue_code(workspace_id, actor, self.code_ttl)

    def register(self, code: str, name: str, type_name: str, client: str) -> tuple[Row, str]:
        """A new local sandbox and its tunnel token, for a fresh unused code."""
        self._attempts.hit(f"agent-register:{client}", "agent registrations")
        name = validation.name(name)
        validation.sandbox_type(type_name)
        if not code or len(code) > 64:
            raise Unauthorized("that code is not valid", code="invalid_code")
        issued = self._store.take_code(code)
        if issued is None:
            raise Unauthorized("that code is unknown, used or expired", code="invalid_code")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        sandbox = self._sandboxes.create(
            issued["user_id"],
            issued["workspace_id"],
            name,
            type_name,
            kind=Kind.local,
            side_writes=lambda sandbox_id: [self._store.token_write(sandbox_id, token)],
        )
        return sandbox, token

    def may_connect(self, sandbox_id: UUID, token: str) -> bool:
        """Whether ``token`` is the sandbox's and its agent may be served now."""
        return self.unserved(sandbox_id) is None and self._store.token_matches(sandbox_id, token)

    def unserved(self, sandbox_id: UUID) -> str | None:
        """Why the sandbox's agent may not be served now (None: it may). It must be a
        local sandbox not being deleted, whose registrant is still a developer or higher
        in its workspace: the agent runs on that member's machine, so losing the role
        (removed, demoted) loses the tunnel."""
        sandbox = self._reads.sandbox(sandbox_id)
        if (
            sandbox is None
            or sandbox["kind"] != Kind.local
            or sandbox["status"] in (Status.deleting, Status.deleted)
        ):
            return "the sandbox was deleted"
        try:
            registrant = UUID(str(sandbox["created_by"]))
        except ValueError:
            registrant = None  # (not registered by a member)
        role = self._reads.role(sandbox["workspace_id"], registrant) if registrant else None
        if role is None or roles.Role[role] < roles.OPERATE_SANDBOX:
            return "its registrant is no longer a developer in the workspace"
        return None

    def all_offline(self) -> None:
        """On start: no tunnel survives a restart, so no local sandbox is connected."""
        for sandbox_id in self._reads.connected_local_sandboxes():
            self.disconnected(sandbox_id)

    def connected(self, sandbox_id: UUID) -> None:
        self._record(sandbox_id, Status.offline, Sandbox.record_connected)

    def disconnected(self, sandbox_id: UUID) -> None:
        self._record(sandbox_id, Status.running, Sandbox.record_disconnected)

    def _record(self, sandbox_id: UUID, only_from: Status, change: object) -> None:
        def command() -> None:
            sandbox = self._log.find(sandbox_id, Sandbox)
            if sandbox is None or sandbox.status is not only_from:
                return  # already so, or deleted meanwhile
            with acting_as(SYSTEM):
                change(sandbox)  # type: ignore[operator]
            self._log.save(sandbox)

        with contextlib.suppress(AppError):  # (Conflict is one)
            self._log.retrying(command)

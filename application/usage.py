"""Anthropic proxy usage: admitting a sandbox's request under its workspace's daily
limits, recording the tokens it used, and reporting them to members. Owners set their
workspace's own limits (an event); otherwise the installation's defaults apply."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol
from uuid import UUID

from application.access import Access
from application.errors import NotFound, RateLimited, rule_conflicts
from application.eventlog import EventLog
from application.paging import Page, paged
from application.ports import ReadModel, Row
from domain import roles
from domain.base import acting_as
from domain.workspaces import Workspace

MAX_REPORT_DAYS = 366


class UsageStore(Protocol):
    async def reserve(
        self,
        workspace_id: UUID,
        day: date,
        default_requests: int | None,
        default_tokens: int | None,
    ) -> str | None: ...
    def take(self, workspace_id: UUID, day: date) -> bool: ...
    def record(
        self, workspace_id: UUID, sandbox_id: UUID, day: date, counts: dict[str, int]
    ) -> None: ...
    def report(
        self,
        workspace_id: UUID,
        since: date,
        after: tuple[date, UUID] | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Rows from ``since`` on, by (day, sandbox_id) descending: ``limit`` of them,
        those before ``after``."""
        ...

    async def flush(self) -> None: ...
    async def close(self) -> None: ...


class _Today:
    """Today's date in UTC, remembered until midnight (the proxy asks twice a request)."""

    def __init__(self) -> None:
        self._day = date.min
        self._until = 0.0

    def __call__(self) -> date:
        now = time.time()
        if now >= self._until:
            self._day = datetime.fromtimestamp(now, UTC).date()
            self._until = (now // 86400 + 1) * 86400  # (a UTC day is 86400 s)
        return self._day


today = _Today()


def _seconds_to_midnight() -> int:
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    return max(1, int((midnight - now).total_seconds()))


class Usage:
    def __init__(
        self,
        log: EventLog,
        reads: ReadModel,
        access: Access,
        store: UsageStore,
        *,
        default_requests: int | None,
        default_tokens: int | None,
    ) -> None:
        self._log = log
        self._reads = reads
        self._access = access
        self._store = store
        self._default_requests = default_requests
        self._default_tokens = default_tokens

    def limits(self, workspace_id: UUID) -> Row:
        own = self._reads.limits(workspace_id) or {}
        requests = own.get("daily_requests")
        tokens = own.get("daily_tokens")
        return {
            "daily_requests": self._default_requests if requests is None else requests,
            "daily_tokens": self._default_tokens if tokens is None else tokens,
            "own_requests": requests,
            "own_tokens": tokens,
        }

    def admit_now(self, workspace_id: UUID) -> date | None:
        """Count a proxy request without waiting, if what this process has counted ahead
        allows: the day it counts in; None says: ``admit`` it."""
        day = today()
        return day if self._store.take(workspace_id, day) else None

    async def admit(self, workspace_id: UUID) -> date:
        """Count a proxy request against today's limits: the day it counts in (its usage
        is recorded for that day, even if the answer ends after midnight); or refuse it
        (RateLimited). (On the proxy's hot path: one statement, without a thread.)"""
        day = today()
        reached = await self._store.reserve(
            workspace_id, day, self._default_requests, self._default_tokens
        )
        if reached is None:
            return day
        limits = await asyncio.to_thread(self.limits, workspace_id)
        limit = limits[f"daily_{reached}"]
        raise RateLimited(
            f"this workspace has used its daily limit of {limit} {reached[:-1]}"
            f"{'s' if limit != 1 else ''} for the Anthropic API; it resets at 00:00 UTC",
            retry_after=_seconds_to_midnight(),
        )

    def record(
        self, workspace_id: UUID, sandbox_id: UUID, day: date, counts: dict[str, int]
    ) -> None:
        """Record a finished request's tokens for the day it was admitted in (soon, in a
        batch; on the proxy's loop)."""
        self._store.record(workspace_id, sandbox_id, day, counts)

    async def flush(self) -> None:
        """Wait until what was admitted and recorded so far is written."""
        await self._store.flush()

    async def close(self) -> None:
        """Write what is still pending (on shutdown)."""
        await self._store.close()

    def report(self, actor: UUID, workspace_id: UUID, days: int, page: Page) -> Row:
        """The workspace's limits, and a page of its rows: newest day first, then by
        sandbox id, descending. (The rows change as requests are counted; their keys do
        not.) ``next``: the sort key to ask the next page after."""
        self._access.require(workspace_id, actor, roles.READ)
        days = max(1, min(days, MAX_REPORT_DAYS))
        since = today() - timedelta(days=days - 1)
        rows = self._store.report(workspace_id, since, page.after, page.limit + 1)
        found = paged(rows, page, lambda r: (r["day"], r["sandbox_id"]))
        return {"limits": self.limits(workspace_id), "rows": found.rows, "next": found.next}

    def set_limits(
        self, actor: UUID, workspace_id: UUID, daily_requests: int | None, daily_tokens: int | None
    ) -> Row:
        self._access.require(workspace_id, actor, roles.MANAGE_MEMBERS)
        guard = self._access.guard(workspace_id, actor, roles.MANAGE_MEMBERS)

        def command() -> None:
            workspace = self._log.find(workspace_id, Workspace)
            if workspace is None or workspace.deleted:
                raise NotFound("workspace not found", code="workspace_not_found")
            with acting_as(actor), rule_conflicts():
                workspace.set_limits(daily_requests, daily_tokens)
            self._log.save(workspace, checks=[guard])

        self._log.retrying(command)
        return self.limits(workspace_id)

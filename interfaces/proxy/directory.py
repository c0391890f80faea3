"""What the proxy asks on every request (the route, the grant, the member's role), cached
in memory for as long as nothing has changed.

The cache is dropped whenever the change feed moves (any save to the log, any revoked
session), so pausing a sandbox or removing a member shows on the next request; a miss
reads the projections in a worker thread. While the feed cannot vouch for the cache (its
LISTEN connection is down), every lookup reads the database."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

from application.ports import ReadModel, Row
from infrastructure.changes import ChangeFeed
from infrastructure.grants import Grant, Grants

MAX_ENTRIES = 50_000
# Sandboxes that do not exist: anyone can ask for a made-up one, so these get a bound of
# their own (a flood of made-up hosts churns only this, never the cache of real routes).
MAX_UNKNOWN = 1_024
MISS: Any = object()  # not in the cache
# The caches are keyed by ``UUID.int``: a UUID hashes and compares in Python code, an int
# in C, and every proxied request makes several lookups.
K = TypeVar("K")
V = TypeVar("V")


class Directory:
    def __init__(
        self,
        reads: ReadModel,
        grants: Grants,
        changes: ChangeFeed,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self._reads = reads
        self._ready = ready
        self._grants = grants
        self._changes = changes
        self._generation = -1
        self._routes: dict[int, Row | None] = {}
        self._unknown: dict[int, None] = {}  # route lookups that found nothing
        self._roles: dict[tuple[int, int], str | None] = {}
        self._grant_cache: dict[str, Grant | None] = {}  # by token: no HMAC on a hit

    @property
    def ready(self) -> bool:
        """Whether the views are caught up with the log. After an upgrade they are rebuilt
        in the background (interfaces/readiness.py); until then they may lack rows, so the
        proxies answer 503 rather than read them (a missing route is not a 404), and the
        cache stays empty (nothing read from a half-built view is kept)."""
        return self._ready()

    # Without waiting: the cached answer, or MISS.

    def peek_route(self, sandbox_id: UUID) -> Row | None:
        key = sandbox_id.int
        found = self._fresh().get(key, MISS)
        return self._unknown.get(key, MISS) if found is MISS else found

    def peek_role(self, workspace_id: UUID, user_id: UUID) -> str | None:
        self._fresh()
        return self._roles.get((workspace_id.int, user_id.int), MISS)

    def peek_grant(self, token: str) -> Grant | None:
        self._fresh()
        return self._grant_cache.get(token, MISS)

    def _fresh(self) -> dict[int, Row | None]:
        """Drop everything if anything changed since it was cached."""
        generation = self._changes.generation
        if generation != self._generation:
            self._routes.clear()
            self._unknown.clear()
            self._roles.clear()
            self._grant_cache.clear()
            self._generation = generation
        return self._routes

    # Reading through to the database on a miss.

    async def route(self, sandbox_id: UUID) -> Row | None:
        if (known := self.peek_route(sandbox_id)) is not MISS:
            return known
        key = sandbox_id.int
        route = await self._cached(self._routes, key, self._reads.route, sandbox_id)
        if route is None and self._routes.pop(key, MISS) is None:  # (it was kept)
            if len(self._unknown) >= MAX_UNKNOWN:
                self._unknown.clear()
            self._unknown[key] = None
        return route

    async def role(self, workspace_id: UUID, user_id: UUID) -> str | None:
        key = (workspace_id.int, user_id.int)
        return await self._cached(self._roles, key, self._reads.role, workspace_id, user_id)

    async def grant(self, token: str) -> Grant | None:
        digest = self._grants.digest(token)
        return await self._cached(self._grant_cache, token, self._grants.grant, digest)

    async def fresh_route(self, sandbox_id: UUID) -> Row | None:
        """The route as stored now, bypassing the cache."""
        return await asyncio.to_thread(self._reads.route, sandbox_id)

    async def _cached(self, cache: dict[K, V], key: K, load: Callable[..., V], *args: Any) -> V:
        generation = self._changes.generation
        self._fresh()
        if key in cache:
            return cache[key]
        value = await asyncio.to_thread(load, *args)
        # Keep it only if nothing changed while it was read, and the feed is listening.
        if self._changes.reliable and self._changes.generation == generation:
            if len(cache) >= MAX_ENTRIES:
                cache.clear()
            cache[key] = value
        return value

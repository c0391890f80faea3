"""Anthropic proxy usage per sandbox and UTC day, and the per-workspace daily totals its
limits are checked against.

A request is counted when it is admitted, in the same statement that checks the limit
(one row per workspace and day, locked by the upsert), so concurrent requests at the edge
of a request limit never overshoot it. Tokens are known only once a response ends: a
token limit admits requests while the tokens used so far are under it, so it is
overshot by at most what the requests already in flight use."""

from __future__ import annotations

from datetime import date
from typing import Any
from uuid import UUID

from eventsourcing.postgres import PostgresDatastore
from psycopg_pool import AsyncConnectionPool

from infrastructure.database import ensure_tables

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sandbar_usage ("
    " day date NOT NULL, workspace_id uuid NOT NULL, sandbox_id uuid NOT NULL,"
    " requests bigint NOT NULL DEFAULT 0, input_tokens bigint NOT NULL DEFAULT 0,"
    " output_tokens bigint NOT NULL DEFAULT 0,"
    " cache_creation_input_tokens bigint NOT NULL DEFAULT 0,"
    " cache_read_input_tokens bigint NOT NULL DEFAULT 0,"
    " PRIMARY KEY (workspace_id, day, sandbox_id))",
    "CREATE TABLE IF NOT EXISTS sandbar_usage_totals ("
    " workspace_id uuid NOT NULL, day date NOT NULL, requests bigint NOT NULL,"
    " tokens bigint NOT NULL, PRIMARY KEY (workspace_id, day))",
)
COUNTS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
UNLIMITED = 2**62


_LIMITS = (
    "WITH lim AS (SELECT"
    " COALESCE((SELECT daily_requests FROM sandbar_workspaces WHERE id = %(w)s),"
    "  %(default_requests)s, %(unlimited)s) AS requests,"
    " COALESCE((SELECT daily_tokens FROM sandbar_workspaces WHERE id = %(w)s),"
    "  %(default_tokens)s, %(unlimited)s) AS tokens) "
)
# One statement: the workspace's limits (its own, else the default), and a request
# counted only if today's totals are under both. The row lock of the upsert serializes
# concurrent requests of a workspace, so a request limit is never overshot.
_RESERVE = (
    _LIMITS + "INSERT INTO sandbar_usage_totals AS t (workspace_id, day, requests, tokens)"
    " SELECT %(w)s, %(d)s, 1, 0 FROM lim WHERE lim.requests > 0 AND lim.tokens > 0"
    " ON CONFLICT (workspace_id, day) DO UPDATE SET requests = t.requests + 1"
    " WHERE t.requests < (SELECT requests FROM lim) AND t.tokens < (SELECT tokens FROM lim)"
    " RETURNING t.requests"
)
_WHICH = (
    _LIMITS + "SELECT CASE WHEN COALESCE(t.requests, 0) >= lim.requests THEN 'requests'"
    " ELSE 'tokens' END AS reached FROM lim LEFT JOIN sandbar_usage_totals t"
    " ON t.workspace_id = %(w)s AND t.day = %(d)s"
)
_RECORD = (
    "WITH added AS (INSERT INTO sandbar_usage AS u (day, workspace_id, sandbox_id, requests,"
    f" {', '.join(COUNTS)}) VALUES (%(d)s, %(w)s, %(s)s, 1, %(input_tokens)s,"
    " %(output_tokens)s, %(cache_creation_input_tokens)s, %(cache_read_input_tokens)s)"
    " ON CONFLICT (workspace_id, day, sandbox_id) DO UPDATE SET requests = u.requests + 1, "
    + ", ".join(f"{c} = u.{c} + EXCLUDED.{c}" for c in COUNTS)
    + ") UPDATE sandbar_usage_totals SET tokens = tokens + %(total)s"
    " WHERE workspace_id = %(w)s AND day = %(d)s AND %(total)s > 0"
)


class UsageTable:
    """Reserving and recording run on the proxy's event loop, on a small pool of their
    own (autocommit, one statement each, and ``synchronous_commit`` off: a crash may
    lose the last milliseconds of counts, never a consistent total)."""

    def __init__(self, datastore: PostgresDatastore, conninfo: str, pool_size: int = 4) -> None:
        self._db = datastore
        self._conninfo = conninfo
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool | None = None
        ensure_tables(self._db, SCHEMA)

    async def _connections(self) -> AsyncConnectionPool:
        if self._pool is None:
            self._pool = AsyncConnectionPool(
                self._conninfo,
                min_size=1,
                max_size=self._pool_size,
                open=False,
                kwargs={"autocommit": True, "options": "-c synchronous_commit=off"},
            )
            await self._pool.open()
        return self._pool

    async def reserve(
        self,
        workspace_id: UUID,
        day: date,
        default_requests: int | None,
        default_tokens: int | None,
    ) -> str | None:
        """Count one request if the workspace is under both limits today; else the
        name of the limit reached ("requests" or "tokens")."""
        params = {
            "w": workspace_id,
            "d": day,
            "default_requests": default_requests,
            "default_tokens": default_tokens,
            "unlimited": UNLIMITED,
        }
        pool = await self._connections()
        async with pool.connection() as conn:
            row = await (await conn.execute(_RESERVE, params, prepare=True)).fetchone()
            if row is not None:
                return None
            which = await (await conn.execute(_WHICH, params)).fetchone()
        return which[0] if which else "requests"

    async def record(
        self, workspace_id: UUID, sandbox_id: UUID, day: date, counts: dict[str, int]
    ) -> None:
        """Add one finished request and its tokens."""
        values = {name: max(0, int(counts.get(name, 0))) for name in COUNTS}
        params = {"w": workspace_id, "s": sandbox_id, "d": day, "total": sum(values.values())}
        pool = await self._connections()
        async with pool.connection() as conn:
            await conn.execute(_RECORD, {**params, **values}, prepare=True)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    def report(self, workspace_id: UUID, since: date) -> list[dict[str, Any]]:
        with self._db.get_connection() as conn:
            return conn.execute(
                f"SELECT day, sandbox_id, requests, {', '.join(COUNTS)} FROM sandbar_usage"
                " WHERE workspace_id = %s AND day >= %s ORDER BY day DESC, sandbox_id",
                (workspace_id, since),
            ).fetchall()

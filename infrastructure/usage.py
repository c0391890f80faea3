"""Anthropic proxy usage per sandbox and UTC day, and the per-workspace daily totals its
limits are checked against.

Requests are counted when admitted, in the statement that checks the limit (one row per
workspace and day, locked by the upsert), so concurrent requests at the edge of a request
limit never overshoot it. Tokens are known only once a response ends: a token limit admits
requests while the tokens used so far are under it, so it is overshot by at most what the
requests already in flight use.

Both run as group commits (infrastructure/group_commit.py): requests admitted while a
statement is under way are counted together by the next one, which grants as many as the
limit leaves (the first ones in; the rest are refused), and finished requests are recorded
together, so the proxy issues a statement per batch rather than two per request."""

from __future__ import annotations

from datetime import date
from typing import Any
from uuid import UUID

from eventsourcing.postgres import PostgresDatastore
from psycopg_pool import AsyncConnectionPool

from infrastructure.database import ensure_tables
from infrastructure.group_commit import GroupCommit

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
    # What the last reserving statement granted (RETURNING sees only new values).
    "ALTER TABLE sandbar_usage_totals ADD COLUMN IF NOT EXISTS granted bigint NOT NULL DEFAULT 0",
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
# One statement: the workspace's limits (its own, else the default), and up to n requests
# counted if today's totals are under both; ``granted`` says how many. The row lock of the
# upsert serializes concurrent batches of a workspace, so a request limit is never overshot.
_RESERVE = (
    _LIMITS + "INSERT INTO sandbar_usage_totals AS t (workspace_id, day, requests, tokens, granted)"
    " SELECT %(w)s, %(d)s, LEAST(%(n)s, lim.requests), 0, LEAST(%(n)s, lim.requests) FROM lim"
    " WHERE lim.requests > 0 AND lim.tokens > 0"
    " ON CONFLICT (workspace_id, day) DO UPDATE"
    " SET requests = t.requests + LEAST(%(n)s, (SELECT requests FROM lim) - t.requests),"
    " granted = LEAST(%(n)s, (SELECT requests FROM lim) - t.requests)"
    " WHERE t.requests < (SELECT requests FROM lim) AND t.tokens < (SELECT tokens FROM lim)"
    " RETURNING t.granted"
)
_WHICH = (
    _LIMITS + "SELECT CASE WHEN COALESCE(t.requests, 0) >= lim.requests THEN 'requests'"
    " ELSE 'tokens' END AS reached FROM lim LEFT JOIN sandbar_usage_totals t"
    " ON t.workspace_id = %(w)s AND t.day = %(d)s"
)
# A batch of finished requests, merged per sandbox and day, in one statement.
_RECORD = (
    "WITH v AS (SELECT * FROM unnest(%(d)s::date[], %(w)s::uuid[], %(s)s::uuid[],"
    " %(r)s::bigint[], %(i)s::bigint[], %(o)s::bigint[], %(cc)s::bigint[], %(cr)s::bigint[])"
    f" AS v(day, workspace_id, sandbox_id, requests, {', '.join(COUNTS)})),"
    " added AS (INSERT INTO sandbar_usage AS u (day, workspace_id, sandbox_id, requests,"
    f" {', '.join(COUNTS)}) SELECT * FROM v"
    " ON CONFLICT (workspace_id, day, sandbox_id) DO UPDATE SET"
    " requests = u.requests + EXCLUDED.requests, "
    + ", ".join(f"{c} = u.{c} + EXCLUDED.{c}" for c in COUNTS)
    + ") UPDATE sandbar_usage_totals t SET tokens = t.tokens + x.total FROM"
    f" (SELECT workspace_id, day, sum({' + '.join(COUNTS)}) AS total FROM v"
    " GROUP BY workspace_id, day) x"
    " WHERE t.workspace_id = x.workspace_id AND t.day = x.day AND x.total > 0"
)
Reservation = tuple[UUID, date, int | None, int | None]  # workspace, day, default limits
Finished = tuple[UUID, UUID, date, dict[str, int]]  # workspace, sandbox, day, token counts


class UsageTable:
    """Reserving and recording run on the proxy's event loop, on a small pool of their
    own (autocommit, and ``synchronous_commit`` off: a crash may lose the last
    milliseconds of counts, never a consistent total)."""

    def __init__(self, datastore: PostgresDatastore, conninfo: str, pool_size: int = 4) -> None:
        self._db = datastore
        self._conninfo = conninfo
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool | None = None
        self._reserving = GroupCommit(self._reserve_batch)
        self._recording = GroupCommit(self._record_batch)
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
        return await self._reserving.submit((workspace_id, day, default_requests, default_tokens))

    async def _reserve_batch(self, batch: list[Reservation]) -> list[str | None]:
        asked: dict[Reservation, int] = {}
        for reservation in batch:
            asked[reservation] = asked.get(reservation, 0) + 1
        left: dict[Reservation, int] = {}  # granted, not yet handed out
        reached: dict[Reservation, str] = {}
        pool = await self._connections()
        async with pool.connection() as conn:
            for key, n in asked.items():
                workspace_id, day, default_requests, default_tokens = key
                params = {
                    "w": workspace_id,
                    "d": day,
                    "n": n,
                    "default_requests": default_requests,
                    "default_tokens": default_tokens,
                    "unlimited": UNLIMITED,
                }
                row = await (await conn.execute(_RESERVE, params, prepare=True)).fetchone()
                left[key] = int(row[0]) if row else 0
                if left[key] < n:
                    which = await (await conn.execute(_WHICH, params)).fetchone()
                    reached[key] = which[0] if which else "requests"
        results: list[str | None] = []
        for key in batch:  # the first ones in get what was granted
            if left[key] > 0:
                left[key] -= 1
                results.append(None)
            else:
                results.append(reached[key])
        return results

    def record(
        self, workspace_id: UUID, sandbox_id: UUID, day: date, counts: dict[str, int]
    ) -> None:
        """Add one finished request and its tokens (written with the next batch)."""
        self._recording.post((workspace_id, sandbox_id, day, counts))

    async def _record_batch(self, batch: list[Finished]) -> list[None]:
        merged: dict[tuple[date, UUID, UUID], list[int]] = {}
        for workspace_id, sandbox_id, day, counts in batch:
            row = merged.setdefault((day, workspace_id, sandbox_id), [0] * (1 + len(COUNTS)))
            row[0] += 1
            for i, name in enumerate(COUNTS, start=1):
                row[i] += max(0, int(counts.get(name, 0)))
        keys, rows = list(merged), list(merged.values())
        columns = list(zip(*rows, strict=True))
        params = {
            "d": [k[0] for k in keys],
            "w": [k[1] for k in keys],
            "s": [k[2] for k in keys],
            **{
                name: list(col)
                for name, col in zip(("r", "i", "o", "cc", "cr"), columns, strict=True)
            },
        }
        pool = await self._connections()
        async with pool.connection() as conn:
            await conn.execute(_RECORD, params, prepare=True)
        return [None] * len(batch)

    async def flush(self) -> None:
        """Wait until every request admitted and recorded so far is written."""
        await self._reserving.flush()
        await self._recording.flush()

    async def close(self) -> None:
        await self.flush()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def report(self, workspace_id: UUID, since: date) -> list[dict[str, Any]]:
        with self._db.get_connection() as conn:
            return conn.execute(
                f"SELECT day, sandbox_id, requests, {', '.join(COUNTS)} FROM sandbar_usage"
                " WHERE workspace_id = %s AND day >= %s ORDER BY day DESC, sandbox_id",
                (workspace_id, since),
            ).fetchall()

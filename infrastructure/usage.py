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
together, so the proxy issues a statement per batch rather than two per request.

A workspace that keeps asking is counted ahead: each reservation asks for as many
requests as wait and enough more that this process holds some ahead of need (twice as
many as the last time, up to ``MAX_AHEAD``), and hands them out without a statement
(``take``) while nothing has changed (the change feed's generation: a new limit, say),
the tokens it knows of are under the limit, and the day is the same. The tokens it knows
of are the day's total as every statement of its own returns it (reservations, and each
batch of records: other processes' tokens show within a batch) plus its own since. Once
half of a lease is handed out, it asks for more without waiting (so that under steady
load no request waits for a statement), unless the last reservation got less than it
asked for (the limit is near); a reservation the table refuses (a limit is reached, by
whichever process) ends the lease. What a lease still holds is given back when it lapses,
when it has been idle for ``IDLE_SECONDS`` and on shutdown, so a request limit is never
overshot; near it, another process may be refused what this one holds unused, for at
most that long. A crash loses the lease (its requests stay counted, refusing that many
too early, that day)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import date
from typing import Any
from uuid import UUID

from eventsourcing.postgres import PostgresDatastore
from psycopg_pool import AsyncConnectionPool

from infrastructure.changes import ChangeFeed
from infrastructure.database import ensure_tables
from infrastructure.group_commit import GroupCommit, own_copy

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
MAX_AHEAD = 256  # requests counted ahead of need, at most, per workspace and process
IDLE_SECONDS = 2.0  # a lease unused this long gives back what it holds
RECORD_EVERY = 0.05  # seconds a batch of finished requests gathers before it is written
RETRY_AFTER = 1.0  # seconds before records the database refused are written again

log = logging.getLogger(__name__)


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
    " RETURNING t.granted, t.tokens, (SELECT tokens FROM lim)"
)
_GIVE_BACK = (
    "UPDATE sandbar_usage_totals SET requests = GREATEST(0, requests - %(n)s)"
    " WHERE workspace_id = %(w)s AND day = %(d)s"
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
    " RETURNING t.workspace_id, t.day, t.tokens"  # (every process's, for the leases)
)
# Workspace, day, default limits, and whether a request waits for it (else a top-up).
Reservation = tuple[UUID, date, int | None, int | None, bool]
Key = tuple[UUID, date, int | None, int | None]
Limits = tuple[int | None, int | None]  # the default limits a reservation was made with
Finished = tuple[UUID, UUID, date, dict[str, int]]  # workspace, sandbox, day, token counts


@dataclass
class Lease:
    """Requests of a workspace and day counted in the table, not yet handed out."""

    left: int = 0
    ahead: int = 0  # how many more than are waiting the next reservation asks for
    tokens: int = 0  # the day's tokens when last reserved, and those recorded here since
    token_limit: int = UNLIMITED
    generation: int | None = None  # the change feed's when reserved (None: not to use)
    used: float = 0.0  # when a request was last handed out
    defaults: Limits = (None, None)
    topping_up: bool = False  # a reservation for more is on its way

    def valid(self, generation: int | None) -> bool:
        return (
            generation is not None
            and generation == self.generation
            and self.tokens < self.token_limit
        )


class UsageTable:
    """Reserving and recording run on the proxy's event loop, on a small pool of their
    own (autocommit, and ``synchronous_commit`` off: a crash may lose the last
    milliseconds of counts, never a consistent total)."""

    def __init__(
        self,
        datastore: PostgresDatastore,
        conninfo: str,
        changes: ChangeFeed | None = None,
        pool_size: int = 4,
    ) -> None:
        self._db = datastore
        self._conninfo = conninfo
        self._changes = changes
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool | None = None
        self._leases: dict[tuple[UUID, date], Lease] = {}
        # Records a write failed for (the database was away, say), merged per sandbox and
        # day (so bounded by the sandboxes in use): written with the next batch.
        self._unwritten: dict[tuple[date, UUID, UUID], list[int]] = {}
        # Requests that lapsed leases give back, not yet written back (per workspace, day).
        self._owed: dict[tuple[UUID, date], int] = {}
        self._retry: asyncio.TimerHandle | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._reserving = GroupCommit(self._reserve_batch)
        self._recording: GroupCommit[Finished | None, None] = GroupCommit(
            self._record_batch, linger=RECORD_EVERY
        )
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

    def _generation(self) -> int | None:
        changes = self._changes
        return changes.generation if changes is not None and changes.reliable else None

    def take(self, workspace_id: UUID, day: date) -> bool:
        """Count one request from this process's lease, if it holds one that is good."""
        lease = self._leases.get((workspace_id, day))
        if lease is None or lease.left <= 0 or not lease.valid(self._generation()):
            return False
        lease.left -= 1
        lease.used = time.monotonic()
        if lease.left <= lease.ahead // 2 and lease.ahead > 0 and not lease.topping_up:
            lease.topping_up = True
            self._reserving.post((workspace_id, day, *lease.defaults, False))
        return True

    async def reserve(
        self,
        workspace_id: UUID,
        day: date,
        default_requests: int | None,
        default_tokens: int | None,
    ) -> str | None:
        """Count one request if the workspace is under both limits today; else the
        name of the limit reached ("requests" or "tokens"). Raises what the database
        raised when this workspace's request could not be counted."""
        reservation = (workspace_id, day, default_requests, default_tokens, True)
        reached = await self._reserving.submit(reservation)
        if isinstance(reached, Exception):  # (the batch's requests share it: raise a copy)
            raise own_copy(reached)
        return reached

    async def _reserve_batch(self, batch: list[Reservation]) -> list[str | Exception | None]:
        asked: dict[Key, int] = {}
        topping_up: set[Key] = set()  # (asked for more with requests left: a statement even so)
        for reservation in batch:
            key, waits = reservation[:4], reservation[4]
            asked[key] = asked.get(key, 0) + (1 if waits else 0)
            if not waits:
                topping_up.add(key)
        left: dict[Key, int] = {}  # granted, not yet handed out
        # The limit a workspace reached, or why its statement failed (that workspace's
        # requests alone are refused: the others' in the batch stand).
        reached: dict[Key, str | Exception] = {}
        generation = self._generation()  # before reading: a change while reading shows
        if any(reservation[4] for reservation in batch):  # (a request waits)
            # The tokens of answers already ended count. (A top-up does not wait for
            # them: it keeps what it knows of those, and a request that waits refreshes
            # it; a statement waited for under load was what let leases run dry.)
            await self._recording.flush()
        pool = await self._connections()
        async with pool.connection() as conn:
            await self._give_back(conn, generation)
            for key, n in asked.items():
                workspace_id, day, default_requests, default_tokens = key
                lease = self._leases.get((workspace_id, day))
                if lease is not None and lease.valid(generation) and lease.left > 0:
                    # Granted by the statement that ran while these waited.
                    taken = min(n, lease.left)
                    lease.left -= taken
                    left[key] = taken
                    if taken == n and key not in topping_up:
                        continue
                    n -= taken
                else:
                    left[key] = 0
                if lease is None:
                    lease = self._leases[workspace_id, day] = Lease()
                ahead = lease.ahead if generation is not None else 0
                # As many as wait, and enough more that the lease holds ``ahead``.
                asking = n + max(0, ahead - lease.left)
                if asking == 0:
                    lease.topping_up = False  # (it holds enough)
                    continue
                params = {
                    "w": workspace_id,
                    "d": day,
                    "n": asking,
                    "default_requests": default_requests,
                    "default_tokens": default_tokens,
                    "unlimited": UNLIMITED,
                }
                try:
                    row = await (await conn.execute(_RESERVE, params, prepare=True)).fetchone()
                except Exception as e:
                    reached[key] = e
                    lease.topping_up = False
                    continue
                granted = int(row[0]) if row else 0
                left[key] += min(n, granted)
                lease.left += granted - min(n, granted)  # (more, if topped up)
                lease.used = time.monotonic()
                lease.defaults = (default_requests, default_tokens)
                lease.topping_up = False
                if row is not None:
                    lease.tokens, lease.token_limit = max(lease.tokens, int(row[1])), int(row[2])
                    lease.generation = generation
                    lease.ahead = min(MAX_AHEAD, max(1, ahead * 2))
                else:
                    # A limit is reached, perhaps by other processes' requests: nothing
                    # more is handed out from the lease, and what it holds goes back.
                    lease.generation = None
                if granted < asking:
                    lease.ahead = 0  # the limit is near: no more asked ahead, nor topped up
                if granted < n:
                    try:
                        which = await (await conn.execute(_WHICH, params)).fetchone()
                        reached[key] = which[0] if which else "requests"
                    except Exception as e:
                        reached[key] = e
        self._sweep_later()
        results: list[str | Exception | None] = []
        for reservation in batch:  # the first ones in get what was granted
            key = reservation[:4]
            if not reservation[4]:
                results.append(None)  # (a top-up: nobody waits for it)
            elif left[key] > 0:
                left[key] -= 1
                results.append(None)
            else:
                results.append(reached[key])
        return results

    async def _give_back(self, conn: Any, generation: int | None, everything: bool = False) -> None:
        """Return what lapsed leases hold (idle, outdated, past their day; or all)."""
        now = time.monotonic()
        today = max((day for _, day in self._leases), default=None)
        for key, lease in list(self._leases.items()):
            lapsed = (
                everything
                or not lease.valid(generation)
                or now - lease.used > IDLE_SECONDS
                or key[1] != today
            )
            if not lapsed:
                continue
            if key[1] != today or everything:
                del self._leases[key]
            else:
                lease.ahead //= 2  # it was more than was needed
            if lease.left > 0:
                self._owed[key] = self._owed.get(key, 0) + lease.left
                lease.left = 0
        for key, held in list(self._owed.items()):  # (kept until written: none is lost)
            params = {"w": key[0], "d": key[1], "n": held}
            await conn.execute(_GIVE_BACK, params, prepare=True)
            del self._owed[key]

    def _sweep_later(self) -> None:
        """While leases hold requests, a sweep in IDLE_SECONDS gives back those gone idle."""
        if self._sweeper is None and any(lease.left > 0 for lease in self._leases.values()):
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(IDLE_SECONDS, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        if any(lease.left > 0 for lease in self._leases.values()):
            self._recording.post(None)  # a batch with nothing to record gives back

    def record(
        self, workspace_id: UUID, sandbox_id: UUID, day: date, counts: dict[str, int]
    ) -> None:
        """Add one finished request and its tokens (written with the next batch)."""
        lease = self._leases.get((workspace_id, day))
        if lease is not None:
            lease.tokens += sum(max(0, int(counts.get(name, 0))) for name in COUNTS)
        self._recording.post((workspace_id, sandbox_id, day, counts))

    async def _record_batch(self, batch: list[Finished | None]) -> list[None]:
        merged, self._unwritten = self._unwritten, {}
        for finished in batch:
            if finished is None:
                continue  # (a sweep, or a retry)
            workspace_id, sandbox_id, day, counts = finished
            row = merged.setdefault((day, workspace_id, sandbox_id), [0] * (1 + len(COUNTS)))
            row[0] += 1
            for i, name in enumerate(COUNTS, start=1):
                row[i] += max(0, int(counts.get(name, 0)))
        try:
            pool = await self._connections()
            async with pool.connection() as conn:
                if merged:
                    await self._write_records(conn, merged)
                await self._give_back(conn, self._generation())
        except Exception as e:  # records are kept and written again soon: none is lost
            for key, row in merged.items():
                kept = self._unwritten.setdefault(key, [0] * len(row))
                for i, value in enumerate(row):
                    kept[i] += value
            if merged or self._owed:
                self._retry_later()
            log.warning(
                "could not write usage (%d sandbox-day(s) and %d give-back(s) kept to try"
                " again in %g s): %s",
                len(merged),
                len(self._owed),
                RETRY_AFTER,
                e,
            )
        self._sweep_later()
        return [None] * len(batch)

    async def _write_records(
        self, conn: Any, merged: dict[tuple[date, UUID, UUID], list[int]]
    ) -> None:
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
        totals = await (await conn.execute(_RECORD, params, prepare=True)).fetchall()
        for workspace_id, day, tokens in totals:  # (other processes' too)
            lease = self._leases.get((workspace_id, day))
            if lease is not None:
                lease.tokens = max(lease.tokens, int(tokens))

    def _retry_later(self) -> None:
        if self._retry is None:
            loop = asyncio.get_running_loop()
            self._retry = loop.call_later(RETRY_AFTER, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        if self._unwritten or self._owed:
            self._recording.post(None)

    async def flush(self) -> None:
        """Wait until every request admitted and recorded so far is written."""
        await self._reserving.flush()
        await self._recording.flush()

    async def close(self) -> None:
        for timer in (self._sweeper, self._retry):
            if timer is not None:
                timer.cancel()
        self._sweeper = self._retry = None
        await self.flush()
        if self._unwritten:  # one last try
            self._recording.post(None)
            await self._recording.flush()
        if self._unwritten:
            log.error(
                "the usage of %d sandbox(es) could not be written before shutdown: %s",
                len(self._unwritten),
                self._unwritten,
            )
        if self._leases or self._owed:
            pool = await self._connections()
            async with pool.connection() as conn:
                await self._give_back(conn, None, everything=True)
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

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

The lease policy (how many requests a process counts ahead of need, and when it gives
them back) is infrastructure/usage_leases.py, apart from the statements: this module runs
what it asks for. A crash loses the lease (its requests stay counted, refusing that many
too early, that day)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import astuple, dataclass
from datetime import date
from typing import Any, NamedTuple
from uuid import UUID

from eventsourcing.postgres import PostgresDatastore
from psycopg_pool import AsyncConnectionPool

from infrastructure.changes import ChangeFeed
from infrastructure.database import ensure_tables
from infrastructure.group_commit import GroupCommit, own_copy
from infrastructure.usage_leases import (
    IDLE_SECONDS,
    UNLIMITED,
    Asked,
    Defaults,
    Leases,
    Reservation,
    Reserved,
    hand_out,
)

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
__all__ = ["COUNTS", "IDLE_SECONDS", "Finished", "UsageTable"]


class Finished(NamedTuple):
    """A request that has ended, and the tokens it used."""

    workspace_id: UUID
    sandbox_id: UUID
    day: date
    counts: dict[str, int]


class SandboxDay(NamedTuple):
    """A row of ``sandbar_usage``."""

    day: date
    workspace_id: UUID
    sandbox_id: UUID


@dataclass
class Tally:
    """Requests and tokens to add to a ``sandbar_usage`` row (fields in ``COUNTS``'s
    order after ``requests``, as ``_RECORD`` takes them)."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def add(self, counts: dict[str, int]) -> None:
        """One more request, with its token ``counts``."""
        self.requests += 1
        self.input_tokens += max(0, int(counts.get("input_tokens", 0)))
        self.output_tokens += max(0, int(counts.get("output_tokens", 0)))
        self.cache_creation_input_tokens += max(
            0, int(counts.get("cache_creation_input_tokens", 0))
        )
        self.cache_read_input_tokens += max(0, int(counts.get("cache_read_input_tokens", 0)))

    def merge(self, other: Tally) -> None:
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_creation_input_tokens += other.cache_creation_input_tokens
        self.cache_read_input_tokens += other.cache_read_input_tokens


def tokens_of(counts: dict[str, int]) -> int:
    return sum(max(0, int(counts.get(name, 0))) for name in COUNTS)


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
        self._leases = Leases()
        # Records a write failed for (the database was away, say), merged per sandbox and
        # day (so bounded by the sandboxes in use): written with the next batch.
        self._unwritten: dict[SandboxDay, Tally] = {}
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
        lease = self._leases.take(workspace_id, day, self._generation(), time.monotonic())
        if lease is None:
            return False
        if lease.top_up_due():
            self._reserving.post(Reservation(workspace_id, day, lease.defaults, False))
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
        defaults = Defaults(default_requests, default_tokens)
        reached = await self._reserving.submit(Reservation(workspace_id, day, defaults, True))
        if isinstance(reached, Exception):  # (the batch's requests share it: raise a copy)
            raise own_copy(reached)
        return reached

    async def _reserve_batch(self, batch: list[Reservation]) -> list[str | Exception | None]:
        waiting: dict[Asked, int] = {}
        topping_up: set[Asked] = set()  # (asked for more with requests left: a statement even so)
        for reservation in batch:
            asked = reservation.asked
            waiting[asked] = waiting.get(asked, 0) + (1 if reservation.waits else 0)
            if not reservation.waits:
                topping_up.add(asked)
        counted: dict[Asked, int] = {}  # for the requests that wait
        # The limit a workspace reached, or why its statement failed (that workspace's
        # requests alone are refused: the others' in the batch stand).
        reached: dict[Asked, str | Exception] = {}
        generation = self._generation()  # before reading: a change while reading shows
        if any(reservation.waits for reservation in batch):
            # The tokens of answers already ended count. (A top-up does not wait for
            # them: it keeps what it knows of those, and a request that waits refreshes
            # it; a statement waited for under load was what let leases run dry.)
            await self._recording.flush()
        pool = await self._connections()
        async with pool.connection() as conn:
            await self._give_back(conn, generation)
            for asked, n in waiting.items():
                ask = self._leases.plan(asked, n, asked in topping_up, generation)
                counted[asked] = ask.from_lease
                if ask.asking == 0:
                    continue
                params = {
                    "w": asked.workspace_id,
                    "d": asked.day,
                    "n": ask.asking,
                    "default_requests": asked.defaults.requests,
                    "default_tokens": asked.defaults.tokens,
                    "unlimited": UNLIMITED,
                }
                try:
                    row = await (await conn.execute(_RESERVE, params, prepare=True)).fetchone()
                except Exception as e:
                    reached[asked] = e
                    self._leases.failed(asked)
                    continue
                reserved = Reserved(*map(int, row)) if row is not None else None
                got = self._leases.reserved(asked, ask, reserved, generation, time.monotonic())
                counted[asked] += got
                if got < ask.still_waiting:
                    try:
                        which = await (await conn.execute(_WHICH, params)).fetchone()
                        reached[asked] = which[0] if which else "requests"
                    except Exception as e:
                        reached[asked] = e
        self._sweep_later()
        return hand_out(batch, counted, reached)

    async def _give_back(self, conn: Any, generation: int | None, everything: bool = False) -> None:
        """Return what lapsed leases hold (idle, outdated, past their day; or all)."""
        leases = self._leases
        leases.lapse(generation, time.monotonic(), everything)
        for key, held in list(leases.owed.items()):  # (kept until written: none is lost)
            params = {"w": key.workspace_id, "d": key.day, "n": held}
            await conn.execute(_GIVE_BACK, params, prepare=True)
            del leases.owed[key]

    def _sweep_later(self) -> None:
        """While leases hold requests, a sweep in IDLE_SECONDS gives back those gone idle."""
        if self._sweeper is None and self._leases.holding():
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(IDLE_SECONDS, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        if self._leases.holding():
            self._recording.post(None)  # a batch with nothing to record gives back

    def record(
        self, workspace_id: UUID, sandbox_id: UUID, day: date, counts: dict[str, int]
    ) -> None:
        """Add one finished request and its tokens (written with the next batch)."""
        self._leases.recorded(workspace_id, day, tokens_of(counts))
        self._recording.post(Finished(workspace_id, sandbox_id, day, counts))

    async def _record_batch(self, batch: list[Finished | None]) -> list[None]:
        merged, self._unwritten = self._unwritten, {}
        for finished in batch:
            if finished is None:
                continue  # (a sweep, or a retry)
            key = SandboxDay(finished.day, finished.workspace_id, finished.sandbox_id)
            tally = merged.get(key)
            if tally is None:
                tally = merged[key] = Tally()
            tally.add(finished.counts)
        try:
            pool = await self._connections()
            async with pool.connection() as conn:
                if merged:
                    await self._write_records(conn, merged)
                await self._give_back(conn, self._generation())
        except Exception as e:  # records are kept and written again soon: none is lost
            for key, tally in merged.items():
                kept = self._unwritten.get(key)
                if kept is None:
                    kept = self._unwritten[key] = Tally()
                kept.merge(tally)
            if merged or self._leases.owed:
                self._retry_later()
            log.warning(
                "could not write usage (%d sandbox-day(s) and %d give-back(s) kept to try"
                " again in %g s): %s",
                len(merged),
                len(self._leases.owed),
                RETRY_AFTER,
                e,
            )
        self._sweep_later()
        return [None] * len(batch)

    async def _write_records(self, conn: Any, merged: dict[SandboxDay, Tally]) -> None:
        keys, tallies = list(merged), list(merged.values())
        columns = list(zip(*(astuple(tally) for tally in tallies), strict=True))
        params = {
            "d": [k.day for k in keys],
            "w": [k.workspace_id for k in keys],
            "s": [k.sandbox_id for k in keys],
            **{
                name: list(col)
                for name, col in zip(("r", "i", "o", "cc", "cr"), columns, strict=True)
            },
        }
        totals = await (await conn.execute(_RECORD, params, prepare=True)).fetchall()
        for workspace_id, day, tokens in totals:  # (other processes' too)
            self._leases.total_seen(workspace_id, day, int(tokens))

    def _retry_later(self) -> None:
        if self._retry is None:
            loop = asyncio.get_running_loop()
            self._retry = loop.call_later(RETRY_AFTER, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        if self._unwritten or self._leases.owed:
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
        if len(self._leases) or self._leases.owed:
            pool = await self._connections()
            async with pool.connection() as conn:
                await self._give_back(conn, None, everything=True)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def report(
        self,
        workspace_id: UUID,
        since: date,
        after: tuple[date, UUID] | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """By (day, sandbox_id) descending: the primary key's index, read backwards."""
        before = "" if after is None else " AND (day, sandbox_id) < (%s, %s)"
        with self._db.get_connection() as conn:
            return conn.execute(
                f"SELECT day, sandbox_id, requests, {', '.join(COUNTS)} FROM sandbar_usage"
                f" WHERE workspace_id = %s AND day >= %s{before}"
                " ORDER BY day DESC, sandbox_id DESC LIMIT %s",
                (workspace_id, since, *(after or ()), limit),
                prepare=True,
            ).fetchall()

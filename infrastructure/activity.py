"""When each sandbox was last used, shared by every process through one small table.

The proxies call ``note`` on their hot paths (each admitted request, and every few
seconds each open stream): it only notes the time in memory, never touching the
database. The proxy's keeper writes the notes from a thread every few seconds
(``flush``), and ``touch`` (note, then write if ``flush_every`` seconds have passed) is
for callers off the event loop. The container worker's idle check reads ``last_seen``.
Activity is not an event: it changes with every request and the audit needs none of it."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from uuid import UUID

from eventsourcing.postgres import PostgresDatastore

from infrastructure.database import ensure_tables

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sandbar_activity ("
    " sandbox_id uuid PRIMARY KEY, last_seen timestamptz NOT NULL)"
)


class ActivityTable:
    def __init__(self, datastore: PostgresDatastore, flush_every: float = 5.0) -> None:
        self._db = datastore
        self._flush_every = flush_every
        # Seconds since the epoch: the hot path reads a float clock, the flush makes dates.
        self._pending: dict[UUID, float] = {}
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        ensure_tables(self._db, SCHEMA)

    def touch(self, sandbox_id: UUID) -> None:
        """Note a use, and write the notes if they are due."""
        self.note(sandbox_id)
        if time.monotonic() - self._last_flush >= self._flush_every:
            self.flush()

    def note(self, sandbox_id: UUID) -> None:
        """Note a use; never touches the database (for an event loop's hot path, whose
        owner calls ``flush`` from a thread now and then)."""
        with self._lock:
            self._pending[sandbox_id] = time.time()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._last_flush = time.monotonic()
        if not pending:
            return
        with self._db.get_connection() as conn, conn.cursor() as curs:
            curs.executemany(
                "INSERT INTO sandbar_activity (sandbox_id, last_seen) VALUES (%s, %s)"
                " ON CONFLICT (sandbox_id) DO UPDATE"
                " SET last_seen = GREATEST(sandbar_activity.last_seen, EXCLUDED.last_seen)",
                [(k, datetime.fromtimestamp(t, UTC)) for k, t in pending.items()],
            )

    def last_seen(self, sandbox_id: UUID) -> datetime | None:
        with self._lock:
            noted = self._pending.get(sandbox_id)
        pending = datetime.fromtimestamp(noted, UTC) if noted is not None else None
        with self._db.get_connection() as conn:
            row = conn.execute(
                "SELECT last_seen FROM sandbar_activity WHERE sandbox_id = %s", (sandbox_id,)
            ).fetchone()
        stored = row["last_seen"] if row else None
        return max(t for t in (pending, stored) if t) if (pending or stored) else None

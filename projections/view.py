"""The read model's tables as an eventsourcing tracking recorder, and replaying the log
into them (the catch-up after a version change, run in the background, and the full
rebuild of ``sandbar audit rebuild``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.persistence import Notification, Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from psycopg import Cursor
from psycopg.sql import SQL, Composed, Identifier

from projections import read_model

# Name of the upstream application in tracking rows (its events table is sandbar_events).
APPLICATION_NAME = "Sandbar"
EVENTS_TABLE = "sandbar_events"
META_TABLE = "sandbar_read_model_meta"
BATCH = 1000

Decode = Callable[[Notification], Any]
Progress = Callable[[int, int], None]


@dataclass
class ReplayReport:
    events: int = 0
    seconds: float = 0.0
    rows_before: dict[str, int] = field(default_factory=dict)
    rows_after: dict[str, int] = field(default_factory=dict)
    differing_tables: list[str] = field(default_factory=list)
    was_ready: bool = True  # False: the views replaced were being rebuilt

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def identical(self) -> bool:
        return not self.differing_tables


@dataclass(frozen=True)
class Standing:
    """How far the views are: caught up (``ready``), else at ``position`` of ``head``
    (notification ids of the log) while they are rebuilt."""

    ready: bool
    position: int
    head: int


class ReadModelView(PostgresTrackingRecorder):
    """View tables plus single-row tracking, updated in the same transaction.

    After a change of ``read_model.VERSION`` the tables are made anew, empty, and marked
    not ready; ``catch_up`` (run in the background by ``sandbar serve``) replays the log
    into them in short transactions, resuming where it was if stopped, and marks them ready
    in a last transaction that holds the events table's write lock. Until then, saves
    record their events without touching the views (the catch-up replays them in order)."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, tracking_table_name="sandbar_read_model_tracking", **kwargs)
        # (The library keeps its statements as Composed: each of ours is one SQL part.)
        self.sql_create_statements.extend(
            Composed([SQL(s)])
            for s in (
                f"CREATE TABLE IF NOT EXISTS {META_TABLE} (version integer NOT NULL)",
                # Views made before this column existed were caught up. (Checked first:
                # an ALTER would wait for a catch-up holding the table's row.)
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM information_schema.columns"
                f" WHERE table_name = '{META_TABLE}' AND column_name = 'ready') THEN"
                f" ALTER TABLE {META_TABLE} ADD COLUMN ready boolean NOT NULL DEFAULT true;"
                " END IF; END $$",
                # Tables only: tables of another VERSION may be there until
                # ensure_current makes them anew, with their indexes.
                *read_model.table_statements(),
            )
        )
        self._advance_tracking = SQL(
            "INSERT INTO {0} (application_name, notification_id) VALUES (%s, %s)"
            " ON CONFLICT (application_name) DO UPDATE"
            " SET notification_id = GREATEST({0}.notification_id, EXCLUDED.notification_id)"
        ).format(Identifier(self.tracking_table_name))
        # Once seen caught up, the views stay so for this process (only a new version
        # of the code makes them anew).
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    # Keeping up with the log.
    def apply_inline(self, curs: Cursor[Any], events: Sequence[Any], ids: Sequence[int]) -> None:
        """Called in the transaction that records ``events`` (``ids``: their positions in
        the log, in the same order), after their insert, so under the events table's
        write lock.

        Saves are serialized by that lock, so the ids only grow: the tracking row is set
        without reading it back (no extra round trip). While the views are rebuilt, the
        events are left to the catch-up, which replays them in log order."""
        if not self._ready:
            curs.execute(SQL(f"SELECT ready FROM {META_TABLE}"))
            row = curs.fetchone()
            if row is None or not row["ready"]:
                return
            self._ready = True
        read_model.apply_all(curs, list(zip(events, ids, strict=bool(events))))
        curs.execute(self._advance_tracking, (APPLICATION_NAME, max(ids)), prepare=True)

    # Start-up: make the tables current with this code's version and the log.
    def ensure_current(self, decode: Decode) -> bool:
        """Tables exist (the recorder made them). If this code's version differs from
        theirs, make them anew, empty and not ready (an empty log: ready at once), for
        ``catch_up`` to fill. If they are ready, apply any events past the tracking
        position. Whether the views are ready."""
        with self.datastore.transaction(commit=True) as curs:
            # (Not locked when current: a catch-up holds the row while it works.)
            curs.execute(SQL(f"SELECT version, ready FROM {META_TABLE}"))
            row = curs.fetchone()
            if row is None or row["version"] != read_model.VERSION:
                curs.execute(SQL(f"SELECT version, ready FROM {META_TABLE} FOR UPDATE"))
                row = curs.fetchone()
            if row is None or row["version"] != read_model.VERSION:
                # Another shape: drop the tables and make them anew.
                for table in read_model.TABLES:
                    curs.execute(SQL("DROP TABLE IF EXISTS {}").format(Identifier(table)))
                for stmt in read_model.create_statements():
                    curs.execute(SQL(stmt))
                _truncate(curs, self.tracking_table_name)
                curs.execute(SQL(f"SELECT EXISTS (SELECT 1 FROM {EVENTS_TABLE}) AS logged"))
                logged = curs.fetchone()
                ready = not (logged and logged["logged"])
                curs.execute(SQL(f"DELETE FROM {META_TABLE}"))
                curs.execute(
                    SQL(f"INSERT INTO {META_TABLE} (version, ready) VALUES (%s, %s)"),
                    (read_model.VERSION, ready),
                )
            elif row["ready"]:
                _lock_events(curs)
                self._replay(curs, decode, after=self._position(curs))
                ready = True
            else:
                ready = False
        self._ready = ready
        return ready

    def catch_up(
        self,
        decode: Decode,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> bool:
        """Replay the log into views that are not ready, ``BATCH`` events a transaction,
        then the rest under the events table's lock, and mark them ready. Safe to run in
        several processes at once (each batch holds the meta row). Whether the views are
        ready (False: ``stop`` was set first)."""
        while not self._ready:
            if stop is not None and stop.is_set():
                return False
            with self.datastore.transaction(commit=True) as curs:
                curs.execute(SQL(f"SELECT version, ready FROM {META_TABLE} FOR UPDATE"))
                row = curs.fetchone()
                if row is None or row["version"] != read_model.VERSION:
                    raise RuntimeError(
                        f"the views are at version {row and row['version']}, not"
                        f" {read_model.VERSION}: another version of Sandbar has made them"
                    )
                if row["ready"]:
                    self._ready = True
                    break
                position = self._position(curs)
                head = _head(curs)
                last = head - position <= BATCH
                if last:
                    # Nothing commits past what is replayed here. (Bounded: a wait that
                    # times out lets the meta row go, and the next attempt starts over.)
                    timeout = self.datastore.lock_timeout or 10
                    curs.execute(SQL(f"SET LOCAL lock_timeout = '{int(timeout)}s'"))
                    _lock_events(curs)
                    self._replay(curs, decode, after=position)
                    curs.execute(SQL(f"UPDATE {META_TABLE} SET ready = true"))
                else:
                    self._replay(curs, decode, after=position, limit=BATCH)
            if progress is not None:
                progress(head if last else self.standing().position, head)
            if last:
                self._ready = True
        return True

    def standing(self) -> Standing:
        """Whether the views are caught up, and how far they are if not."""
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(SQL(f"SELECT ready FROM {META_TABLE}"))
            row = curs.fetchone()
            return Standing(bool(row and row["ready"]), self._position(curs), _head(curs))

    def rebuild(self, decode: Decode, progress: Progress | None = None) -> ReplayReport:
        """Drop every view row and replay the whole log; compare with what was there.

        Runs in one transaction that holds the events table's write lock, so writers
        wait for it and readers see the old rows until it commits. Tables are compared
        by their row counts and a hash of their rows, computed by the database."""
        report = ReplayReport()
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(SQL(f"SELECT ready FROM {META_TABLE} FOR UPDATE"))
            row = curs.fetchone()
            report.was_ready = bool(row and row["ready"])
            _lock_events(curs)
            before = {t: _digest(curs, t) for t in read_model.TABLES}
            _truncate(curs, self.tracking_table_name)
            started = time.perf_counter()
            report.events = self._replay(curs, decode, after=0, progress=progress)
            report.seconds = time.perf_counter() - started
            after = {t: _digest(curs, t) for t in read_model.TABLES}
            curs.execute(SQL(f"DELETE FROM {META_TABLE}"))
            curs.execute(
                SQL(f"INSERT INTO {META_TABLE} (version, ready) VALUES (%s, true)"),
                (read_model.VERSION,),
            )
        self._ready = True
        report.rows_before = {t: n for t, (n, _) in before.items()}
        report.rows_after = {t: n for t, (n, _) in after.items()}
        report.differing_tables = [t for t in read_model.TABLES if before[t] != after[t]]
        return report

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every view table, in primary-key order (for comparisons in tests:
        the audit index is left out)."""
        with self.datastore.transaction(commit=False) as curs:
            return {t: _rows(curs, t) for t in read_model.VIEWS}

    def _position(self, curs: Cursor[Any]) -> int:
        return self._max_tracking_id(APPLICATION_NAME, curs) or 0

    def _replay(
        self,
        curs: Cursor[Any],
        decode: Decode,
        after: int,
        limit: int | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Apply the events after ``after`` (at most ``limit``); how many."""
        total = limit
        if progress is not None:
            curs.execute(
                SQL(f"SELECT count(*) AS n FROM {EVENTS_TABLE} WHERE notification_id > %s"),
                (after,),
            )
            counted = curs.fetchone()
            assert counted is not None  # (count(*) always answers one row)
            total = counted["n"]
        done, last = 0, after
        conn = curs.connection
        while limit is None or done < limit:
            size = BATCH if limit is None else min(BATCH, limit - done)
            curs.execute(
                SQL(
                    f"SELECT * FROM {EVENTS_TABLE} WHERE notification_id > %s"
                    " ORDER BY notification_id LIMIT %s"
                ),
                (last, size),
            )
            rows = curs.fetchall()
            if not rows:
                break
            with conn.pipeline():
                read_model.apply_all(
                    curs, [(decode(_notification(row)), row["notification_id"]) for row in rows]
                )
            last = rows[-1]["notification_id"]
            done += len(rows)
            if progress is not None:
                progress(done, total or 0)
        if last > after:
            self._insert_tracking(curs, Tracking(APPLICATION_NAME, last))
        return done


def _head(curs: Cursor[Any]) -> int:
    curs.execute(SQL(f"SELECT max(notification_id) AS head FROM {EVENTS_TABLE}"))
    row = curs.fetchone()
    return int(row["head"] or 0) if row else 0


def _digest(curs: Cursor[Any], table: str) -> tuple[int, int]:
    """A table's row count, and a sum of its rows' hashes (equal for equal rows, in any
    order), without bringing the rows here."""
    curs.execute(
        SQL(
            "SELECT count(*) AS n,"
            " coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) AS h FROM {} AS t"
        ).format(Identifier(table))
    )
    row = curs.fetchone()
    assert row is not None
    return int(row["n"]), int(row["h"])


def _lock_events(curs: Cursor[Any]) -> None:
    curs.execute(SQL(f"LOCK TABLE {EVENTS_TABLE} IN EXCLUSIVE MODE"))


def _truncate(curs: Cursor[Any], tracking_table: str) -> None:
    tables = SQL(", ").join(Identifier(t) for t in read_model.TABLES)
    curs.execute(SQL("TRUNCATE {}").format(tables))
    curs.execute(
        SQL("DELETE FROM {} WHERE application_name = %s").format(Identifier(tracking_table)),
        (APPLICATION_NAME,),
    )


def _rows(curs: Cursor[Any], table: str) -> list[tuple[Any, ...]]:
    order = read_model.TABLES[table][1]
    curs.execute(SQL(f"SELECT * FROM {table} ORDER BY {order}"))
    return [tuple(r.values()) for r in curs.fetchall()]


def _notification(row: dict[str, Any]) -> Notification:
    return Notification(
        id=row["notification_id"],
        originator_id=row["originator_id"],
        originator_version=row["originator_version"],
        topic=row["topic"],
        state=bytes(row["state"]),
    )

"""The read model's tables as an eventsourcing tracking recorder, and replaying the log
into them (catch-up on start, and the full rebuild of ``sandbar audit rebuild``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.persistence import Notification, Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from psycopg import Cursor
from psycopg.sql import SQL, Composed, Identifier

from projections import read_model, workspace_log

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

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def identical(self) -> bool:
        return not self.differing_tables


class ReadModelView(PostgresTrackingRecorder):
    """View tables plus single-row tracking, updated in the same transaction."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, tracking_table_name="sandbar_read_model_tracking", **kwargs)
        # (The library keeps its statements as Composed: each of ours is one SQL part.)
        self.sql_create_statements.append(
            Composed([SQL(f"CREATE TABLE IF NOT EXISTS {META_TABLE} (version integer NOT NULL)")])
        )
        # Tables only: tables of another VERSION may be there until ensure_current makes
        # them anew, with their indexes.
        self.sql_create_statements.extend(Composed([SQL(s)]) for s in read_model.table_statements())
        self._advance_tracking = SQL(
            "INSERT INTO {0} (application_name, notification_id) VALUES (%s, %s)"
            " ON CONFLICT (application_name) DO UPDATE"
            " SET notification_id = GREATEST({0}.notification_id, EXCLUDED.notification_id)"
        ).format(Identifier(self.tracking_table_name))

    # Keeping up with the log.
    def apply_inline(self, curs: Cursor[Any], events: Sequence[Any], ids: Sequence[int]) -> None:
        """Called in the transaction that records ``events``, after their insert;
        ``ids`` are their positions in the log, in the same order.

        Saves are serialized by the events table's lock, so positions only grow: the
        tracking row is set without reading it back (no extra round trip)."""
        for event, position in zip(events, ids, strict=bool(events)):
            workspace_log.project(curs, event, position, read_model.apply)
        curs.execute(self._advance_tracking, (APPLICATION_NAME, max(ids)), prepare=True)

    # Start-up: make the tables current with this code's version and the log.
    def ensure_current(self, decode: Decode) -> None:
        """Tables exist (the recorder made them); rebuild them if this code's version
        differs from theirs, then apply any events past the tracking position."""
        with self.datastore.transaction(commit=True) as curs:
            _lock_events(curs)
            curs.execute(SQL(f"SELECT version FROM {META_TABLE}"))
            row = curs.fetchone()
            if row is None or row["version"] != read_model.VERSION:
                # Another shape: drop the tables and make them anew, then replay.
                for table in read_model.TABLES:
                    curs.execute(SQL("DROP TABLE IF EXISTS {}").format(Identifier(table)))
                for stmt in read_model.create_statements():
                    curs.execute(SQL(stmt))
                _truncate(curs, self.tracking_table_name)
                curs.execute(SQL(f"DELETE FROM {META_TABLE}"))
                curs.execute(
                    SQL(f"INSERT INTO {META_TABLE} (version) VALUES (%s)"),
                    (read_model.VERSION,),
                )
            self._replay(curs, decode, after=self._position(curs), progress=None)

    def rebuild(self, decode: Decode, progress: Progress | None = None) -> ReplayReport:
        """Drop every view row and replay the whole log; compare with what was there.

        Runs in one transaction that holds the events table's write lock, so writers
        wait for it and readers see the old rows until it commits."""
        report = ReplayReport()
        with self.datastore.transaction(commit=True) as curs:
            _lock_events(curs)
            before = {t: _rows(curs, t) for t in read_model.TABLES}
            _truncate(curs, self.tracking_table_name)
            started = time.perf_counter()
            report.events = self._replay(curs, decode, after=0, progress=progress)
            report.seconds = time.perf_counter() - started
            after = {t: _rows(curs, t) for t in read_model.TABLES}
        report.rows_before = {t: len(r) for t, r in before.items()}
        report.rows_after = {t: len(r) for t, r in after.items()}
        report.differing_tables = [t for t in read_model.TABLES if before[t] != after[t]]
        return report

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every view table, in primary-key order (for comparisons)."""
        with self.datastore.transaction(commit=False) as curs:
            return {t: _rows(curs, t) for t in read_model.TABLES}

    def _position(self, curs: Cursor[Any]) -> int:
        return self._max_tracking_id(APPLICATION_NAME, curs) or 0

    def _replay(
        self, curs: Cursor[Any], decode: Decode, after: int, progress: Progress | None
    ) -> int:
        curs.execute(
            SQL(f"SELECT count(*) AS n FROM {EVENTS_TABLE} WHERE notification_id > %s"), (after,)
        )
        counted = curs.fetchone()
        assert counted is not None  # (count(*) always answers one row)
        total = counted["n"]
        done, last = 0, after
        conn = curs.connection
        while True:
            curs.execute(
                SQL(
                    f"SELECT * FROM {EVENTS_TABLE} WHERE notification_id > %s"
                    " ORDER BY notification_id LIMIT %s"
                ),
                (last, BATCH),
            )
            rows = curs.fetchall()
            if not rows:
                break
            with conn.pipeline():
                for row in rows:
                    event = decode(_notification(row))
                    workspace_log.project(curs, event, row["notification_id"], read_model.apply)
            last = rows[-1]["notification_id"]
            done += len(rows)
            if progress is not None:
                progress(done, total)
        if last > after:
            self._insert_tracking(curs, Tracking(APPLICATION_NAME, last))
        return done


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

"""The event store: eventsourcing's PostgreSQL recorder, extended so that the events of a
save, the checks that guard it, the read model's rows for it, its tracking row and any
credential writes commit in one transaction, or not at all.

Selected by the application's environment (``APPLICATION_RECORDER_TOPIC``). Writers are
serialized by the library's lock on the events table, so views apply in log order, and a
check run under that lock sees every earlier save.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import retry
from psycopg import Cursor
from psycopg.sql import SQL, Identifier

from projections.view import ReadModelView

# Something to run in the save's transaction: a check before the views change (it may
# raise to refuse the save), or a write after them (credentials).
SideWrite = Callable[[Cursor[Any]], None]


class ProjectingRecorder(PostgresApplicationRecorder):
    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.read_model = ReadModelView(datastore)
        # Called after each save commits (the proxies' caches listen here).
        self.committed: list[Callable[[], None]] = []
        self._latest_version = SQL(
            "SELECT max(originator_version) AS version FROM {0}.{1} WHERE originator_id = %s"
        ).format(Identifier(datastore.schema), Identifier(self.events_table_name))

    def unchanged(self, originator_id: UUID, version: int) -> SideWrite:
        """A check that the aggregate is still at ``version``: a save that read an
        aggregate but gave it no event fails as a version conflict if another save moved
        it on meanwhile (run under the events lock, nothing can move it on before this
        save commits)."""

        def check(curs: Cursor[Any]) -> None:
            curs.execute(self._latest_version, (originator_id,), prepare=True)
            row = curs.fetchone()
            latest = row["version"] if row else None
            if latest != version:
                raise IntegrityError(
                    f"aggregate {originator_id} is at version {latest}, read at {version}"
                )

        return check

    def create_table(self) -> None:
        super().create_table()
        self.read_model.create_table()

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(
        self,
        stored_events: Sequence[StoredEvent],
        *,
        projected_events: Sequence[Any] = (),
        checks: Sequence[SideWrite] = (),
        side_writes: Sequence[SideWrite] = (),
        **kwargs: Any,
    ) -> Sequence[int] | None:
        """As the library's, except that any error after the insert (a check that refuses,
        a projection that fails) rolls the whole save back: the library's own version
        commits the events when an exception is raised after their insert."""
        if not stored_events:
            return []
        error: Exception | None = None
        ids: Sequence[int] | None = None
        with self.datastore.get_connection() as conn:
            with conn.pipeline() as pipeline:
                try:
                    with conn.transaction(), conn.cursor() as curs:
                        self._insert_stored_events(curs, stored_events, **kwargs)
                        pipeline.sync()  # a version conflict raises here
                        ids = self._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
                        for check in checks:
                            check(curs)
                        if ids:
                            self.read_model.apply_inline(curs, projected_events, ids)
                        for write in side_writes:
                            write(curs)
                except Exception as e:  # raised after the pipeline closes, as the library does
                    error = e
            if error is not None:
                raise error
        for hook in self.committed:
            hook()
        return ids

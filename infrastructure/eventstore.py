"""The event store: eventsourcing's PostgreSQL recorder, extended so that the events of a
save, the read model's rows for them, its tracking row and any credential writes commit
in one transaction.

Selected by the application's environment (``APPLICATION_RECORDER_TOPIC``). Writers are
serialized by the library's lock on the events table, so views apply in log order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import Cursor

from projections.view import ReadModelView

# A write to run in the save's transaction after its events (credentials, sessions).
SideWrite = Callable[[Cursor[Any]], None]


class ProjectingRecorder(PostgresApplicationRecorder):
    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.read_model = ReadModelView(datastore)

    def create_table(self) -> None:
        super().create_table()
        self.read_model.create_table()

    def _fetch_ids_after_insert_events(
        self,
        curs: Cursor[Any],
        stored_events: Sequence[StoredEvent],
        *,
        projected_events: Sequence[Any] = (),
        side_writes: Sequence[SideWrite] = (),
        **kwargs: Any,
    ) -> Sequence[int] | None:
        ids = super()._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        if ids:
            self.read_model.apply_inline(curs, projected_events, max(ids))
        for write in side_writes:
            write(curs)
        return ids

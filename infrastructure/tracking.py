"""A follower's position in the log, one row per follower name."""

from __future__ import annotations

from eventsourcing.postgres import PostgresDatastore

from infrastructure.database import ensure_tables

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sandbar_follower_tracking ("
    " follower text PRIMARY KEY, notification_id bigint NOT NULL)"
)


class FollowerTracking:
    def __init__(self, datastore: PostgresDatastore, follower: str) -> None:
        self._db = datastore
        self._name = follower
        ensure_tables(self._db, SCHEMA)

    def position(self) -> int:
        with self._db.get_connection() as conn:
            row = conn.execute(
                "SELECT notification_id FROM sandbar_follower_tracking WHERE follower = %s",
                (self._name,),
            ).fetchone()
        return row["notification_id"] if row else 0

    def advance(self, position: int) -> None:
        """Move forward to ``position`` (never back)."""
        with self._db.get_connection() as conn:
            conn.execute(
                "INSERT INTO sandbar_follower_tracking (follower, notification_id)"
                " VALUES (%s, %s) ON CONFLICT (follower) DO UPDATE SET notification_id ="
                " GREATEST(sandbar_follower_tracking.notification_id, EXCLUDED.notification_id)",
                (self._name, position),
            )

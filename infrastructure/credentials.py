"""Credentials outside the event log: argon2id password hashes and session-token digests.

Tokens are random; only their HMAC-SHA256 under the server key is stored, so a copy of
the database yields no usable session."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.postgres import PostgresDatastore
from psycopg import Cursor

from infrastructure.database import ensure_tables
from infrastructure.eventstore import SideWrite
from infrastructure.grants import ACCESS_CHANNEL
from infrastructure.keyed import keyed_digest

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sandbar_passwords ("
    " user_id uuid PRIMARY KEY, hash text NOT NULL, updated_at timestamptz NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sandbar_sessions ("
    " digest bytea PRIMARY KEY, user_id uuid NOT NULL, created_at timestamptz NOT NULL,"
    " expires_at timestamptz NOT NULL, revoked_at timestamptz)",
    "CREATE INDEX IF NOT EXISTS sandbar_sessions_user_idx ON sandbar_sessions (user_id)",
)


def new_token() -> str:
    return secrets.token_urlsafe(32)


class Credentials:
    def __init__(self, datastore: PostgresDatastore, key: bytes, session_ttl: int) -> None:
        self._db = datastore
        self._key = key
        self._ttl = timedelta(seconds=session_ttl)
        self.revoked: list[Callable[[], None]] = []
        ensure_tables(self._db, SCHEMA)

    def digest(self, token: str) -> bytes:
        return keyed_digest(self._key, token)

    def password_write(self, user_id: UUID, hashed: str) -> SideWrite:
        def write(curs: Cursor[Any]) -> None:
            curs.execute(
                "INSERT INTO sandbar_passwords (user_id, hash, updated_at) VALUES (%s, %s, now())"
                " ON CONFLICT (user_id) DO UPDATE SET hash = EXCLUDED.hash, updated_at = now()",
                (user_id, hashed),
            )

        return write

    def password_hash(self, user_id: UUID) -> str | None:
        with self._db.get_connection() as conn:
            row = conn.execute(
                "SELECT hash FROM sandbar_passwords WHERE user_id = %s", (user_id,)
            ).fetchone()
        return row["hash"] if row else None

    def open_session(self, user_id: UUID) -> str:
        token = new_token()
        now = datetime.now(UTC)
        with self._db.get_connection() as conn:
            conn.execute(
                "INSERT INTO sandbar_sessions (digest, user_id, created_at, expires_at)"
                " VALUES (%s, %s, %s, %s)",
                (self.digest(token), user_id, now, now + self._ttl),
            )
        return token

    def session_user(self, token: str) -> UUID | None:
        with self._db.get_connection() as conn:
            row = conn.execute(
                "SELECT user_id FROM sandbar_sessions WHERE digest = %s"
                " AND revoked_at IS NULL AND expires_at > now()",
                (self.digest(token),),
            ).fetchone()
        return row["user_id"] if row else None

    def revoke_session(self, token: str) -> None:
        """Revoke a session, and with it the sandbox grants it opened; proxies in every
        process hear of it (``NOTIFY``) and this one at once (``revoked``)."""
        with self._db.transaction(commit=True) as curs:
            curs.execute(
                "UPDATE sandbar_sessions SET revoked_at = now()"
                " WHERE digest = %s AND revoked_at IS NULL",
                (self.digest(token),),
            )
            curs.execute(f"NOTIFY {ACCESS_CHANNEL}")
        for hook in self.revoked:
            hook()

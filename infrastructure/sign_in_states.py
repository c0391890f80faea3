"""Sign-ins under way at a provider: the state parameter (stored as an HMAC digest), with
the PKCE verifier, the nonce, where to go after, and the user asking to link. Consumed
once, atomically: a replayed or forged state finds nothing."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.postgres import PostgresDatastore

from infrastructure.database import ensure_tables
from infrastructure.keyed import keyed_digest

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sandbar_sign_in_states ("
    " digest bytea PRIMARY KEY, provider text NOT NULL, verifier text NOT NULL,"
    " nonce text NOT NULL, next text NOT NULL, link_user uuid,"
    " expires_at timestamptz NOT NULL)"
)


class SignInStates:
    def __init__(self, datastore: PostgresDatastore, key: bytes, ttl: int) -> None:
        self._db = datastore
        self._key = key
        self._ttl = timedelta(seconds=ttl)
        ensure_tables(self._db, SCHEMA)

    def _digest(self, state: str) -> bytes:
        return keyed_digest(self._key, state, b"sign-in:")

    def open(self, provider: str, next_url: str, link_user: UUID | None) -> dict[str, str]:
        """A new state, with its verifier and nonce."""
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)  # 64 characters: RFC 7636 allows 43 to 128
        nonce = secrets.token_urlsafe(24)
        with self._db.get_connection() as conn:
            conn.execute("DELETE FROM sandbar_sign_in_states WHERE expires_at < now()")
            conn.execute(
                "INSERT INTO sandbar_sign_in_states VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    self._digest(state),
                    provider,
                    verifier,
                    nonce,
                    next_url,
                    link_user,
                    datetime.now(UTC) + self._ttl,
                ),
            )
        return {"state": state, "verifier": verifier, "nonce": nonce}

    def take(self, provider: str, state: str) -> dict[str, Any] | None:
        """The sign-in this state began, if it is genuine, fresh and unused; used up."""
        with self._db.get_connection() as conn:
            row = conn.execute(
                "DELETE FROM sandbar_sign_in_states WHERE digest = %s RETURNING provider,"
                " verifier, nonce, next, link_user, expires_at > now() AS fresh",
                (self._digest(state),),
            ).fetchone()
        if row is None or not row["fresh"] or row["provider"] != provider:
            return None
        return row

"""Who may open which sandbox: one-time tickets and the grants they are swapped for.

A ticket (about a minute, single use) carries a signed-in user from the API host to a
sandbox host; there it becomes a grant, the sandbox host's own cookie. A grant made for a
non-browser client (an access token) has no session behind it. Only HMAC digests of
tickets and grants are stored; a grant tied to a session dies with that session, and a
member's grants die with their membership."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.postgres import PostgresDatastore

from infrastructure.database import ensure_tables
from infrastructure.eventstore import SideWrite
from infrastructure.keyed import keyed_digest

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sandbar_tickets ("
    " digest bytea PRIMARY KEY, sandbox_id uuid NOT NULL, user_id uuid NOT NULL,"
    " session_digest bytea NOT NULL, expires_at timestamptz NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sandbar_grants ("
    " digest bytea PRIMARY KEY, sandbox_id uuid NOT NULL, user_id uuid NOT NULL,"
    " session_digest bytea, created_at timestamptz NOT NULL, expires_at timestamptz NOT NULL)",
    "CREATE INDEX IF NOT EXISTS sandbar_grants_session_idx ON sandbar_grants (session_digest)",
)

# Tells every process's proxy to forget what it cached about grants (see ChangeFeed).
ACCESS_CHANNEL = "sandbar_access"
GRANT_PREFIX = "sbx_"


@dataclass(frozen=True)
class Grant:
    sandbox_id: UUID
    user_id: UUID
    expires_at: float  # seconds since the epoch
    session_alive: bool  # always True for an access token

    def valid_for(self, sandbox_id: UUID, now: float) -> bool:
        """Whether it opens ``sandbox_id`` at ``now`` (``time.time()``)."""
        # (.int: a UUID compares in Python code, and this runs for every proxied request)
        return (
            self.session_alive and self.sandbox_id.int == sandbox_id.int and now < self.expires_at
        )


class Grants:
    def __init__(self, datastore: PostgresDatastore, key: bytes) -> None:
        self._db = datastore
        self._key = key
        ensure_tables(self._db, SCHEMA)

    def digest(self, token: str) -> bytes:
        return keyed_digest(self._key, token, b"grant:")

    def issue_ticket(
        self, sandbox_id: UUID, user_id: UUID, session_digest: bytes, ttl: float
    ) -> str:
        ticket = secrets.token_urlsafe(32)
        expires = datetime.now(UTC) + timedelta(seconds=ttl)
        with self._db.get_connection() as conn:
            conn.execute("DELETE FROM sandbar_tickets WHERE expires_at < now()")
            conn.execute(
                "INSERT INTO sandbar_tickets VALUES (%s, %s, %s, %s, %s)",
                (self.digest(ticket), sandbox_id, user_id, session_digest, expires),
            )
        return ticket

    def redeem_ticket(self, ticket: str, sandbox_id: UUID, ttl: float) -> tuple[str, UUID] | None:
        """Swap a ticket for a grant (token, user id). The ticket is consumed whatever
        happens, so a second use, or a use on another sandbox's host, finds nothing."""
        with self._db.transaction(commit=True) as curs:
            row = curs.execute(
                "DELETE FROM sandbar_tickets WHERE digest = %s RETURNING sandbox_id, user_id,"
                " session_digest, expires_at > now() AS fresh",
                (self.digest(ticket),),
            ).fetchone()
            if row is None or not row["fresh"] or row["sandbox_id"] != sandbox_id:
                return None
            token = self._insert(curs, sandbox_id, row["user_id"], row["session_digest"], ttl)
        return token, row["user_id"]

    def issue_token(self, sandbox_id: UUID, user_id: UUID, ttl: float) -> str:
        with self._db.transaction(commit=True) as curs:
            return self._insert(curs, sandbox_id, user_id, None, ttl)

    def _insert(
        self, curs: object, sandbox_id: UUID, user_id: UUID, session: bytes | None, ttl: float
    ) -> str:
        token = GRANT_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        curs.execute(  # type: ignore[attr-defined]
            "INSERT INTO sandbar_grants VALUES (%s, %s, %s, %s, %s, %s)",
            (self.digest(token), sandbox_id, user_id, session, now, now + timedelta(seconds=ttl)),
        )
        return token

    def grant(self, digest: bytes) -> Grant | None:
        with self._db.get_connection() as conn:
            row = conn.execute(
                "SELECT g.sandbox_id, g.user_id, g.expires_at, g.session_digest IS NULL OR"
                " (s.revoked_at IS NULL AND s.expires_at > now()) AS alive"
                " FROM sandbar_grants g LEFT JOIN sandbar_sessions s"
                " ON s.digest = g.session_digest WHERE g.digest = %s",
                (digest,),
                prepare=True,
            ).fetchone()
        if row is None:
            return None
        return Grant(
            row["sandbox_id"], row["user_id"], row["expires_at"].timestamp(), bool(row["alive"])
        )

    def revoke_write(self, workspace_id: UUID, user_id: UUID) -> SideWrite:
        """Deletes, in the transaction that removes a member (or takes their role to open
        sandboxes), every grant, access token and ticket they hold for the workspace's
        sandboxes: revoked for good, so being added again brings none of them back."""

        def write(curs: Any) -> None:
            for table in ("sandbar_grants", "sandbar_tickets"):
                curs.execute(
                    f"DELETE FROM {table} WHERE user_id = %s AND sandbox_id IN"
                    " (SELECT id FROM sandbar_sandboxes WHERE workspace_id = %s)",
                    (user_id, workspace_id),
                )

        return write

    def sweep(self) -> None:
        """Forget expired tickets and grants."""
        with self._db.transaction(commit=True) as curs:
            curs.execute("DELETE FROM sandbar_tickets WHERE expires_at < now()")
            curs.execute("DELETE FROM sandbar_grants WHERE expires_at < now()")

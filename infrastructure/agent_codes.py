"""One-time agent codes and tunnel tokens, stored only as HMAC digests under the server
key. A code is consumed in one ``DELETE ... RETURNING``: of two registrations racing with
one code, exactly one gets it."""

from __future__ import annotations

import hmac
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.postgres import PostgresDatastore
from psycopg import Cursor

from infrastructure.database import ensure_tables
from infrastructure.eventstore import SideWrite
from infrastructure.keyed import keyed_digest

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sandbar_agent_codes ("
    " digest bytea PRIMARY KEY, workspace_id uuid NOT NULL, user_id uuid NOT NULL,"
    " expires_at timestamptz NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sandbar_tunnel_tokens ("
    " sandbox_id uuid PRIMARY KEY, digest bytea NOT NULL)",
)
_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud, typed by hand


def normalize_code(code: str) -> str:
    return "".join(c for c in code.upper() if c.isalnum())


class AgentCredentials:
    def __init__(self, datastore: PostgresDatastore, key: bytes) -> None:
        self._db = datastore
        self._key = key
        ensure_tables(self._db, SCHEMA)

    def _digest(self, purpose: bytes, value: str) -> bytes:
        return keyed_digest(self._key, value, purpose)

    def issue_code(self, workspace_id: UUID, user_id: UUID, ttl: int) -> tuple[str, datetime]:
        """``XXXX-XXXX-XXXX``: 60 random bits, good once, for ``ttl`` seconds; and when it
        expires."""
        raw = "".join(secrets.choice(_ALPHABET) for _ in range(12))
        expires_at = datetime.now(UTC) + timedelta(seconds=ttl)
        with self._db.get_connection() as conn:
            conn.execute("DELETE FROM sandbar_agent_codes WHERE expires_at < now()")
            conn.execute(
                "INSERT INTO sandbar_agent_codes VALUES (%s, %s, %s, %s)",
                (
                    self._digest(b"code:", raw),
                    workspace_id,
                    user_id,
                    expires_at,
                ),
            )
        return f"{raw[:4]}-{raw[4:8]}-{raw[8:]}", expires_at

    def take_code(self, code: str) -> dict[str, Any] | None:
        """The workspace and user a fresh, unused code was made for; used up."""
        with self._db.get_connection() as conn:
            row = conn.execute(
                "DELETE FROM sandbar_agent_codes WHERE digest = %s"
                " RETURNING workspace_id, user_id, expires_at > now() AS fresh",
                (self._digest(b"code:", normalize_code(code)),),
            ).fetchone()
        return row if row is not None and row["fresh"] else None

    def token_write(self, sandbox_id: UUID, token: str) -> SideWrite:
        digest = self._digest(b"tunnel:", token)

        def write(curs: Cursor[Any]) -> None:
            curs.execute(
                "INSERT INTO sandbar_tunnel_tokens VALUES (%s, %s)"
                " ON CONFLICT (sandbox_id) DO UPDATE SET digest = EXCLUDED.digest",
                (sandbox_id, digest),
            )

        return write

    def token_matches(self, sandbox_id: UUID, token: str) -> bool:
        with self._db.get_connection() as conn:
            row = conn.execute(
                "SELECT digest FROM sandbar_tunnel_tokens WHERE sandbox_id = %s", (sandbox_id,)
            ).fetchone()
        return row is not None and hmac.compare_digest(
            bytes(row["digest"]), self._digest(b"tunnel:", token)
        )

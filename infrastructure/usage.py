"""Anthropic proxy usage per sandbox and UTC day, and the per-workspace daily totals its
limits are checked against.

A request is counted when it is admitted, in the same statement that checks the limit
(one row per workspace and day, locked by the upsert), so concurrent requests at the edge
of a request limit never overshoot it. Tokens are known only once a response ends: a
token limit admits requests while the tokens used so far are under it, so it is
overshot by at most what the requests already in flight use."""

from __future__ import annotations

from datetime import date
from typing import Any
from uuid import UUID

from eventsourcing.postgres import PostgresDatastore

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sandbar_usage ("
    " day date NOT NULL, workspace_id uuid NOT NULL, sandbox_id uuid NOT NULL,"
    " requests bigint NOT NULL DEFAULT 0, input_tokens bigint NOT NULL DEFAULT 0,"
    " output_tokens bigint NOT NULL DEFAULT 0,"
    " cache_creation_input_tokens bigint NOT NULL DEFAULT 0,"
    " cache_read_input_tokens bigint NOT NULL DEFAULT 0,"
    " PRIMARY KEY (workspace_id, day, sandbox_id))",
    "CREATE TABLE IF NOT EXISTS sandbar_usage_totals ("
    " workspace_id uuid NOT NULL, day date NOT NULL, requests bigint NOT NULL,"
    " tokens bigint NOT NULL, PRIMARY KEY (workspace_id, day))",
)
COUNTS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
UNLIMITED = 2**62


class UsageTable:
    def __init__(self, datastore: PostgresDatastore) -> None:
        self._db = datastore
        with self._db.transaction(commit=True) as curs:
            for stmt in SCHEMA:
                curs.execute(stmt)

    def reserve(
        self, workspace_id: UUID, day: date, max_requests: int | None, max_tokens: int | None
    ) -> str | None:
        """Count one request if the workspace is under both limits today; else the
        name of the limit reached ("requests" or "tokens")."""
        max_requests = UNLIMITED if max_requests is None else max_requests
        max_tokens = UNLIMITED if max_tokens is None else max_tokens
        if max_requests <= 0:
            return "requests"
        if max_tokens <= 0:
            return "tokens"
        with self._db.transaction(commit=True) as curs:
            row = curs.execute(
                "INSERT INTO sandbar_usage_totals AS t (workspace_id, day, requests, tokens)"
                " VALUES (%s, %s, 1, 0) ON CONFLICT (workspace_id, day) DO UPDATE"
                " SET requests = t.requests + 1"
                " WHERE t.requests < %s AND t.tokens < %s RETURNING requests",
                (workspace_id, day, max_requests, max_tokens),
                prepare=True,
            ).fetchone()
            if row is not None:
                return None
            totals = curs.execute(
                "SELECT requests, tokens FROM sandbar_usage_totals"
                " WHERE workspace_id = %s AND day = %s",
                (workspace_id, day),
            ).fetchone()
        return "requests" if totals and totals["requests"] >= max_requests else "tokens"

    def record(
        self, workspace_id: UUID, sandbox_id: UUID, day: date, counts: dict[str, int]
    ) -> None:
        """Add one finished request and its tokens."""
        values = [max(0, int(counts.get(name, 0))) for name in COUNTS]
        with self._db.transaction(commit=True) as curs:
            curs.execute(
                "INSERT INTO sandbar_usage AS u (day, workspace_id, sandbox_id, requests,"
                f" {', '.join(COUNTS)}) VALUES (%s, %s, %s, 1, %s, %s, %s, %s)"
                " ON CONFLICT (workspace_id, day, sandbox_id) DO UPDATE SET"
                " requests = u.requests + 1, "
                + ", ".join(f"{c} = u.{c} + EXCLUDED.{c}" for c in COUNTS),
                (day, workspace_id, sandbox_id, *values),
                prepare=True,
            )
            if sum(values):
                curs.execute(
                    "UPDATE sandbar_usage_totals SET tokens = tokens + %s"
                    " WHERE workspace_id = %s AND day = %s",
                    (sum(values), workspace_id, day),
                    prepare=True,
                )

    def report(self, workspace_id: UUID, since: date) -> list[dict[str, Any]]:
        with self._db.get_connection() as conn:
            return conn.execute(
                f"SELECT day, sandbox_id, requests, {', '.join(COUNTS)} FROM sandbar_usage"
                " WHERE workspace_id = %s AND day >= %s ORDER BY day DESC, sandbox_id",
                (workspace_id, since),
            ).fetchall()

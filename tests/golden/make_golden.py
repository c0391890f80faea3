"""Write the golden log: every event type Sandbar records, as this version writes them.

Run once per new set of event types, never to refresh an existing file (the point of a
golden log is that it was written by older code):

    SANDBAR_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python -m tests.golden.make_golden v1

It drives the application services on a fresh database (the container worker's and the
sign-in's outcomes through the same aggregate commands and saves they use, as no engine
or identity provider is at hand here), then keeps the events table's rows (topic, state,
originator id and version) in ``<name>.events.json`` and what they decode, fold and
project to in ``<name>.expected.json``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from collections.abc import Callable
from typing import Any
from uuid import UUID

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from domain.base import SYSTEM, acting_as
from domain.sandboxes import Kind, Sandbox
from domain.users import User, link_identity
from infrastructure.settings import Settings
from interfaces.bootstrap import Sandbar, build
from tests.golden import record

PASSWORD = "correct horse battery"


def worker(sb: Sandbar, sandbox_id: UUID, outcome: Callable[[Sandbox], None]) -> None:
    """An outcome recorded as the container worker records it (``ContainerWorker._record``)."""
    sandbox = sb.log.find(sandbox_id, Sandbox)
    assert sandbox is not None
    with acting_as(SYSTEM):
        outcome(sandbox)
    sb.log.save(sandbox)


def history(sb: Sandbar) -> None:
    alice = sb.accounts.register("alice", PASSWORD, "alice@example.org")[0]["id"]
    bob = sb.accounts.register("bob", PASSWORD, None)[0]["id"]
    carol = sb.accounts.register("carol", PASSWORD, "carol@example.org")[0]["id"]

    # Alice links a GitHub account (what ExternalSignIn saves for a signed-in user).
    user = sb.log.find(alice, User)
    assert user is not None
    with acting_as(alice):
        index = link_identity(user, "github", "4242")
    sb.log.save(user, index)

    # Members: added, made owner, made guest (the owner set follows), removed, back.
    w = sb.workspaces.create(alice, "Golden team")["id"]
    sb.workspaces.add_member(alice, w, "bob", "developer")
    sb.workspaces.change_role(alice, w, bob, "owner")
    sb.workspaces.change_role(alice, w, bob, "guest")
    sb.workspaces.remove_member(alice, w, bob)
    sb.workspaces.add_member(alice, w, "bob", "maintainer")
    sb.workspaces.add_member(alice, w, "carol", "developer")
    sb.usage.set_limits(alice, w, 1000, 200_000)
    sb.usage.set_limits(alice, w, None, 50_000)

    # A cloud sandbox through its whole life.
    s1 = sb.sandboxes.create(alice, w, "s1", "opencode")["id"]
    worker(sb, s1, lambda s: s.record_started("10.0.0.5:4096"))
    sb.sandboxes.pause(carol, s1)
    worker(sb, s1, lambda s: s.record_paused())
    sb.sandboxes.resume(carol, s1)
    worker(sb, s1, lambda s: s.record_started("10.0.0.6:4096"))
    worker(sb, s1, lambda s: s.record_relocated("10.0.0.7:4096"))
    sb.sandboxes.delete(alice, s1)
    worker(sb, s1, lambda s: s.record_deletion_delayed("the container engine does not answer"))
    worker(sb, s1, lambda s: s.record_deleted())

    # One that fails to start and is retried.
    s2 = sb.sandboxes.create(carol, w, "s2", "openclaw")["id"]
    worker(sb, s2, lambda s: s.record_failed("the image is missing"))
    sb.sandboxes.resume(carol, s2)

    # A local agent: registered with a one-time code, its tunnel up and down, deleted.
    code, _ = sb.local_agents.agent_code(carol, w)
    s3 = sb.local_agents.register(code, "laptop", "opencode", "127.0.0.1")[0]["id"]
    sb.local_agents.connected(s3)
    sb.local_agents.disconnected(s3)
    sb.sandboxes.delete(carol, s3)
    assert sb.sandboxes.create(carol, w, "s5", "openclaw", kind=Kind.local)["kind"] == "local"

    # A workspace deleted with a live sandbox in it.
    w2 = sb.workspaces.create(carol, "Short-lived")["id"]
    sb.sandboxes.create(carol, w2, "s4", "opencode")
    sb.workspaces.delete(carol, w2)


def stored_rows(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state"
            " FROM sandbar_events ORDER BY notification_id"
        ).fetchall()
    return [
        {
            "notification_id": n,
            "originator_id": str(originator_id),
            "originator_version": version,
            "topic": topic,
            "state": bytes(state).decode(),  # JSON text (no cipher, no compressor)
        }
        for n, originator_id, version, topic, state in rows
    ]


def main(name: str) -> None:
    server = os.environ["SANDBAR_TEST_DATABASE_URL"]
    database = f"sandbar_golden_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    url = make_conninfo(**{**conninfo_to_dict(server), "dbname": database})
    try:
        sb = build(
            Settings.from_env(
                {
                    "SANDBAR_DATABASE_URL": url,
                    "SANDBAR_DATA_DIR": tempfile.mkdtemp(prefix="sandbar-golden-"),
                    "SANDBAR_SECRET_KEY": "golden-" + uuid.uuid4().hex,
                    "SANDBAR_WORKER": "false",
                    "SANDBAR_ARGON2_TIME_COST": "1",
                    "SANDBAR_ARGON2_MEMORY_KIB": "8192",
                    "SANDBAR_ARGON2_PARALLELISM": "1",
                }
            )
        )
        try:
            history(sb)
            rows = stored_rows(url)
            events = record.decode(sb.log.mapper, rows)
            missing = record.event_types() - {type(e).__qualname__ for e in events}
            assert not missing, f"the history records no {sorted(missing)}"
            expected = {
                "events": record.described(events),
                "aggregates": record.folded(events),
                "views": record.views(sb.view.snapshot()),
            }
        finally:
            sb.close()
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    record.dump(f"{name}.events.json", rows)
    record.dump(f"{name}.expected.json", expected)
    print(f"{len(rows)} events, {len({r['topic'] for r in rows})} types -> tests/golden/{name}.*")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "v1")

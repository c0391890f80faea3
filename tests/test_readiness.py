"""Start-up never waits for a rebuild of the views: after an upgrade that changed their
shape, ``sandbar serve`` answers ``/healthz`` at once, ``/readyz`` and every ``/api/``
route 503 ``not_ready`` (with ``Retry-After``) while it replays the log in the
background, then serves the views rebuilt whole. All over HTTP, on a real server.

The rebuild's last step takes the events table's write lock (nothing commits past what it
replays); the test holds a lock that conflicts with that one alone, so the server is
seen not ready for as long as the test needs, with no timing."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest

from domain.base import acting_as
from domain.sandboxes import Sandbox
from domain.workspaces import Workspace
from infrastructure.settings import Settings
from interfaces.bootstrap import build
from projections.view import BATCH
from tests.conftest import FAST_HASHING, PASSWORD, ServerProcess, register, run_sandbar
from tests.errors import assert_error
from tests.seeding import noise
from tests.waiting import wait_until


@pytest.fixture
def env(make_database: Callable[[], str], tmp_path: Path) -> dict[str, str]:
    return {
        **FAST_HASHING,
        "SANDBAR_WORKER": "false",
        "SANDBAR_DATABASE_URL": make_database(),
        "SANDBAR_DATA_DIR": str(tmp_path / "data"),
        "SANDBAR_SECRET_KEY": "test-secret-key-" + uuid.uuid4().hex,
    }


def as_if_upgraded(url: str) -> None:
    """The views as an older version made them: the next start rebuilds them."""
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE sandbar_read_model_meta SET version = version - 1")


@contextmanager
def rebuild_held(url: str) -> Iterator[None]:
    """Hold the rebuild before its last step (ROW SHARE conflicts with the EXCLUSIVE
    lock that step takes, and with no lock that start-up or reading takes)."""
    with psycopg.connect(url) as conn:
        conn.execute("LOCK TABLE sandbar_events IN ROW SHARE MODE")
        yield
        conn.rollback()


@contextmanager
def serving(env: dict[str, str], log: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(env, log).start()  # returns once /healthz answers 200
    try:
        yield proc
    finally:
        proc.stop()
    assert "Traceback" not in log.read_text(), log.read_text()


def ready(url: str) -> httpx.Response:
    return wait_until(
        lambda: httpx.get(f"{url}/readyz", timeout=5),
        until=lambda r: r.status_code == 200,
        timeout=120,
        interval=0.1,
        what="/readyz 200",
    )


def tunnel_dial(url: str, sandbox_id: str) -> tuple[int, int]:
    """An agent's WebSocket handshake on its tunnel's path: the status, and Retry-After."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"GET /api/tunnel/{sandbox_id} HTTP/1.1\r\nHost: localhost:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Authorization: Bearer not-checked-yet\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    lines = head.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), int(fields.get("Retry-After", "0"))


def test_start_up_serves_at_once_and_the_api_waits_for_the_rebuild(
    env: dict[str, str], tmp_path: Path
) -> None:
    url = env["SANDBAR_DATABASE_URL"]
    with serving(env, tmp_path / "first.log") as proc:
        assert httpx.get(f"{proc.url}/readyz").json() == {"status": "ready"}
        alice = register(proc.url, "alice")
        r = alice.client.post("/api/workspaces", json={"name": "Kept"})
        assert r.status_code == 201, r.text
        wid = r.json()["id"]
        r = alice.client.post(
            f"/api/workspaces/{wid}/sandboxes", json={"name": "box", "type": "opencode"}
        )
        assert r.status_code == 201, r.text
        box_id = r.json()["id"]
        host = f"oc-{box_id}.localhost"
        known = httpx.get(f"{proc.url}/", headers={"Host": host}).status_code
        assert known != 404
        alice.client.close()

    as_if_upgraded(url)
    # The audit commands read through the index, rebuilt with the views: they say so.
    out = run_sandbar("audit", "log", env=env)
    assert out.returncode == 1 and "being rebuilt" in out.stderr, out.stderr
    held = rebuild_held(url)
    held.__enter__()
    with serving(env, tmp_path / "second.log") as proc, httpx.Client(base_url=proc.url) as client:
        # Alive at once; not ready, and saying so in the error shape.
        assert client.get("/healthz").json() == {"status": "ok"}
        r = client.get("/readyz")
        assert_error(r, 503, "not_ready")
        assert int(r.headers["Retry-After"]) > 0
        # The API waits too, rather than answer from views half made.
        for answer in (
            client.get("/api/auth/providers"),
            client.post("/api/auth/login", json={"username": alice.username, "password": PASSWORD}),
        ):
            assert_error(answer, 503, "not_ready")
            assert int(answer.headers["Retry-After"]) > 0
        assert client.get("/openapi.json").status_code == 200
        # The sandbox proxy does not answer from a routing table half made (a 404 would
        # say the sandbox is gone), and an agent dialling its tunnel is told to dial again
        # (a 403 would stop it for good).
        r = client.get("/", headers={"Host": host})
        assert_error(r, 503, "not_ready")
        assert int(r.headers["Retry-After"]) > 0
        status, retry_after = tunnel_dial(proc.url, box_id)
        assert status == 503 and retry_after > 0

        held.__exit__(None, None, None)
        assert ready(proc.url).json() == {"status": "ready"}
        # What the proxy cached meanwhile is let go.
        assert client.get("/", headers={"Host": host}).status_code == known
        r = client.post("/api/auth/login", json={"username": alice.username, "password": PASSWORD})
        assert r.status_code == 200, r.text
        listed = client.get("/api/workspaces").json()
        assert [w["name"] for w in listed] == ["Kept"]
        boxes = client.get(f"/api/workspaces/{wid}/sandboxes").json()
        assert [b["name"] for b in boxes] == ["box"]
        # Writes are projected again at once.
        r = client.post("/api/workspaces", json={"name": "After"})
        assert r.status_code == 201, r.text
        assert {w["name"] for w in client.get("/api/workspaces").json()} == {"Kept", "After"}
    out = run_sandbar("audit", "log", "--json", "--workspace", wid, env=env)
    assert out.returncode == 0, out.stderr
    events = [json.loads(line)["event"] for line in out.stdout.splitlines()]
    assert events[0] == "Workspace.Created" and "Sandbox.Requested" in events


def test_a_rebuild_of_many_batches_gives_the_views_and_takes_writes_meanwhile(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Several transactions of replay, stopped before the end and resumed by the next
    start, with a save from another process meanwhile (left to the rebuild): the views
    come out as they were, plus that save."""
    url = env["SANDBAR_DATABASE_URL"]
    first = build(Settings.from_env(env))
    noise(first.log, 3 * BATCH + 17)
    before = first.view.snapshot()
    first.close()
    as_if_upgraded(url)
    upgraded = build(Settings.from_env(env))  # (as a worker process of the new version)
    try:
        assert not upgraded.readiness.ready
        owner = uuid.uuid4()
        with acting_as(owner):
            late = Workspace(name="late", owner_id=owner)
            box = Sandbox(workspace_id=late.id, name="late", type="opencode", kind="cloud")
        saver = threading.Thread(target=upgraded.log.save, args=(late, box))
        with rebuild_held(url), serving(env, tmp_path / "server.log") as proc:
            assert_error(httpx.get(f"{proc.url}/readyz"), 503, "not_ready")
            saver.start()  # waits for the held lock, as the rebuild's last step does
            # (stopped before its last step; the lock is let go as the block ends)
        saver.join(timeout=60)
        assert not saver.is_alive()
        with serving(env, tmp_path / "again.log") as proc:
            ready(proc.url)
        after = upgraded.view.snapshot()
    finally:
        upgraded.close()
    rows_before = {t: {repr(r) for r in rows} for t, rows in before.items()}
    rows_after = {t: {repr(r) for r in rows} for t, rows in after.items()}
    added = {t: rows_after[t] - rows_before[t] for t in rows_after}
    assert {t: len(rows) for t, rows in added.items() if rows} == {
        "sandbar_workspaces": 1,
        "sandbar_sandboxes": 1,
        "sandbar_routes": 1,
        "sandbar_workspace_log": 2,  # the workspace made, the sandbox asked for
    }
    assert all(rows_before[t] <= rows_after[t] for t in rows_before)

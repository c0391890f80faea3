"""What each console page asks of the server, with 1,000 sandboxes and over 10,000 events
in its workspace, beside a baseline measured in the same run.

  pages       GET / and a script (static files)
  API calls   each GET the console's pages make: the owner's 20 workspaces (each row
              with its counts; and, for comparison, that list followed by one GET per
              workspace, as the console fetched the counts before), the workspace, its
              sandboxes, members, usage, a page of history (all, and by one person), the
              workspace as it was at a moment, and a live stream resumed 100 events back
              (connect, read the 100, close)
  baseline    GET /healthz on the same client

Round trips on loopback to a real `sandbar serve`, p50 and p95 of N, as milliseconds and
as a ratio to the baseline; each of the N rounds makes every call once, in ABBA order.
The issue's mark: under 50 ms of server time per page.
Uses a fresh database on SANDBAR_BENCH_DATABASE_URL (bench_core.py says how), dropped at
the end. Prints a table and writes bench/results/console.json. Never asserts a timing.
Usage: .venv/bin/python bench/bench_console.py [--quick]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_core import fresh_database, pct, postgres_server, write_results  # noqa: E402
from rounds import abba  # noqa: E402

from domain.base import acting_as  # noqa: E402
from domain.sandboxes import Kind, Sandbox  # noqa: E402
from domain.workspaces import Workspace  # noqa: E402
from infrastructure.settings import Settings  # noqa: E402
from interfaces.bootstrap import Sandbar, build  # noqa: E402
from interfaces.cli.output import table  # noqa: E402
from tests.conftest import FAST_HASHING, ServerProcess, register  # noqa: E402

SANDBOXES = 1000
WORKSPACES = 20  # the owner's, the big one among them, for the list
MOVES = 8  # Relocated events per sandbox: 10 events each with Requested and Started


def seed(sandbar: Sandbar, owner: UUID, wid: UUID, sandboxes: int, per_save: int = 100) -> int:
    """``sandboxes`` sandboxes in the workspace, each requested, started and moved
    ``MOVES`` times, saved as the worker would; returns the events written."""
    events = 0
    for start in range(0, sandboxes, per_save):
        batch = []
        workspace = sandbar.log.find(wid, Workspace)
        assert workspace is not None
        for i in range(start, min(start + per_save, sandboxes)):
            with acting_as(owner):
                box = Sandbox(
                    workspace_id=wid, name=f"box-{i:04d}", type="opencode", kind=Kind.cloud.value
                )
                attach = getattr(workspace, "attach_sandbox", None)
                if attach is not None:
                    attach(box.id)
            box.record_started("127.0.0.1:9")
            for move in range(MOVES):
                box.record_relocated(f"127.0.0.1:{10 + move}")
            batch.append(box)
            events += 2 + MOVES
        sandbar.log.save(workspace, *batch)
    return events


def timed(calls: list[tuple[str, Callable[[], Any]]], samples: int) -> dict[str, Any]:
    """p50 and p95 of each call, ``samples`` rounds of one of each in ABBA order (so that
    the machine's drift weighs on the baseline and the pages alike)."""
    named = dict(calls)
    for call in named.values():
        call()  # (warm: connections, prepared statements)
    took: dict[str, list[float]] = {name: [] for name in named}
    for r in range(samples):
        for name in abba(tuple(named), r):
            started = time.perf_counter()
            named[name]()
            took[name].append((time.perf_counter() - started) * 1000)
    return {name: {"p50_ms": pct(t, 50), "p95_ms": pct(t, 95)} for name, t in took.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sandboxes and samples")
    args = parser.parse_args()
    sandboxes, samples = (200, 20) if args.quick else (SANDBOXES, 60)
    started = time.perf_counter()
    with postgres_server() as (server_url, where), fresh_database(server_url) as url:
        env = {
            **FAST_HASHING,
            "SANDBAR_DATABASE_URL": url,
            "SANDBAR_DATA_DIR": tempfile.mkdtemp(prefix="sandbar-bench-"),
            "SANDBAR_SECRET_KEY": uuid.uuid4().hex,
            "SANDBAR_WORKER": "false",
        }
        log = Path(tempfile.mkdtemp(prefix="sandbar-bench-")) / "server.log"
        server = ServerProcess(env, log).start()
        sandbar = build(Settings.from_env(env))
        try:
            owner = register(server.url, "owner")
            client = owner.client
            wid = client.post("/api/workspaces", json={"name": "big"}).json()["id"]
            print(f"seeding {sandboxes} sandboxes ...", file=sys.stderr, flush=True)
            events = seed(sandbar, UUID(owner.id), UUID(wid), sandboxes)
            base = f"/api/workspaces/{wid}"
            others = [
                client.post("/api/workspaces", json={"name": f"w{i}"}).json()["id"]
                for i in range(WORKSPACES - 1)
            ]
            listed = [wid, *others]

            def list_then_each() -> None:
                client.get("/api/workspaces")
                for w in listed:
                    client.get(f"/api/workspaces/{w}")

            moment = datetime.now(UTC).isoformat()
            head = client.get(f"{base}/history", params={"limit": 1}).json()[0]["position"]

            def stream() -> None:
                got = 0
                with client.stream("GET", f"{base}/events", params={"after": head - 100}) as r:
                    for line in r.iter_lines():
                        if line.startswith("event: sandbox"):
                            got += 1
                            if got == 100:
                                return

            calls: list[tuple[str, Callable[[], Any]]] = [
                ("GET /healthz (baseline)", lambda: client.get("/healthz")),
                ("GET / (the console's page)", lambda: client.get("/")),
                ("GET /assets/js/sandboxes.js", lambda: client.get("/assets/js/sandboxes.js")),
                (
                    f"GET workspaces ({WORKSPACES}, rows with counts)",
                    lambda: client.get("/api/workspaces"),
                ),
                (f"the same list, then {WORKSPACES} GETs (before)", list_then_each),
                ("GET workspace (with counts)", lambda: client.get(base)),
                (f"GET sandboxes ({sandboxes})", lambda: client.get(f"{base}/sandboxes")),
                ("GET members", lambda: client.get(f"{base}/members")),
                ("GET usage (30 days)", lambda: client.get(f"{base}/usage")),
                ("GET history, 50 newest", lambda: client.get(f"{base}/history")),
                (
                    "GET history, 50 by one person",
                    lambda: client.get(f"{base}/history", params={"person": owner.id}),
                ),
                (
                    "GET as-at (every sandbox then)",
                    lambda: client.get(f"{base}/as-at", params={"time": moment}),
                ),
                ("events: connect, 100 back, close", stream),
            ]
            print(f"  {len(calls)} calls x {samples}, ABBA ...", file=sys.stderr, flush=True)
            results = timed(calls, samples)
        finally:
            sandbar.close()
            server.stop()
    baseline = results["GET /healthz (baseline)"]["p50_ms"]
    rows = [
        (name, f"{r['p50_ms']:.1f} ms", f"{r['p95_ms']:.1f} ms", f"{r['p50_ms'] / baseline:.1f}x")
        for name, r in results.items()
    ]
    print(f"\n{sandboxes} sandboxes, {events:,} sandbox events, {samples} samples each")
    table(["REQUEST", "P50", "P95", "P50 / HEALTHZ"], rows)
    write_results(
        "console",
        {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": platform.platform(),
            "postgres": where,
            "sandboxes": sandboxes,
            "events": events,
            "samples": samples,
            "seconds": round(time.perf_counter() - started, 1),
            "requests": results,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

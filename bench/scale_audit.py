"""The audit commands and start-up as the log grows (issue 23, items 5 and 6).

  audit        `sandbar audit log` (by workspace, by user, a time window at the end of
               the log, and the whole log as JSON to /dev/null) and `sandbar audit replay`
               of a workspace, each run as a user runs it (a subprocess): wall time and
               peak RSS, at each log size
     vs        the same commands on a log of a few events (the empty-log baseline), and
               the idle CLI at each size (`audit log --workspace` of a workspace that
               never was: connects, prints nothing): RSS above idle
  start-up     `sandbar serve` to /healthz 200 and to /readyz 200 at the largest size,
               after an upgrade that changed the views (they are rebuilt from the log)
     vs        the same start with the views current, and on the empty log

The log grows by sandbox requests saved through the application, 1,000 to a
transaction (views and audit index written as ever), in workspaces of their own: the
watched workspace keeps its dozen events whatever the size.

Uses a fresh database on SANDBAR_BENCH_DATABASE_URL (as bench_core), dropped at the end.
Prints JSON (and writes bench/results/scale_audit.json). Never asserts a timing.
Usage: .venv/bin/python bench/scale_audit.py [--sizes 200000,1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_core import fresh_database, postgres_server, write_results  # noqa: E402
from domain.base import acting_as  # noqa: E402
from domain.sandboxes import Sandbox  # noqa: E402
from domain.workspaces import Membership, Workspace  # noqa: E402
from infrastructure.settings import Settings  # noqa: E402
from interfaces.bootstrap import build  # noqa: E402
from tests.conftest import FAST_HASHING, free_port  # noqa: E402
from tests.seeding import measured_sandbar, noise  # noqa: E402

MIB = 1024 * 1024


def stamp(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def watched(sandbar: Any, owner: uuid.UUID) -> uuid.UUID:
    """A workspace with a member and a few sandboxes, one deleted: a dozen events."""
    with acting_as(owner):
        workspace = Workspace(name="watched", owner_id=owner)
        member = Membership(workspace_id=workspace.id, user_id=owner, role="owner")
        boxes = [
            Sandbox(workspace_id=workspace.id, name=f"w{i}", type="opencode", kind="cloud")
            for i in range(4)
        ]
        boxes[0].request_deletion()
    sandbar.log.save(workspace, member, *boxes)
    return workspace.id


def tail_events(sandbar: Any, owner: uuid.UUID) -> datetime:
    """A few events at the end of the log, after the moment returned."""
    mark = datetime.now(UTC)
    time.sleep(0.01)
    with acting_as(owner):
        ws = Workspace(name=f"tail-{uuid.uuid4().hex[:6]}", owner_id=owner)
        member = Membership(workspace_id=ws.id, user_id=owner, role="owner")
    sandbar.log.save(ws, member)
    return mark


def run(args: list[str], env: dict[str, str]) -> dict[str, float]:
    """Wall time, the command's own CPU time (less moved by a busy machine, but without
    the database's share) and peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    r, peak = measured_sandbar(*args, env=env, timeout=3600)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"sandbar {' '.join(args)} failed:\n{r.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
        "peak_rss_mib": round(peak / MIB, 1),
    }


def audit_figures(
    env: dict[str, str], workspace: uuid.UUID, owner: uuid.UUID, since: datetime
) -> dict[str, Any]:
    w = str(workspace)
    commands = {
        "idle": ["audit", "log", "--json", "--workspace", str(uuid.uuid4())],
        "log_workspace": ["audit", "log", "--json", "--workspace", w],
        "log_user": ["audit", "log", "--json", "--user", str(owner)],
        "log_since": ["audit", "log", "--json", "--since", stamp(since)],
        "replay": ["audit", "replay", "--workspace", w, "--at", stamp(datetime.now(UTC))],
        "log_all_json": ["audit", "log", "--json"],
    }
    out = {name: run(cmd, env) for name, cmd in commands.items()}
    idle = out["idle"]["peak_rss_mib"]
    for figures in out.values():
        figures["rss_above_idle_mib"] = round(figures["peak_rss_mib"] - idle, 1)
    return out


def wait_for(url: str, deadline: float) -> float:
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return time.monotonic()
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"no 200 from {url}")


def start_up(env: dict[str, str], log: Path) -> dict[str, float]:
    """Seconds from starting `sandbar serve` to /healthz 200 and to /readyz 200."""
    import subprocess

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "interfaces.cli.main", "serve", "--port", str(port)],
            env={**os.environ, **env, "SANDBAR_WORKER": "false"},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = started + 3600
        health = wait_for(f"{base}/healthz", deadline) - started
        ready = wait_for(f"{base}/readyz", deadline) - started
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"to_healthz_s": round(health, 3), "to_readyz_s": round(ready, 3)}


def as_if_upgraded(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE sandbar_read_model_meta SET version = version - 1")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="200000,1000000", help="log sizes, in events")
    opts = p.parse_args(argv)
    sizes = sorted(int(s) for s in opts.sizes.split(","))
    results: dict[str, Any] = {"sizes": sizes, "cpus": os.cpu_count()}
    with postgres_server() as (server_url, kind), fresh_database(server_url) as url:
        results["postgres"] = kind
        folder = Path(tempfile.mkdtemp(prefix="scale-audit-"))
        env = {
            **FAST_HASHING,
            "SANDBAR_WORKER": "false",
            "SANDBAR_DATABASE_URL": url,
            "SANDBAR_DATA_DIR": str(folder),
            "SANDBAR_SECRET_KEY": "bench-" + uuid.uuid4().hex,
        }
        sandbar = build(Settings.from_env(env))
        owner = uuid.uuid4()
        workspace = watched(sandbar, owner)
        since = tail_events(sandbar, owner)
        results["load_average_at_start"] = os.getloadavg()
        results["empty"] = {
            "events": sandbar.log.recorder.max_notification_id(),
            "audit": audit_figures(env, workspace, owner, since),
            "start_up": start_up(env, folder / "serve.log"),
        }
        print(json.dumps({"empty": results["empty"]}), file=sys.stderr)
        for size in sizes:
            have = sandbar.log.recorder.max_notification_id() or 0
            started = time.perf_counter()
            noise(sandbar.log, size - have)
            seeding = time.perf_counter() - started
            since = tail_events(sandbar, owner)
            at = {
                "events": sandbar.log.recorder.max_notification_id(),
                "load_average": os.getloadavg(),
                "seeding_events_per_s": round((size - have) / seeding),
                "audit": audit_figures(env, workspace, owner, since),
            }
            results[str(size)] = at
            print(json.dumps({str(size): at}), file=sys.stderr)
        sandbar.close()
        largest = results[str(sizes[-1])]
        largest["start_up_views_current"] = start_up(env, folder / "serve.log")
        as_if_upgraded(url)
        largest["start_up_after_upgrade"] = start_up(env, folder / "serve.log")
        largest["load_average_after_start_up"] = os.getloadavg()
    base = results["empty"]["audit"]
    for measure in ("seconds", "cpu_seconds"):
        results[f"{measure}_vs_empty_log"] = {
            str(size): {
                name: round(f[measure] / max(base[name][measure], 1e-3), 2)
                for name, f in results[str(size)]["audit"].items()
            }
            for size in sizes
        }
    results["load_average_at_end"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    write_results("scale_audit", results)
    return results


if __name__ == "__main__":
    main()

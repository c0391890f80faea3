"""How a list's first page costs as the list grows (issue 23, item 4: "first page p50 under
5 ms at any size").

Each list of the API is grown to 1k, 10k and 100k rows, and its first page (the default
100 rows) is fetched over HTTP from a real `sandbar serve`, with keep-alive, one request
at a time; so is a page from the middle of the list (a cursor at its half: keyset paging
makes any page cost the same). The figure is compared against the target (5 ms) and
against the same list at 1k rows in the same run (the baseline: `vs_1k`); `GET /healthz`
is timed in the same rounds, for the HTTP round trip's own share. At each size each
list's query is run under EXPLAIN ANALYZE, and the plan's nodes are printed: an index
range scan of the page's rows, no sort, no scan of the whole list (the history's also
filtered by person, whose rows they all are, and by kind=member, of which it has none).
(Each size has a user and a workspace of its own, all in one database: a list's rows sit
among the others'.)

The lists:
  workspaces  GET /api/workspaces: the caller in N workspaces
  members     GET /api/workspaces/{id}/members: N members
  sandboxes   GET /api/workspaces/{id}/sandboxes: N sandboxes
  usage       GET /api/workspaces/{id}/usage?days=366: N rows (366 days x N/366 sandboxes)
  history     GET /api/workspaces/{id}/history: N entries of the workspace log (its
              cursor is a log position, given as it is)

The rows are seeded with bulk SQL straight into the view tables of a fresh database (the
sign-up and the workspace lists are made through the API), then ANALYZEd: the rows are
what the views would hold; the event log does not hold them (no rebuild is run here).
Uses a fresh database on SANDBAR_BENCH_DATABASE_URL (default
postgresql://postgres@127.0.0.1:5432/postgres), dropped at the end. Prints JSON and writes
bench/results/scale_lists.json. Never asserts a timing.

Usage: .venv/bin/python bench/scale_lists.py [--quick] [--sizes 1000,10000,100000]
    [--requests 200] [--lists workspaces,members,sandboxes,usage,history] [--no-save]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import types
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infrastructure.usage import UsageTable  # noqa: E402
from interfaces.http.paging import Listing, encode  # noqa: E402
from projections.queries import ReadModelQueries  # noqa: E402
from projections.workspace_log_queries import WorkspaceLogQueries  # noqa: E402
from tests.conftest import FAST_HASHING, ServerProcess, register  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET_MS = 5.0
LISTS = ("workspaces", "members", "sandboxes", "usage", "history")
FILTERED_PLANS = ("history?person", "history?kind")  # (planned, not timed)
USAGE_DAYS = 366
WARMUP = 20
BURST = 5
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
SEEDED_POSITIONS = 10**15  # history rows seeded past any position the run's events take


# The database.


@contextmanager
def fresh_database() -> Iterator[str]:
    server = os.environ.get("SANDBAR_BENCH_DATABASE_URL", DEFAULT_URL)
    name = f"sandbar_bench_lists_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(server)
    params["dbname"] = name
    try:
        yield make_conninfo(**params)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Seeding: each list grown from what it holds to ``size`` rows, times 1 ms apart.


def grow(conn: psycopg.Connection[Any], name: str, ids: dict[str, UUID], size: int) -> int:
    """Add rows to list ``name`` up to ``size``; the rows it holds after."""
    user, workspace = ids["user"], ids["workspace"]
    if name == "workspaces":
        have = _count(conn, "SELECT count(*) FROM sandbar_members WHERE user_id = %s", user)
        conn.execute(
            "WITH w AS (INSERT INTO sandbar_workspaces (id, name, created_by, created_at)"
            "  SELECT gen_random_uuid(), 'w' || g, %s, %s + g * interval '1 ms'"
            "  FROM generate_series(%s::int, %s::int) g RETURNING id, created_at)"
            " INSERT INTO sandbar_members"
            " (id, workspace_id, user_id, role, active, added_at, workspace_created_at)"
            " SELECT gen_random_uuid(), w.id, %s, 'owner', true, w.created_at, w.created_at"
            " FROM w",
            (str(user), EPOCH, have, size - 1, user),
        )
        return _count(conn, "SELECT count(*) FROM sandbar_members WHERE user_id = %s", user)
    if name == "members":
        have = _count(
            conn, "SELECT count(*) FROM sandbar_members WHERE workspace_id = %s", workspace
        )
        conn.execute(
            "WITH u AS (INSERT INTO sandbar_users"
            "  (id, username, username_key, email, display_name, created_at)"
            "  SELECT gen_random_uuid(), n, n, NULL, n, %s + g * interval '1 ms'"
            "  FROM generate_series(%s::int, %s::int) g, LATERAL (SELECT %s || g AS n) name"
            "  RETURNING id, created_at)"
            " INSERT INTO sandbar_members"
            " (id, workspace_id, user_id, role, active, added_at, workspace_created_at)"
            " SELECT gen_random_uuid(), %s, u.id, 'guest', true, u.created_at, %s FROM u",
            (EPOCH, have, size - 1, f"m{workspace.hex[:8]}-", workspace, EPOCH),
        )
        return _count(
            conn, "SELECT count(*) FROM sandbar_members WHERE workspace_id = %s", workspace
        )
    if name == "sandboxes":
        have = _count(
            conn, "SELECT count(*) FROM sandbar_sandboxes WHERE workspace_id = %s", workspace
        )
        conn.execute(
            "INSERT INTO sandbar_sandboxes (id, workspace_id, name, type, kind, status, error,"
            " created_by, created_at, updated_at)"
            " SELECT gen_random_uuid(), %s, 's' || g, 'opencode', 'cloud', 'running', NULL,"
            " %s, %s + g * interval '1 ms', %s + g * interval '1 ms'"
            " FROM generate_series(%s::int, %s::int) g",
            (workspace, str(user), EPOCH, EPOCH, have, size - 1),
        )
        return _count(
            conn, "SELECT count(*) FROM sandbar_sandboxes WHERE workspace_id = %s", workspace
        )
    if name == "history":  # the workspace's limits set N times (positions far past the log's)
        have = _count(
            conn, "SELECT count(*) FROM sandbar_workspace_log WHERE workspace_id = %s", workspace
        )
        conn.execute(
            "INSERT INTO sandbar_workspace_log (position, workspace_id, aggregate_id, kind,"
            " event, actor, subject, time, item)"
            " SELECT (SELECT greatest(max(position), %s) FROM sandbar_workspace_log) + g, %s, %s,"
            " 'workspace', 'Workspace.LimitsSet', %s, NULL, %s + g * interval '1 ms',"
            " jsonb_build_object('id', %s::text, 'name', 'big', 'created_at', %s::text)"
            " FROM generate_series(1, %s::int) g",
            (
                SEEDED_POSITIONS,
                workspace,
                workspace,
                str(user),
                EPOCH,
                str(workspace),
                EPOCH.isoformat(),
                size - have,
            ),
        )
        return _count(
            conn, "SELECT count(*) FROM sandbar_workspace_log WHERE workspace_id = %s", workspace
        )
    # usage: USAGE_DAYS days of as many sandboxes as make ``size`` rows.
    have = _count(
        conn,
        "SELECT count(DISTINCT sandbox_id) FROM sandbar_usage WHERE workspace_id = %s",
        workspace,
    )
    boxes = max(1, round(size / USAGE_DAYS))
    conn.execute(
        "INSERT INTO sandbar_usage (day, workspace_id, sandbox_id, requests, input_tokens,"
        " output_tokens) SELECT current_date - d, %s, b.id, 1, 100, 10"
        " FROM generate_series(0, %s::int) d"
        " CROSS JOIN (SELECT gen_random_uuid() AS id FROM generate_series(1, %s::int)) b",
        (workspace, USAGE_DAYS - 1, max(0, boxes - have)),
    )
    return _count(conn, "SELECT count(*) FROM sandbar_usage WHERE workspace_id = %s", workspace)


def _count(conn: psycopg.Connection[Any], sql: str, param: UUID) -> int:
    row = conn.execute(sql, (param,)).fetchone()
    assert row is not None
    return int(row[0])


def middle_key(conn: psycopg.Connection[Any], name: str, ids: dict[str, UUID], rows: int) -> tuple:
    """The sort key of the row halfway down list ``name``."""
    user, workspace = ids["user"], ids["workspace"]
    sql, param = {
        "workspaces": (
            "SELECT workspace_created_at, workspace_id FROM sandbar_members"
            " WHERE user_id = %s AND active ORDER BY 1, 2",
            user,
        ),
        "members": (
            "SELECT added_at, user_id FROM sandbar_members WHERE workspace_id = %s AND active"
            " ORDER BY 1, 2",
            workspace,
        ),
        "sandboxes": (
            "SELECT created_at, id FROM sandbar_sandboxes WHERE workspace_id = %s ORDER BY 1, 2",
            workspace,
        ),
        "usage": (
            "SELECT day, sandbox_id FROM sandbar_usage WHERE workspace_id = %s"
            " ORDER BY 1 DESC, 2 DESC",
            workspace,
        ),
        "history": (
            "SELECT position, NULL FROM sandbar_workspace_log WHERE workspace_id = %s"
            " ORDER BY 1 DESC",
            workspace,
        ),
    }[name]
    row = conn.execute(f"{sql} OFFSET %s LIMIT 1", (param, rows // 2)).fetchone()
    assert row is not None
    return (row[0], row[1])


# Timing.


def path_of(name: str, workspace: UUID) -> str:
    return {
        "workspaces": "/api/workspaces",
        "members": f"/api/workspaces/{workspace}/members",
        "sandboxes": f"/api/workspaces/{workspace}/sandboxes",
        "usage": f"/api/workspaces/{workspace}/usage?days={USAGE_DAYS}",
        "history": f"/api/workspaces/{workspace}/history",
    }[name]


def timed(client: httpx.Client, url: str, n: int, paged: bool = True) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        r = client.get(url)
        out.append((time.perf_counter() - started) * 1000)
        r.raise_for_status()
        assert not paged or "link" in r.headers, (url, r.headers)  # (a full page, more after)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
    }


# Plans: each list's query, as the application sends it, under EXPLAIN ANALYZE.


class _Explaining:
    """A datastore whose connections EXPLAIN each statement instead of answering it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.plans: list[dict[str, Any]] = []

    @contextmanager
    def get_connection(self) -> Iterator[_Explaining]:
        yield self

    def execute(self, sql: str, params: Any = (), prepare: bool | None = None) -> Any:
        with psycopg.connect(self.url, row_factory=dict_row) as conn:
            row = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", params).fetchone()
        assert row is not None
        self.plans.append(next(iter(row.values()))[0])
        return types.SimpleNamespace(fetchall=list, fetchone=lambda: None)


def plan_of(url: str, name: str, ids: dict[str, UUID], limit: int) -> dict[str, Any]:
    store = _Explaining(url)
    reads = ReadModelQueries(store)  # type: ignore[arg-type]
    user, workspace = ids["user"], ids["workspace"]
    if name == "workspaces":
        reads.workspaces_of(user, None, limit + 1)
    elif name == "members":
        reads.members(workspace, None, limit + 1)
    elif name == "sandboxes":
        reads.sandboxes(workspace, None, limit + 1)
    elif name == "history":
        WorkspaceLogQueries(store).page(workspace, None, limit)  # type: ignore[arg-type]
    elif name.startswith("history?"):  # filtered: all the rows (by the user); none (members)
        person, kind = (user, None) if name == "history?person" else (None, "member")
        WorkspaceLogQueries(store).page(workspace, None, limit, person, kind)  # type: ignore[arg-type]
    else:
        since = datetime.now(UTC).date() - timedelta(days=USAGE_DAYS - 1)
        UsageTable.report(types.SimpleNamespace(_db=store), workspace, since, None, limit + 1)  # type: ignore[arg-type]
    (explained,) = store.plans
    return {
        "nodes": _nodes(explained["Plan"]),
        "execution_ms": round(explained["Execution Time"], 3),
        "shared_buffers_read_or_hit": explained["Plan"].get("Shared Hit Blocks", 0)
        + explained["Plan"].get("Shared Read Blocks", 0),
    }


def _nodes(plan: dict[str, Any], depth: int = 0) -> list[str]:
    label = plan["Node Type"]
    if "Index Name" in plan:
        label += f" using {plan['Index Name']}"
    label += f" (rows {plan.get('Actual Rows')})"
    out = ["  " * depth + label]
    for child in plan.get("Plans", []):
        out += _nodes(child, depth + 1)
    return out


# The run.


def run(sizes: list[int], requests: int, lists: tuple[str, ...] = LISTS) -> dict[str, Any]:
    load_before = os.getloadavg()
    plans: dict[str, dict[str, Any]] = {}
    # (list, size, "first" | "middle") -> (client, url); timed in interleaved rounds.
    points: dict[tuple[str, int, str], tuple[httpx.Client, str]] = {}
    rows: dict[tuple[str, int], int] = {}
    with fresh_database() as url, tempfile.TemporaryDirectory() as data:
        env = {
            **FAST_HASHING,
            "SANDBAR_WORKER": "false",
            "SANDBAR_DATABASE_URL": url,
            "SANDBAR_DATA_DIR": data,
            "SANDBAR_SECRET_KEY": "bench-secret-key-" + uuid.uuid4().hex,
        }
        server = ServerProcess(env, Path(data) / "server.log").start()
        users = []
        try:
            # Per size, a user and a workspace of their own: their workspaces, its
            # members, sandboxes and usage rows each grown to that size.
            ids_of = {}
            for size in sizes:
                user = register(server.url, f"bench{size}")
                users.append(user)
                r = user.client.post("/api/workspaces", json={"name": f"big{size}"})
                r.raise_for_status()
                ids_of[size] = {"user": UUID(user.id), "workspace": UUID(r.json()["id"])}
                with psycopg.connect(url, autocommit=True) as conn:
                    for name in lists:
                        rows[name, size] = grow(conn, name, ids_of[size], size)
                        base = path_of(name, ids_of[size]["workspace"])
                        key = middle_key(conn, name, ids_of[size], rows[name, size])
                        join = "&" if "?" in base else "?"
                        # (history's cursor is its log position, as it stands)
                        cursor = key[0] if name == "history" else encode(Listing[name], key)
                        middle = f"{base}{join}after={cursor}"
                        points[name, size, "first"] = (user.client, base)
                        points[name, size, "middle"] = (user.client, middle)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("ANALYZE")
            samples = interleaved(points, users[0].client, requests)
            plans = {
                str(size): {
                    name: plan_of(url, name, ids_of[size], 100)
                    for name in (*lists, *(FILTERED_PLANS if "history" in lists else ()))
                }
                for size in sizes
            }
        except Exception:
            print(server.log.read_text()[-4000:], file=sys.stderr)  # (the server's side)
            raise
        finally:
            for user in users:
                user.client.close()
            server.stop()
    baseline = min(sizes)
    results: dict[str, Any] = {name: {} for name in lists}
    for name in lists:
        base_p50 = statistics.median(samples[name, baseline, "first"])
        for size in sizes:
            first = summary(samples[name, size, "first"])
            results[name][str(size)] = {
                "rows": rows[name, size],
                "first_page": first,
                "middle_page": summary(samples[name, size, "middle"]),
                "vs_1k": round(first["p50_ms"] / base_p50, 2),
                "under_target": first["p50_ms"] < TARGET_MS,
            }
    return {
        "bench": "scale_lists",
        "what": "first-page latency (default limit 100) of each list over HTTP, keep-alive, "
        "one request at a time; every point timed in the same interleaved rounds",
        "target_p50_ms": TARGET_MS,
        "baseline": f"each list at {baseline} rows in this run (vs_1k = p50 / that p50)",
        "reference_healthz": summary(samples["healthz", 0, ""]),
        "requests_per_point": requests,
        "lists": results,
        "plans": plans,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def interleaved(
    points: dict[tuple[str, int, str], tuple[httpx.Client, str]],
    client: httpx.Client,
    requests: int,
) -> dict[tuple[str, int, str], list[float]]:
    """``requests`` timings of each point (and of /healthz), in rounds of BURST requests
    per point, the order turned and reversed every round (ABBA): a change in the
    machine's load falls on every point alike."""
    order = [*points, ("healthz", 0, "")]
    where = {**points, ("healthz", 0, ""): (client, "/healthz")}
    for point in order:  # warm up: connections, prepared statements, caches
        c, u = where[point]
        timed(c, u, WARMUP, paged=point[0] != "healthz")
    samples: dict[tuple[str, int, str], list[float]] = {p: [] for p in order}
    for n in range(max(1, requests // BURST)):
        turn = order[n % len(order) :] + order[: n % len(order)]
        for point in turn if n % 2 == 0 else reversed(turn):
            c, u = where[point]
            samples[point] += timed(c, u, BURST, paged=point[0] != "healthz")
    return samples


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results")
    parser.add_argument("--quick", action="store_true", help="1k and 10k rows, 50 requests")
    parser.add_argument("--lists", default=",".join(LISTS), help="which lists, by name")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.requests = "1000,10000", 50
    sizes = sorted(int(s) for s in args.sizes.split(","))
    lists = tuple(name for name in args.lists.split(",") if name)
    if set(lists) - set(LISTS):
        parser.error(f"lists are among {', '.join(LISTS)}")
    out = run(sizes, args.requests, lists)
    text = json.dumps(out, indent=2)
    print(text)
    if not args.no_save:
        (ROOT / "bench" / "results" / "scale_lists.json").write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()

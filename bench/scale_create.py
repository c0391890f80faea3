"""Creating a sandbox in a full workspace against creating one in an empty workspace.

One user fills a workspace per size (0, 1,000, 10,000 sandboxes by default) through the
real use case (``sandbar.sandboxes.create``), then times further creates into each, in
process and (``--http``) over HTTP to a real ``sandbar serve`` on the same database. The
baseline is the empty workspace in the same run: every sample of it creates the first
sandbox of a workspace made just before, so it stays empty. Rounds are interleaved, each
one in a rotated order of sizes, so drift in the machine's load touches every size alike.
The container worker is off.

Prints the figures as JSON: p50 and p99 per size in ms, and ``ratio_p50`` (p50 at that
size / p50 of the empty workspace). Never asserts a timing. ``bench/bench_scale.py`` can
call ``measure`` directly. Usage:

    .venv/bin/python bench/scale_create.py [--sizes 0,1000,10000] [--samples 200] [--http]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_core import bench_env, fresh_database, pct, postgres_server  # noqa: E402
from infrastructure.settings import Settings  # noqa: E402
from interfaces.bootstrap import Sandbar, build  # noqa: E402
from tests.conftest import ServerProcess, register  # noqa: E402

Create = Callable[[UUID], None]


def fill(sandbar: Sandbar, owner: UUID, workspace: UUID, n: int) -> float:
    """``n`` sandboxes made in ``workspace`` as a user makes them; the seconds it took."""
    started = time.perf_counter()
    for i in range(n):
        sandbar.sandboxes.create(owner, workspace, f"fill-{i}", "opencode")
        if (i + 1) % 1000 == 0:
            print(f"  {i + 1}/{n}", file=sys.stderr, flush=True)
    return time.perf_counter() - started


def sample(
    sizes: list[int], full: dict[int, UUID], fresh: Callable[[], UUID], create: Create, n: int
) -> dict[int, list[float]]:
    """``n`` timed creates per size, interleaved; size 0 into a new workspace each time."""
    times: dict[int, list[float]] = {s: [] for s in sizes}
    for r in range(n):
        k = r % len(sizes)
        for size in sizes[k:] + sizes[:k]:
            target = fresh() if size == 0 else full[size]
            t = time.perf_counter()
            create(target)
            times[size].append(time.perf_counter() - t)
    return times


def summary(times: dict[int, list[float]]) -> dict[str, Any]:
    base = pct(times[0], 50)
    return {
        str(size): {
            "p50_ms": round(pct(t, 50) * 1000, 3),
            "p99_ms": round(pct(t, 99) * 1000, 3),
            "ratio_p50": round(pct(t, 50) / base, 3),
        }
        for size, t in times.items()
    }


def measure(
    sandbar: Sandbar, env: dict[str, str], sizes: list[int], samples: int, http: bool
) -> dict[str, Any]:
    """Fill one workspace per size, then time creates into each (see the docstring)."""
    sizes = sorted({0, *sizes})
    server = ServerProcess(env, Path(tempfile.mkdtemp(prefix="sandbar-bench-")) / "server.log")
    server.start()
    try:
        user = register(server.url, "fill")
        owner = UUID(user.id) if isinstance(user.id, str) else user.id
        client = user.client
        full = {s: sandbar.workspaces.create(owner, f"size {s}")["id"] for s in sizes if s}
        filled = {}
        for size, ws in full.items():
            print(f"filling a workspace with {size} sandboxes ...", file=sys.stderr, flush=True)
            filled[str(size)] = round(fill(sandbar, owner, ws, size), 1)

        def fresh() -> UUID:
            return UUID(str(sandbar.workspaces.create(owner, "empty")["id"]))

        def in_process(ws: UUID) -> None:
            sandbar.sandboxes.create(owner, ws, "timed", "opencode")

        def over_http(ws: UUID) -> None:
            r = client.post(
                f"/api/workspaces/{ws}/sandboxes", json={"name": "t", "type": "opencode"}
            )
            assert r.status_code == 201, r.text

        results: dict[str, Any] = {"fill_seconds": filled, "samples": samples}
        sample(sizes, full, fresh, in_process, 20)  # warm up
        print("timing creates in process ...", file=sys.stderr, flush=True)
        results["in_process"] = summary(sample(sizes, full, fresh, in_process, samples))
        if http:
            sample(sizes, full, fresh, over_http, 20)
            print("timing creates over HTTP ...", file=sys.stderr, flush=True)
            results["http"] = summary(sample(sizes, full, fresh, over_http, samples))
        return results
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="0,1000,10000", help="sandboxes per workspace")
    parser.add_argument("--samples", type=int, default=200, help="timed creates per size")
    parser.add_argument("--http", action="store_true", help="also over HTTP")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    with postgres_server() as (server_url, _), fresh_database(server_url) as url:
        env = bench_env(url)
        sandbar = build(Settings.from_env(env))
        try:
            results = measure(sandbar, env, sizes, args.samples, args.http)
        finally:
            sandbar.close()
    print(json.dumps({"create_latency": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

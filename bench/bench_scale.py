"""Costs that must not grow with the data (issue 23, "Tests and bench"): one script.

It runs the scale benches, each its own module, and sets their figures against the
issue's targets in one table:

  create     bench/scale_create.py: a sandbox create into a workspace of 0, 1k and 10k
             sandboxes (in process and over HTTP); target: at 10k within 1.2x of the empty
             workspace's p50 (the baseline, in the same run)
  lists      bench/scale_lists.py: each list's first page at 1k, 10k and 100k rows over
             HTTP; target: p50 under 5 ms at every size
  audit      bench/scale_audit.py ("not measured" if the module is missing): `sandbar
             audit log`/`replay` time and peak RSS at 200k and 1M events (20k and 100k
             with --quick), and start-up time at the largest size, views current and
             after an upgrade; target: RSS within 20 MiB of the idle command. (It seeds
             the log through the application: about 20 minutes at 1M on 2 cores.)

``--quick`` passes through (smaller sizes, fewer samples): a check that the script runs,
not figures to quote. Writes bench/results/scale.json (every part's figures, the table,
the machine's load) and prints the table. Never asserts a timing.

Usage: .venv/bin/python bench/bench_scale.py [--quick] [--only create,lists,audit]
    [--lists workspaces,members,sandboxes,usage,history]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import platform
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import scale_create, scale_lists  # noqa: E402
from bench.bench_core import bench_env, fresh_database, postgres_server, write_results  # noqa: E402
from infrastructure.settings import Settings  # noqa: E402
from interfaces.bootstrap import build  # noqa: E402

CREATE_RATIO = 1.2  # create into the fullest workspace / into an empty one, p50
LIST_P50_MS = scale_lists.TARGET_MS
AUDIT_RSS_MIB = 20.0  # above the idle command's
NOT_MEASURED = "not measured"

Row = tuple[str, str, str, str]  # (what, figure, target, verdict)


# The parts: each runs its module and returns (figures, rows of the table).


def create_part(quick: bool, _: argparse.Namespace) -> tuple[dict[str, Any], list[Row]]:
    sizes, samples = ([0, 1000], 50) if quick else ([0, 1000, 10000], 200)
    with postgres_server() as (server_url, _), fresh_database(server_url) as url:
        env = bench_env(url)
        sandbar = build(Settings.from_env(env))
        try:
            figures = scale_create.measure(sandbar, env, sizes, samples, http=True)
        finally:
            sandbar.close()
    rows: list[Row] = []
    fullest = str(max(sizes))
    for way in ("in_process", "http"):
        for size, f in figures.get(way, {}).items():
            judged = size == fullest
            rows.append(
                (
                    f"create into {int(size):,} ({way.replace('_', ' ')})",
                    f"p50 {f['p50_ms']:.2f} ms, {f['ratio_p50']:.2f}x empty",
                    f"<= {CREATE_RATIO}x empty" if judged else "",
                    _verdict(f["ratio_p50"] <= CREATE_RATIO) if judged else "",
                )
            )
    return figures, rows


def lists_part(quick: bool, args: argparse.Namespace) -> tuple[dict[str, Any], list[Row]]:
    figures = scale_lists.main(
        ["--no-save", "--lists", args.lists, *(["--quick"] if quick else [])]
    )
    rows: list[Row] = []
    for name, by_size in figures["lists"].items():
        p50s = {size: f["first_page"]["p50_ms"] for size, f in by_size.items()}
        rows.append(
            (
                f"{name}: first page",
                ", ".join(f"{int(s) // 1000}k {p:.2f}" for s, p in p50s.items()) + " ms",
                f"p50 < {LIST_P50_MS:g} ms",
                _verdict(all(p < LIST_P50_MS for p in p50s.values())),
            )
        )
    return figures, rows


def audit_part(quick: bool, _: argparse.Namespace) -> tuple[dict[str, Any], list[Row]]:
    """bench/scale_audit.py's figures, if the module exists."""
    if importlib.util.find_spec("bench.scale_audit") is None:
        return {"status": NOT_MEASURED, "why": "no bench/scale_audit.py"}, [
            (
                "audit log/replay RSS and time",
                NOT_MEASURED,
                f"RSS <= idle + {AUDIT_RSS_MIB:g} MiB",
                "-",
            ),
            ("start-up at 1M events", NOT_MEASURED, "", "-"),
        ]
    scale_audit = importlib.import_module("bench.scale_audit")
    figures: dict[str, Any] = scale_audit.main(["--sizes", "20000,100000"] if quick else [])
    rows: list[Row] = []
    sizes = [s for s in figures.get("sizes", []) if str(s) in figures]
    for size in sizes:
        audit = figures[str(size)].get("audit", {})
        above = {n: f.get("rss_above_idle_mib", 0.0) for n, f in audit.items() if n != "idle"}
        worst = max(above, key=lambda n: above[n], default=None)
        if worst is None:
            continue
        slowest = max(audit, key=lambda n: audit[n].get("seconds", 0.0))
        rows.append(
            (
                f"audit at {size:,} events",
                f"RSS +{above[worst]:.1f} MiB ({worst}); slowest {slowest}"
                f" {audit[slowest].get('seconds', 0.0):.2f} s",
                f"RSS <= idle + {AUDIT_RSS_MIB:g} MiB",
                _verdict(above[worst] <= AUDIT_RSS_MIB),
            )
        )
    if sizes:
        largest = figures[str(sizes[-1])]
        for key in ("start_up_views_current", "start_up_after_upgrade"):
            if key in largest:
                f = largest[key]
                rows.append(
                    (
                        f"start-up at {sizes[-1]:,} events ({key.removeprefix('start_up_')})",
                        f"/healthz {f.get('to_healthz_s')} s, /readyz {f.get('to_readyz_s')} s",
                        "",
                        "",
                    )
                )
    return figures, rows


PARTS: dict[str, Callable[[bool, argparse.Namespace], tuple[dict[str, Any], list[Row]]]] = {
    "create": create_part,
    "lists": lists_part,
    "audit": audit_part,
}


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def table(rows: list[Row]) -> str:
    head: Row = ("what", "figure", "target", "verdict")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer samples")
    parser.add_argument("--only", default=",".join(PARTS), help="parts to run, by name")
    parser.add_argument(
        "--lists", default=",".join(scale_lists.LISTS), help="the lists to measure, by name"
    )
    args = parser.parse_args(argv)
    chosen = [p for p in args.only.split(",") if p]
    unknown = set(chosen) - set(PARTS)
    if unknown:
        parser.error(f"no such part: {', '.join(sorted(unknown))} (parts: {', '.join(PARTS)})")
    results: dict[str, Any] = {
        "bench": "scale",
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        },
    }
    rows: list[Row] = []
    for name in chosen:
        print(f"== {name}", file=sys.stderr, flush=True)
        figures, part_rows = PARTS[name](args.quick, args)
        results[name] = figures
        rows += part_rows
    results["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    results["when"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["table"] = [
        dict(zip(("what", "figure", "target", "verdict"), r, strict=True)) for r in rows
    ]
    text = table(rows)
    print(text)
    print(
        f"(load average before {results['machine']['loadavg_before']},"
        f" after {results['machine']['loadavg_after']}; {os.cpu_count()} CPUs)"
    )
    write_results("scale", results, "quick run: " if args.quick else "")
    return results


if __name__ == "__main__":
    main()

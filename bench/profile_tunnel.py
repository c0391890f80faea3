"""Where the tunnel's relays spend their CPU under bench_tunnel's load: py-spy on both ends.

Starts what bench/bench_tunnel.py starts (nginx serving the files, `sandbar serve` on a
fresh database, a real `sandbar agent connect`), then, for each load asked, runs wrk -t1
through the tunnel while py-spy samples `sandbar serve` (the proxy, interfaces/tunnel/
server.py and link.py) and the agent (interfaces/tunnel/agent.py and link.py) at once.
Prints, per process, the functions that hold the most samples themselves (self) and
with what they call (total), as a share of the process's samples (idle samples left out,
so the shares are of CPU time), and keeps py-spy's raw stacks (collapsed, one line per
stack: flamegraph.pl or speedscope read them) in --out.

py-spy is not one of Sandbar's dependencies: `.venv/bin/pip install py-spy` (it needs
ptrace: root, or CAP_SYS_PTRACE). A profiler slows what it samples: read shares, not
rates.
Usage: .venv/bin/python bench/profile_tunnel.py [--seconds S] [--connections 32,1]
       [--rate HZ] [--out DIR] [--top N]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_proxy import CpuMeter, say, wrk  # noqa: E402
from bench.bench_tunnel import running  # noqa: E402

PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
# The event loop's own frames: a sample whose stack holds one is of the loop's thread.
LOOP = ("Runner.run (", "BaseEventLoop.run_forever (")
# Leaves of a loop waiting for events: its stack ends in the loop itself (uvloop's C
# loop, or asyncio's selector) with no callback above it.
WAITING = ("Runner.run", "EpollSelector.select", "BaseSelectorEventLoop.select")


def frame_name(frame: str) -> str:
    """``function (path:line)`` as py-spy writes a frame, less the line and the folders
    up to the repository's (or site-packages')."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    for marker in ("/site-packages/", str(ROOT) + "/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def shares(raw: Path, top: int) -> dict[str, object]:
    """Self and total shares of the busiest functions of the event loop's thread in
    py-spy's collapsed stacks, and self shares by file. The loop waiting for events, and
    the other threads (the database's, the thread pool's), are counted apart: the relay
    is the loop's work. A leaf that writes to a socket (``transport.write`` and the
    methods that call it) holds the send system call's time: py-spy shows the last
    Python frame."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    files: Counter[str] = Counter()
    samples = waiting = others = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if "(" in f]
        if not any(mark in f for f in frames for mark in LOOP):
            others += n
            continue
        if frames[-1].partition(" (")[0] in WAITING:
            waiting += n
            continue
        samples += n
        names = [frame_name(f) for f in frames]
        own[names[-1]] += n
        files[names[-1].partition(" (")[2].rstrip(")")] += n
        for name in set(names):
            total[name] += n
    pct = 100.0 / samples if samples else 0.0
    return {
        "busy_samples": samples,
        "loop_waiting_samples": waiting,
        "other_thread_samples": others,
        "self": [(name, n * pct) for name, n in own.most_common(top)],
        "total": [(name, n * pct) for name, n in total.most_common(top * 2)],
        "files": [(name, n * pct) for name, n in files.most_common(top)],
    }


def print_shares(title: str, raw: Path, top: int) -> None:
    figures = shares(raw, top)
    print(
        f"\n{title}: {figures['busy_samples']} samples of the loop at work"
        f" ({figures['loop_waiting_samples']} of it waiting and"
        f" {figures['other_thread_samples']} of other threads left out); raw stacks: {raw}"
    )
    for kind in ("self", "files", "total"):
        print(f"  {kind}:")
        for fn, share in figures[kind]:  # type: ignore[attr-defined]
            print(f"    {share:5.1f}%  {fn}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20, help="seconds of each wrk run")
    parser.add_argument("--connections", default="32,1", help="wrk -c of each run")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, help="folder for the raw stacks (default: a temp)")
    parser.add_argument("--top", type=int, default=20, help="functions listed per process")
    args = parser.parse_args()
    if not Path(PY_SPY).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    out = args.out or Path(tempfile.mkdtemp(prefix="sandbar-profile-tunnel-"))
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="sandbar-profile-tunnel-run-"))
    folder.chmod(0o755)
    try:
        with running(folder) as run:
            url = f"{run.urls['tunnel']}/small.txt"
            headers = run.headers["tunnel"]
            pids = {"server": run.pids["server"], "agent": run.pids["agent"]}
            wrk(url, headers, 2, 32)  # warm up
            for connections in (int(c) for c in args.connections.split(",")):
                spies = {}
                for name, pid in pids.items():
                    raw = out / f"{name}-c{connections}.txt"
                    spies[name] = (
                        raw,
                        subprocess.Popen(
                            [
                                PY_SPY,
                                "record",
                                "--pid",
                                str(pid),
                                "--subprocesses",
                                "--rate",
                                str(args.rate),
                                "--duration",
                                str(args.seconds + 1),
                                "--format",
                                "raw",
                                "--output",
                                str(raw),
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE,
                        ),
                    )
                time.sleep(0.5)  # (py-spy attaches)
                with CpuMeter(pids) as cpu:
                    result = wrk(url, headers, args.seconds, connections)
                for _, spy in spies.values():
                    spy.wait(timeout=args.seconds + 30)
                n = result["requests"]
                say(
                    f"-c{connections}: {result['rps']:,.0f} req/s under py-spy,"
                    f" p99 {result['p99_ms']:.2f} ms;"
                    + "".join(f" {p} {cpu.procs[p] / n * 1e6:.0f} us" for p in pids)
                    + " CPU per request"
                )
                for name, (raw, _) in spies.items():
                    print_shares(f"{name}, wrk -c{connections}", raw, args.top)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

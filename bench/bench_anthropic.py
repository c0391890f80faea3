"""The Anthropic API proxy beside direct calls to the same API stand-in, in the same run.

  latency and rate  wrk (one thread, a Lua script for the POST) at 1 and 64 concurrent
                    keep-alive clients, plain JSON answers and streamed (SSE) ones:
                    POST {sandbar}/proxy/anthropic/v1/messages with a sandbox's proxy token
                    vs  POST {stand-in}/v1/messages with the real key.
                    p50/p99 of the whole answer, and answers/s
  first byte        an asyncio client on raw sockets (uvloop), streamed answers only:
                    time to the answer's first byte and to its first event (message_start),
                    at 1 and 64 concurrent clients, proxied vs direct; and 64 clients
                    whose answers stream at the API's own pace (the stand-in pauses 10 ms
                    between events): many answers in flight, none waiting for a turn
  context           what the proxy does in PostgreSQL for one request at a time, timed
                    alone in this process: usage.admit (before the request goes on) and
                    the write of usage.record (queued after the answer ends); under load
                    both are group commits, one statement for many requests

The stand-in (tests/anthropic_standin.py) runs in a process of its own, as does `sandbar
serve`, so neither shares a GIL with the load. Direct and proxied runs alternate within
each round (ABBA), and every figure is the median over rounds; "added" is the median of
the per-round differences. The machine is small and shared: read the differences and
ratios, not the absolute numbers. Never asserts a timing.

Uses a fresh database on SANDBAR_BENCH_DATABASE_URL (default
postgresql://postgres@127.0.0.1:5432/postgres), dropped at the end. Prints a table and
writes bench/results/anthropic.json. Needs wrk.
Usage: .venv/bin/python bench/bench_anthropic.py [--quick] [--rounds N] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_core import fresh_database, pct, postgres_server, write_results  # noqa: E402
from bench.bench_proxy import cpu_seconds  # noqa: E402
from bench.rounds import abba, even_rounds  # noqa: E402
from infrastructure.settings import Settings  # noqa: E402
from infrastructure.usage import IDLE_SECONDS  # noqa: E402
from interfaces.bootstrap import Sandbar, build  # noqa: E402
from interfaces.cli.output import table  # noqa: E402
from tests.anthropic_standin import REAL_KEY, AnthropicStandIn  # noqa: E402
from tests.conftest import FAST_HASHING, ServerProcess, free_port, register  # noqa: E402

PATH = "/v1/messages"
PROXY_PREFIX = "/proxy/anthropic"
MESSAGES = [{"role": "user", "content": "hello there"}]
BODIES = {
    "json": json.dumps({"model": "m", "max_tokens": 8, "messages": MESSAGES}).encode(),
    "stream": json.dumps(
        {"model": "m", "max_tokens": 8, "messages": MESSAGES, "stream": True}
    ).encode(),
}
CONCURRENCY = (1, 64)
PACE_MS = 10  # between a paced answer's events (the real API streams tokens about so)
SIDES = ("direct", "proxy")


# The stand-in, in a process of its own (this file, run with --serve-standin PORT).


def serve_standin(port: int) -> None:
    import uvicorn

    app = AnthropicStandIn()
    app.requests = deque(maxlen=1)  # type: ignore[assignment]  # it keeps every request
    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off"
    )


def start_standin(log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-standin", str(port)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            r = httpx.post(
                f"http://127.0.0.1:{port}{PATH}",
                content=BODIES["json"],
                headers={"x-api-key": REAL_KEY, "content-type": "application/json"},
                timeout=1,
            )
            if r.status_code == 200:
                return proc, port
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the stand-in did not start:\n{log.read_text()}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes] | None, what: str, grace: float = 15) -> float | None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; the seconds it took to stop on
    SIGTERM, or None if it had to be killed."""
    if proc is None or proc.poll() is not None:
        return 0.0
    t = time.perf_counter()
    proc.terminate()
    try:
        proc.wait(timeout=grace)
        return time.perf_counter() - t
    except subprocess.TimeoutExpired:
        print(f"({what} did not stop within {grace:g} s of SIGTERM: killed)", file=sys.stderr)
        proc.kill()
        proc.wait(timeout=10)
        return None


# Sandbar, a workspace and a sandbox with its proxy token.


def sandbox_token(server: ServerProcess, sandbar: Sandbar) -> tuple[str, UUID, UUID]:
    """(proxy token, workspace id, sandbox id)."""
    user = register(server.url, "bench")
    wid = user.client.post("/api/workspaces", json={"name": "bench"}).json()["id"]
    r = user.client.post(
        f"/api/workspaces/{wid}/sandboxes", json={"name": "bench", "type": "opencode"}
    )
    assert r.status_code == 201, r.text
    sid = UUID(r.json()["id"])
    return sandbar.secrets.proxy_token(sid), UUID(wid), sid


# wrk.

LUA = """
wrk.method = "POST"
wrk.body = %(body)s
wrk.headers["content-type"] = "application/json"
wrk.headers["x-api-key"] = %(key)s
wrk.headers["anthropic-version"] = "2023-06-01"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"connect\\": %%d, \\"read\\": %%d,"
    .. " \\"write\\": %%d, \\"status\\": %%d, \\"timeout\\": %%d, \\"p50_us\\": %%.1f,"
    .. " \\"p99_us\\": %%.1f, \\"mean_us\\": %%.1f, \\"max_us\\": %%.1f}\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""


class Target:
    """One side: where to POST, and with which key."""

    def __init__(
        self, name: str, port: int, path: str, key: str, scratch: Path, pids: dict[str, int]
    ) -> None:
        self.name, self.port, self.path, self.key = name, port, path, key
        self.pids = pids  # the processes whose CPU time a request on this side costs
        self.url = f"http://127.0.0.1:{port}{path}"
        self.scripts = {}
        for mode, body in BODIES.items():
            script = scratch / f"{name}-{mode}.lua"
            script.write_text(LUA % {"body": json.dumps(body.decode()), "key": json.dumps(key)})
            self.scripts[mode] = script

    def check(self) -> None:
        for body in BODIES.values():
            r = httpx.post(self.url, content=body, headers={"x-api-key": self.key}, timeout=10)
            whole = "message_stop" in r.text or "echo: hello there" in r.text
            assert r.status_code == 200 and whole, r.text


def wrk(target: Target, mode: str, conns: int, seconds: float) -> dict[str, Any]:
    cpu = {name: cpu_seconds(pid) for name, pid in target.pids.items()}
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(target.scripts[mode]),
            target.url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")
    raw = json.loads(line[4:])
    errors = sum(raw[k] for k in ("connect", "read", "write", "status", "timeout"))
    n = max(1, raw["requests"])
    return {
        "cpu_us_per_request": {
            name: (cpu_seconds(pid) - cpu[name]) / n * 1e6 for name, pid in target.pids.items()
        },
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "requests": raw["requests"],
        "errors": errors,
    }


# Time to first byte: an asyncio client on raw sockets.


async def _first_bytes(
    target: Target, conns: int, seconds: float, gap_ms: int
) -> tuple[list[float], list[float], list[float], int]:
    """(to the first byte, to the first event, to the end) of streamed answers, seconds;
    and the number of answers that were not 200. ``gap_ms``: the stand-in's pause
    between events (0: none)."""
    body = BODIES["stream"]
    request = (
        f"POST {target.path} HTTP/1.1\r\nhost: 127.0.0.1:{target.port}\r\n"
        f"x-standin-gap-ms: {gap_ms}\r\n"
        f"content-type: application/json\r\nx-api-key: {target.key}\r\n"
        f"anthropic-version: 2023-06-01\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body
    heads: list[float] = []
    events: list[float] = []
    ends: list[float] = []
    bad = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def client() -> None:
        nonlocal bad
        reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
        try:
            while loop.time() < deadline:
                started = time.perf_counter()
                writer.write(request)
                buf = b""
                head = event = None
                while True:
                    data = await reader.read(65536)
                    if not data:
                        raise ConnectionError("the server closed the connection")
                    now = time.perf_counter()
                    if head is None:
                        head = now
                    buf += data
                    if event is None and b"event: message_start" in buf:
                        event = now
                    if buf.endswith(b"\r\n0\r\n\r\n"):
                        break
                if not buf.startswith(b"HTTP/1.1 200 ") or event is None:
                    bad += 1
                    continue
                heads.append(head - started)
                events.append(event - started)
                ends.append(now - started)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(conns)))
    return heads, events, ends, bad


def first_bytes(target: Target, conns: int, seconds: float, gap_ms: int = 0) -> dict[str, Any]:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        heads, events, ends, bad = runner.run(_first_bytes(target, conns, seconds, gap_ms))
    ms = 1000.0
    return {
        "head_p50_ms": pct(heads, 50) * ms,
        "head_p99_ms": pct(heads, 99) * ms,
        "event_p50_ms": pct(events, 50) * ms,
        "event_p99_ms": pct(events, 99) * ms,
        "end_p50_ms": pct(ends, 50) * ms,
        "end_p99_ms": pct(ends, 99) * ms,
        "samples": len(events),
        "errors": bad,
    }


# PostgreSQL per request, alone.


def db_alone(sandbar: Sandbar, workspace_id: UUID, n: int) -> dict[str, Any]:
    """One request at a time, so each admit is a statement of its own (under load, the
    group commit makes one statement serve many); recording is queued, so the time of
    its write is measured by flushing it."""
    sandbox_id = uuid.uuid4()  # (no such sandbox: the table does not care)
    counts = {
        "input_tokens": 2,
        "output_tokens": 3,
        "cache_creation_input_tokens": 3,
        "cache_read_input_tokens": 5,
    }
    limits: list[float] = []
    admit: list[float] = []
    record: list[float] = []
    usage = sandbar.usage

    async def run() -> None:
        try:
            for i in range(n + 20):
                t = time.perf_counter()
                await asyncio.to_thread(usage.limits, workspace_id)
                t1 = time.perf_counter()
                day = await usage.admit(workspace_id)
                t2 = time.perf_counter()
                usage.record(workspace_id, sandbox_id, day, counts)
                await usage.flush()
                t3 = time.perf_counter()
                if i >= 20:  # warmed up
                    limits.append(t1 - t)
                    admit.append(t2 - t1)
                    record.append(t3 - t2)
        finally:
            await usage.close()  # its pool belongs to this event loop

    asyncio.run(run())
    ms = 1000.0
    return {
        "samples": n,
        "limits_read_p50_ms": pct(limits, 50) * ms,
        "admit_p50_ms": pct(admit, 50) * ms,
        "admit_p99_ms": pct(admit, 99) * ms,
        "record_p50_ms": pct(record, 50) * ms,
        "record_p99_ms": pct(record, 99) * ms,
    }


def usage_counted(url: str, workspace_id: UUID, sandbox_id: UUID) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        admitted = conn.execute(
            "SELECT coalesce(sum(requests), 0) FROM sandbar_usage_totals WHERE workspace_id = %s",
            (workspace_id,),
        ).fetchone()
        recorded = conn.execute(
            "SELECT coalesce(sum(requests), 0) FROM sandbar_usage WHERE sandbox_id = %s",
            (sandbox_id,),
        ).fetchone()
    return {"admitted": int(admitted[0]), "recorded": int(recorded[0])}  # type: ignore[index]


# The rounds.


def paired(per_round: list[dict[str, dict[str, Any]]], key: str) -> dict[str, float]:
    """Medians of each side's ``key``, and of the per-round proxy - direct difference."""
    direct = [r["direct"][key] for r in per_round]
    proxy = [r["proxy"][key] for r in per_round]
    return {
        "direct": statistics.median(direct),
        "proxy": statistics.median(proxy),
        "added": statistics.median(p - d for p, d in zip(proxy, direct, strict=True)),
    }


def sides_of(per_round: list[dict[str, dict[str, Any]]], keys: tuple[str, ...]) -> dict[str, float]:
    """``direct_{key}``, ``proxy_{key}`` and ``added_{key}`` for each key (``paired``)."""
    out: dict[str, float] = {}
    for key in keys:
        fig = paired(per_round, key)
        out.update({f"{side}_{key}": fig[side] for side in ("direct", "proxy", "added")})
    return out


def run_rounds(
    targets: dict[str, Target], rounds: int, seconds: float, ttfb_seconds: float
) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(wrk figures, first-byte figures, answers the proxy completed)."""
    loads: dict[tuple[str, int], list[dict[str, dict[str, Any]]]] = {
        (m, c): [] for m in BODIES for c in CONCURRENCY
    }
    firsts: dict[tuple[int, int], list[dict[str, dict[str, Any]]]] = {
        (c, 0): [] for c in CONCURRENCY
    }
    # Many answers streaming at once at the API's own pace, none waiting for a turn.
    firsts[max(CONCURRENCY), PACE_MS] = []
    proxied = 0
    for i in range(rounds):
        order = abba(SIDES, i)  # drift hits both sides alike
        for (mode, conns), results in loads.items():
            one: dict[str, dict[str, Any]] = {}
            for side in order:
                one[side] = wrk(targets[side], mode, conns, seconds)
                if side == "proxy":
                    proxied += one[side]["requests"]
            results.append(one)
            d, p = one["direct"], one["proxy"]
            print(
                f"  round {i + 1}/{rounds} {mode:6} c={conns:<2}  direct p50 {d['p50_ms']:6.2f}"
                f" p99 {d['p99_ms']:6.2f} ms {d['rps']:7.0f}/s | proxy p50 {p['p50_ms']:6.2f}"
                f" p99 {p['p99_ms']:6.2f} ms {p['rps']:7.0f}/s",
                file=sys.stderr,
                flush=True,
            )
        for (conns, gap), results in firsts.items():
            one = {side: first_bytes(targets[side], conns, ttfb_seconds, gap) for side in order}
            proxied += one["proxy"]["samples"] + one["proxy"]["errors"]
            results.append(one)
            d, p = one["direct"], one["proxy"]
            paced = f" paced {gap} ms" if gap else ""
            print(
                f"  round {i + 1}/{rounds} first event c={conns:<2}{paced}  direct p50"
                f" {d['event_p50_ms']:6.2f} p99 {d['event_p99_ms']:6.2f} ms | proxy p50"
                f" {p['event_p50_ms']:6.2f} p99 {p['event_p99_ms']:6.2f} ms",
                file=sys.stderr,
                flush=True,
            )

    load_out: dict[str, Any] = {}
    for (mode, conns), results in loads.items():
        rps = paired(results, "rps")
        load_out[f"{mode}_c{conns}"] = {
            "mode": mode,
            "concurrency": conns,
            **sides_of(results, ("p50_ms", "p99_ms")),
            "direct_rps": rps["direct"],
            "proxy_rps": rps["proxy"],
            "rps_ratio": statistics.median(r["proxy"]["rps"] / r["direct"]["rps"] for r in results),
            "sandbar_cpu_us_per_request": statistics.median(
                r["proxy"]["cpu_us_per_request"]["sandbar"] for r in results
            ),
            "standin_cpu_us_per_request": statistics.median(
                r["direct"]["cpu_us_per_request"]["standin"] for r in results
            ),
            "errors": sum(r[s]["errors"] for r in results for s in SIDES),
            "rounds": results,
        }
    first_out: dict[str, Any] = {}
    for (conns, gap), results in firsts.items():
        first_out[f"c{conns}_paced" if gap else f"c{conns}"] = {
            "concurrency": conns,
            "event_gap_ms": gap,
            **sides_of(
                results,
                ("head_p50_ms", "event_p50_ms", "event_p99_ms", "end_p50_ms", "end_p99_ms"),
            ),
            "errors": sum(r[s]["errors"] for r in results for s in SIDES),
            "rounds": results,
        }
    return load_out, first_out, proxied


def measure(
    server: ServerProcess,
    sandbar: Sandbar,
    url: str,
    standin: tuple[int, int],
    scratch: Path,
    rounds: int,
    seconds: float,
    ttfb_seconds: float,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
    """(wrk figures, first-byte figures, usage counted by the proxy)."""
    token, workspace_id, sandbox_id = sandbox_token(server, sandbar)
    standin_pid, standin_port = standin
    assert server.proc is not None
    targets = {
        "direct": Target("direct", standin_port, PATH, REAL_KEY, scratch, {"standin": standin_pid}),
        "proxy": Target(
            "proxy",
            server.port,
            PROXY_PREFIX + PATH,
            token,
            scratch,
            {"standin": standin_pid, "sandbar": server.proc.pid},
        ),
    }
    for target in targets.values():
        target.check()
    print("warming up ...", file=sys.stderr, flush=True)
    warm_up(targets)
    time.sleep(2 * IDLE_SECONDS + 1.0)  # what the warm-up counted ahead is given back
    before = usage_counted(url, workspace_id, sandbox_id)
    print(
        f"{rounds} rounds: wrk {seconds:g} s per run, first bytes {ttfb_seconds:g} s per run ...",
        file=sys.stderr,
        flush=True,
    )
    load, first, proxied = run_rounds(targets, rounds, seconds, ttfb_seconds)
    # The last usage records land, and what was counted ahead and not used is given back.
    time.sleep(2 * IDLE_SECONDS + 1.0)
    after = usage_counted(url, workspace_id, sandbox_id)
    usage = {
        "answers_completed_by_clients": proxied,
        "admitted": after["admitted"] - before["admitted"],
        "recorded": after["recorded"] - before["recorded"],
    }
    usage["admitted_not_recorded"] = usage["admitted"] - usage["recorded"]
    return load, first, usage


def warm_up(targets: dict[str, Target]) -> None:
    """Connections, pools and threads, on both sides."""
    for side in SIDES:
        for mode in BODIES:
            wrk(targets[side], mode, max(CONCURRENCY), 1)
        first_bytes(targets[side], max(CONCURRENCY), 0.5)


# The run.


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (a smoke run)")
    parser.add_argument(
        "--rounds", type=int, help="rounds of every measure, made even (ABBA; default 6; quick 2)"
    )
    parser.add_argument("--seconds", type=float, help="seconds per wrk run (default 5; quick 2)")
    parser.add_argument("--serve-standin", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_standin:
        serve_standin(args.serve_standin)
        return 0
    if shutil.which("wrk") is None:
        print("wrk is needed (apt-get install wrk)", file=sys.stderr)
        return 2
    rounds = even_rounds(args.rounds or (2 if args.quick else 6))
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    ttfb_seconds = max(1.0, seconds * 0.6)
    db_samples = 200 if args.quick else 1000

    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="sandbar-bench-anthropic-"))
    standin, standin_port = start_standin(scratch / "standin.log")
    try:
        with postgres_server() as (server_url, where), fresh_database(server_url) as url:
            env = {
                **FAST_HASHING,  # for the user made to set up; no timed path hashes
                "SANDBAR_WORKER": "false",
                "SANDBAR_DATABASE_URL": url,
                "SANDBAR_DATA_DIR": str(scratch / "data"),
                "SANDBAR_SECRET_KEY": uuid.uuid4().hex,
                "SANDBAR_ANTHROPIC_API_KEY": REAL_KEY,
                "SANDBAR_ANTHROPIC_BASE_URL": f"http://127.0.0.1:{standin_port}",
            }
            server = ServerProcess(env, scratch / "server.log").start()
            sandbar: Sandbar | None = None
            stopped: float | None = None
            try:
                sandbar = build(Settings.from_env(env))
                load, first, usage = measure(
                    server,
                    sandbar,
                    url,
                    (standin.pid, standin_port),
                    scratch,
                    rounds,
                    seconds,
                    ttfb_seconds,
                )
                print("PostgreSQL per request, alone ...", file=sys.stderr, flush=True)
                other = UUID(
                    register(server.url, "db")
                    .client.post("/api/workspaces", json={"name": "db"})
                    .json()["id"]
                )
                db = db_alone(sandbar, other, db_samples)
            finally:
                stopped = stop(server.proc, "sandbar serve")
                if sandbar is not None:
                    sandbar.close()
            log_text = (scratch / "server.log").read_text()
    finally:
        stop(standin, "the stand-in")
    elapsed = time.perf_counter() - started
    tracebacks = log_text.count("Traceback")

    def ms(x: float) -> str:
        return f"{x:.2f} ms"

    def added(x: float) -> str:
        return f"{x:+.2f} ms"

    rows = []
    for fig in load.values():
        what = f"{fig['mode']}, {fig['concurrency']} client{'s' if fig['concurrency'] > 1 else ''}"
        rows += [
            (what, "p50", ms(fig["direct_p50_ms"]), ms(fig["proxy_p50_ms"]),
             added(fig["added_p50_ms"])),
            ("", "p99", ms(fig["direct_p99_ms"]), ms(fig["proxy_p99_ms"]),
             added(fig["added_p99_ms"])),
            ("", "answers/s", f"{fig['direct_rps']:,.0f}", f"{fig['proxy_rps']:,.0f}",
             f"{fig['rps_ratio']:.2f}x"),
            ("", "CPU us/answer", f"{fig['standin_cpu_us_per_request']:.0f} (API)",
             f"{fig['sandbar_cpu_us_per_request']:.0f} (Sandbar)", ""),
        ]  # fmt: skip
    for fig in first.values():
        what = f"first byte, {fig['concurrency']} client{'s' if fig['concurrency'] > 1 else ''}"
        if fig["event_gap_ms"]:
            what += f", events {fig['event_gap_ms']} ms apart"
        rows += [
            (what, "head p50", ms(fig["direct_head_p50_ms"]), ms(fig["proxy_head_p50_ms"]),
             added(fig["added_head_p50_ms"])),
            ("", "1st event p50", ms(fig["direct_event_p50_ms"]), ms(fig["proxy_event_p50_ms"]),
             added(fig["added_event_p50_ms"])),
            ("", "1st event p99", ms(fig["direct_event_p99_ms"]), ms(fig["proxy_event_p99_ms"]),
             added(fig["added_event_p99_ms"])),
        ]  # fmt: skip
        if fig["event_gap_ms"]:
            rows += [
                ("", "whole answer p50", ms(fig["direct_end_p50_ms"]),
                 ms(fig["proxy_end_p50_ms"]), added(fig["added_end_p50_ms"])),
                ("", "whole answer p99", ms(fig["direct_end_p99_ms"]),
                 ms(fig["proxy_end_p99_ms"]), added(fig["added_end_p99_ms"])),
            ]  # fmt: skip
    table(["MEASURE", "FIGURE", "DIRECT", "PROXIED", "ADDED / RATIO"], rows)

    worst_p50 = max(f["added_p50_ms"] for f in load.values())
    worst_p99 = max(f["added_p99_ms"] for f in load.values())
    worst_first = max(f["added_event_p50_ms"] for f in first.values())
    targets_met = {
        "added_p50_under_2ms": {"worst_ms": worst_p50, "met": worst_p50 < 2},
        "added_p99_under_10ms": {"worst_ms": worst_p99, "met": worst_p99 < 10},
        "first_event_p50_within_2ms": {"worst_ms": worst_first, "met": worst_first < 2},
    }
    for_c1 = {
        "added_p50_ms": max(load[f"{m}_c1"]["added_p50_ms"] for m in BODIES),
        "added_p99_ms": max(load[f"{m}_c1"]["added_p99_ms"] for m in BODIES),
        "added_first_event_p50_ms": first["c1"]["added_event_p50_ms"],
    }
    errors = sum(f["errors"] for f in load.values()) + sum(f["errors"] for f in first.values())

    def yes(met: bool) -> str:
        return "met" if met else "NOT met"

    print(
        f"\ntargets (worst case over JSON/SSE and 1/64 clients):"
        f" p50 added < 2 ms: {yes(worst_p50 < 2)} ({added(worst_p50)});"
        f" p99 added < 10 ms: {yes(worst_p99 < 10)} ({added(worst_p99)});"
        f" first event within 2 ms: {yes(worst_first < 2)} ({added(worst_first)}).\n"
        f"at 1 client alone: p50 added {added(for_c1['added_p50_ms'])}, p99 added"
        f" {added(for_c1['added_p99_ms'])}, first event"
        f" {added(for_c1['added_first_event_p50_ms'])}."
        f"\nPostgreSQL for one request at a time, alone in this process: limits read"
        f" {ms(db['limits_read_p50_ms'])}, usage.admit {ms(db['admit_p50_ms'])} (p99"
        f" {ms(db['admit_p99_ms'])}) before the request goes on; usage.record"
        f" written in {ms(db['record_p50_ms'])} (p99 {ms(db['record_p99_ms'])}), queued after"
        f" the answer.\n"
        f"usage: {usage['answers_completed_by_clients']:,} proxied answers completed,"
        f" {usage['admitted']:,} admitted, {usage['recorded']:,} recorded"
        f" ({usage['admitted_not_recorded']:,} admitted and never recorded)."
        f"  errors: {errors}.  tracebacks in the server's log: {tracebacks}.  sandbar serve"
        f" {'stopped on SIGTERM' if stopped is not None else 'had to be KILLED'}.\n"
        f"median of {rounds} rounds, direct and proxied alternating (ABBA); wrk {seconds:g} s,"
        f" first bytes {ttfb_seconds:g} s per run.  {os.cpu_count()} CPUs."
        f"  PostgreSQL: {where}.  Whole run: {elapsed:.0f} s."
    )
    results = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "postgres": where,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "quick": args.quick,
        "rounds": rounds,
        "wrk_seconds": seconds,
        "first_byte_seconds": ttfb_seconds,
        "seconds": elapsed,
        "targets": targets_met,
        "at_one_client": for_c1,
        "load": load,
        "first_byte": first,
        "db_per_request_alone": db,
        "usage": usage,
        "errors": errors,
        "server_log_tracebacks": tracebacks,
        "server_stopped_on_sigterm_within_s": stopped,
    }
    write_results("anthropic", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

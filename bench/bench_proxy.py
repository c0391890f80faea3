"""Sandbar's subdomain proxy beside nginx and the bare upstream, measured in one run.

  small answers  wrk -t1 -c32 --latency on a 100-byte file: the upstream directly, nginx as
                 a reverse proxy (1 worker, keep-alive upstream, 64k proxy buffers) and
                 Sandbar's proxy (a sandbox routed to the same upstream, an access token as
                 Authorization: Bearer). req/s, p50/p99, and p50/p99 added to direct; the
                 same at one connection (-c1), where latency is not queueing; and each
                 proxy's CPU time per request (less exposed to a busy machine than rates)
  download       100 MiB with curl through each, MiB/s; Sandbar's RSS before the downloads
                 and at its peak during them (VmHWM after clear_refs, and VmRSS sampled)
  SSE            tests/upstream.py's TestAgent, gated: the time from letting the agent send
                 an event to the event reaching the client, directly vs through Sandbar

The upstream is nginx serving static files (a process of its own); nginx the reverse proxy
is another; `sandbar serve` a third, each on a free loopback port with its own temporary
folder. Within a round the sides run one after the other, in ABBA order (forward, then
backward in the next round: ``abba``); each figure is the median over rounds, each ratio or
"added" figure the median over pairs of rounds of the pair's means. The machine is small
and shared (2 cores carry wrk, the upstream and the proxy): read ratios and differences,
not absolute numbers. The cores that processes outside
the benchmark kept busy are reported beside each figure; --wait-quiet S first waits for a
quiet machine. Never asserts a timing.

Uses a fresh database on SANDBAR_BENCH_DATABASE_URL (default
postgresql://postgres@127.0.0.1:5432/postgres), dropped at the end. Needs wrk, curl and
nginx. Prints a table and writes bench/results/proxy.json.
Usage: .venv/bin/python bench/bench_proxy.py [--quick] [--rounds N] [--seconds S]
       [--wait-quiet S]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_core import fresh_database, pct, postgres_server, write_results  # noqa: E402
from bench.rounds import (  # noqa: E402  (rotated: for bench_hostile)
    abba,
    even_rounds,
    pair_difference,
    pair_ratio,
)
from domain.sandboxes import Sandbox  # noqa: E402
from infrastructure.settings import Settings  # noqa: E402
from interfaces.bootstrap import Sandbar, build  # noqa: E402
from interfaces.cli.output import table  # noqa: E402
from tests.conftest import FAST_HASHING, ServerProcess, free_port, register  # noqa: E402
from tests.nginx_server import NGINX, nginx  # noqa: E402
from tests.upstream import TestAgent, serving  # noqa: E402

WRK = shutil.which("wrk") or "/usr/bin/wrk"
CURL = shutil.which("curl") or "/usr/bin/curl"
SMALL = b"x" * 99 + b"\n"  # the 100-byte file
BIG_MIB = 100
MIB = 1024 * 1024
SIDES = ("direct", "nginx", "sandbar")
TARGETS = {
    "rps_vs_nginx": 0.5,  # at least
    "added_p99_ms": 5.0,  # under
    "download_vs_nginx": 0.7,  # at least
    "sse_added_ms": 2.0,  # under
    # under: Sandbar's peak RSS during the downloads less before (a tenth of the file; a
    # proxy that buffered the answer would show the file's size)
    "download_growth_mib": 10.0,
}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# The upstream and nginx as a reverse proxy.


UPSTREAM = """
  sendfile on;
  tcp_nopush on;
  server {{
    listen 127.0.0.1:{port};
    root {www};
  }}
"""

REVERSE = """
  upstream files {{
    server 127.0.0.1:{upstream};
    keepalive 32;
    keepalive_requests 1000000;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://files;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffers 16 64k;
      proxy_buffer_size 64k;
    }}
  }}
"""


# Sandbar, with sandboxes routed to arbitrary upstreams.


def bench_files(folder: Path) -> Path:
    """``folder/www`` with the files the benchmarks fetch: SMALL as small.txt and
    BIG_MIB MiB of random bytes as big.bin."""
    www = folder / "www"
    www.mkdir(parents=True)
    (www / "small.txt").write_bytes(SMALL)
    block = os.urandom(MIB)
    with (www / "big.bin").open("wb") as f:
        for _ in range(BIG_MIB):
            f.write(block)
    return www


@contextmanager
def sandbar_serving(
    url: str, folder: Path, log: Path, **settings: str
) -> Iterator[tuple[ServerProcess, Sandbar]]:
    """``sandbar serve`` on the database at ``url`` (no container worker), its output in
    ``log``, and Sandbar wired in this process on the same database; both closed after."""
    env = {
        **FAST_HASHING,
        "SANDBAR_WORKER": "false",
        "SANDBAR_DATABASE_URL": url,
        "SANDBAR_DATA_DIR": str(folder / "data"),
        "SANDBAR_SECRET_KEY": uuid.uuid4().hex,
        **settings,
    }
    server = ServerProcess(env, log).start()
    sandbar = build(Settings.from_env(env))
    try:
        yield server, sandbar
    finally:
        sandbar.close()
        server.stop()


class SandbarSide:
    def __init__(self, server: ServerProcess, sandbar: Sandbar) -> None:
        self.server = server
        self.sandbar = sandbar
        self.user = register(server.url, "bench")
        r = self.user.client.post("/api/workspaces", json={"name": "bench"})
        assert r.status_code == 201, r.text
        self.workspace = r.json()["id"]

    def route(self, upstream: str) -> dict[str, str]:
        """A sandbox whose agent is at ``upstream`` ("host:port"): the headers that reach it
        through the proxy."""
        r = self.user.client.post(
            f"/api/workspaces/{self.workspace}/sandboxes", json={"name": "b", "type": "opencode"}
        )
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        box = self.sandbar.log.find(UUID(sid), Sandbox)
        box.record_started(upstream)
        self.sandbar.log.save(box)
        r = self.user.client.post(f"/api/sandboxes/{sid}/access-tokens")
        assert r.status_code in (200, 201), r.text
        return {
            "Host": f"oc-{sid}.localhost:{self.server.port}",
            "Authorization": f"Bearer {r.json()['token']}",
        }

    @property
    def pid(self) -> int:
        assert self.server.proc is not None
        return self.server.proc.pid


def check_proxied(url: str, headers: dict[str, str], expect: bytes, log: Path) -> None:
    """One request through Sandbar first: it must answer with the upstream's body."""
    deadline = time.monotonic() + 10
    while True:  # the route reaches the server's cache through the change feed
        r = httpx.get(url, headers=headers, timeout=10)
        if r.status_code == 200 and r.content == expect:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"Sandbar's proxy answered {r.status_code} {r.content[:300]!r}, not the"
                f" upstream's body\n{log.read_text(errors='replace')[-3000:]}"
            )
        time.sleep(0.2)


# Process figures.


def status_field(pid: int, name: str) -> float:
    """A /proc/PID/status figure in MiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(name)


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` (all its threads) and of its children (nginx's worker)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / TICK
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in children.read_text().split() if children.exists() else []:
        with contextlib.suppress(OSError):
            total += cpu_seconds(int(child))
    return total


def machine_busy() -> float:
    """CPU seconds spent by the whole machine, all cores, not idle."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / TICK


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children (wrk, curl)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_load(seconds: float = 2.0) -> float:
    """Cores the machine keeps busy over ``seconds`` (before the benchmark starts: others')."""
    busy, t = machine_busy(), time.perf_counter()
    time.sleep(seconds)
    return (machine_busy() - busy) / (time.perf_counter() - t)


def wait_quiet(limit: float, below: float = 0.3) -> float:
    """Wait up to ``limit`` seconds for the machine's load to fall below ``below`` cores;
    returns the last load seen."""
    deadline = time.monotonic() + limit
    load = machine_load()
    while load >= below and time.monotonic() < deadline:
        say(f"(the machine is busy: {load:.2f} cores; waiting for it to quieten)")
        time.sleep(10)
        load = machine_load()
    return load


class CpuMeter:
    """Over a measure: each process's CPU seconds, wrk's, and the machine's busy time
    less all of ours (other people's work on a shared machine)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def __enter__(self) -> CpuMeter:
        self._t = time.perf_counter()
        self._procs = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._children = children_cpu()
        self._self = time.process_time()
        self._busy = machine_busy()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall = time.perf_counter() - self._t
        self.procs = {n: cpu_seconds(p) - self._procs[n] for n, p in self.pids.items()}
        self.client = children_cpu() - self._children
        ours = sum(self.procs.values()) + self.client + time.process_time() - self._self
        self.others_cores = max(0.0, machine_busy() - self._busy - ours) / self.wall


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RssSampler:
    """VmRSS of ``pid`` every few milliseconds, in a thread; ``peak`` in MiB."""

    def __init__(self, pid: int, every: float = 0.005) -> None:
        self.pid, self.every = pid, every
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, status_field(self.pid, "VmRSS"))
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# (1) Small answers: wrk.

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, headers: dict[str, str], seconds: float, connections: int) -> dict[str, Any]:
    args = [WRK, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    dist = dict(re.findall(r"^\s+(\d+)%\s+(\S+)$", out, re.MULTILINE))
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.MULTILINE)
    total = re.search(r"^\s+(\d+) requests in", out, re.MULTILINE)
    if not (rps and total and "50" in dist and "99" in dist):
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)$", out, re.MULTILINE)
    return {
        "rps": float(rps.group(1)),
        "p50_ms": _ms(dist["50"]),
        "p99_ms": _ms(dist["99"]),
        "requests": int(total.group(1)),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


def small_answers(
    urls: dict[str, str],
    headers: dict[str, dict[str, str]],
    pids: dict[str, int],
    rounds: int,
    seconds: float,
    connections: int,
) -> dict[str, Any]:
    """``pids``: the upstream's, nginx's and Sandbar's processes."""
    for side in SIDES:  # warm up: pools, caches
        wrk(urls[side], headers[side], 1, connections)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for r in range(rounds):
        for side in abba(SIDES, r):
            with CpuMeter(pids) as cpu:
                run = wrk(urls[side], headers[side], seconds, connections)
            n = run["requests"]
            run["cpu_us_per_request"] = {
                "upstream": cpu.procs["direct"] / n * 1e6,
                "proxy": cpu.procs[side] / n * 1e6 if side != "direct" else 0.0,
                "wrk": cpu.client / n * 1e6,
            }
            run["proxy_cores"] = cpu.procs[side] / cpu.wall if side != "direct" else 0.0
            run["others_cores"] = cpu.others_cores
            runs[side].append(run)
            say(
                f"  round {r + 1}/{rounds} -c{connections} {side:8} {run['rps']:>9,.0f} req/s"
                f"  p50 {run['p50_ms']:.2f} ms  p99 {run['p99_ms']:.2f} ms"
                + (
                    f"  proxy {run['cpu_us_per_request']['proxy']:.0f} us CPU/req"
                    f" ({run['proxy_cores']:.2f} cores)"
                    if side != "direct"
                    else ""
                )
                + f"  others {cpu.others_cores:.2f} cores"
                + (f"  (non-2xx: {run['non_2xx']})" if run["non_2xx"] else "")
                + (f"  (socket errors: {run['socket_errors']})" if run["socket_errors"] else "")
            )
    out: dict[str, Any] = {"connections": connections, "rounds": rounds, "seconds": seconds}
    for side in SIDES:
        out[side] = {
            k: statistics.median(run[k] for run in runs[side]) for k in ("rps", "p50_ms", "p99_ms")
        }
        out[side]["non_2xx"] = sum(run["non_2xx"] for run in runs[side])
        out[side]["socket_errors"] = [run["socket_errors"] for run in runs[side]]
        out[side]["runs"] = runs[side]
    for side in ("nginx", "sandbar"):
        out[side]["cpu_us_per_request"] = statistics.median(
            run["cpu_us_per_request"]["proxy"] for run in runs[side]
        )
        out[side]["cores"] = statistics.median(run["proxy_cores"] for run in runs[side])
    out["others_cores"] = statistics.median(run["others_cores"] for s in SIDES for run in runs[s])

    # CPU per request: what each proxy would do with a core of its own, less exposed to
    # what else the machine runs than the rates are.
    def figures(side: str, key: str) -> list[float]:
        return [run[key] for run in runs[side]]

    def proxy_cpu(side: str) -> list[float]:
        return [run["cpu_us_per_request"]["proxy"] for run in runs[side]]

    out["cpu_per_request_sandbar_vs_nginx"] = pair_ratio(proxy_cpu("sandbar"), proxy_cpu("nginx"))
    for side in ("nginx", "sandbar"):
        for q in ("p50", "p99"):
            out[side][f"added_{q}_ms"] = pair_difference(
                figures(side, f"{q}_ms"), figures("direct", f"{q}_ms")
            )
        out[side]["rps_vs_direct"] = pair_ratio(figures(side, "rps"), figures("direct", "rps"))
    out["rps_sandbar_vs_nginx"] = pair_ratio(figures("sandbar", "rps"), figures("nginx", "rps"))
    return out


# (2) 100 MiB downloads: curl.


def curl(url: str, headers: dict[str, str]) -> float:
    """MiB/s of one download."""
    args = [CURL, "-s", "-o", "/dev/null", "-w", "%{speed_download} %{http_code} %{size_download}"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    speed, code, size = out.split()
    if code != "200" or int(float(size)) != BIG_MIB * MIB:
        raise RuntimeError(f"download from {url} answered {code} with {size} bytes")
    return float(speed) / MIB


def downloads(
    urls: dict[str, str], headers: dict[str, dict[str, str]], pids: dict[str, int], rounds: int
) -> dict[str, Any]:
    pid = pids["sandbar"]
    curl(urls["direct"], headers["direct"])  # the file in the page cache
    rss_before = status_field(pid, "VmRSS")
    hwm_before = status_field(pid, "VmHWM")
    resettable = reset_peak(pid)
    speeds: dict[str, list[float]] = {side: [] for side in SIDES}
    cpu_per_gib: dict[str, list[float]] = {side: [] for side in ("nginx", "sandbar")}
    sampled_peak = rss_before
    for r in range(rounds):
        for side in abba(SIDES, r):
            with RssSampler(pid) as sampler, CpuMeter(pids) as cpu:
                speeds[side].append(curl(urls[side], headers[side]))
            if side == "sandbar":
                sampled_peak = max(sampled_peak, sampler.peak)
            line = f"  round {r + 1}/{rounds} {side:8} {speeds[side][-1]:>7,.0f} MiB/s"
            if side != "direct":
                cpu_per_gib[side].append(cpu.procs[side] * 1024 / BIG_MIB)
                line += f"  proxy {cpu_per_gib[side][-1]:.2f} CPU s/GiB"
            say(line + f"  others {cpu.others_cores:.2f} cores")
    hwm_during = status_field(pid, "VmHWM")
    rss_after = status_field(pid, "VmRSS")
    peak = max(sampled_peak, hwm_during) if resettable else sampled_peak
    out: dict[str, Any] = {"rounds": rounds, "size_mib": BIG_MIB}
    for side in SIDES:
        out[f"{side}_mib_per_s"] = statistics.median(speeds[side])
        out[f"{side}_runs"] = speeds[side]
    out["sandbar_vs_nginx"] = pair_ratio(speeds["sandbar"], speeds["nginx"])
    for side, values in cpu_per_gib.items():
        out[f"{side}_cpu_s_per_gib"] = statistics.median(values)
    out["sandbar_vs_direct"] = pair_ratio(speeds["sandbar"], speeds["direct"])
    out["nginx_vs_direct"] = pair_ratio(speeds["nginx"], speeds["direct"])
    out["sandbar_memory"] = {
        "rss_before_mib": rss_before,
        "peak_rss_before_mib": hwm_before,  # VmHWM since start (the wrk runs included)
        "peak_rss_during_mib": peak,  # VmHWM reset before the downloads, and VmRSS samples
        "sampled_peak_rss_during_mib": sampled_peak,
        "rss_after_mib": rss_after,
        "growth_mib": peak - rss_before,
        "vmhwm_reset": resettable,
    }
    return out


# (3) SSE: the gated TestAgent.


def sse_latencies(
    agent: TestAgent, port: int, headers: dict[str, str], events: int, rng: random.Random
) -> list[float]:
    """Seconds from releasing each event (but the first) to its arrival at the client."""
    agent.sse_release = threading.Semaphore(0)
    agent.sse_gated = True
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = [f"GET /sse?n={events + 1} HTTP/1.1"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    head += ["Accept: text/event-stream", "", ""]
    buf = bytearray()
    samples = []
    try:
        sock.sendall("\r\n".join(head).encode())

        def wait_for(marker: bytes, start: int) -> int:
            while True:
                at = buf.find(marker, start)
                if at >= 0:
                    return at + len(marker)
                data = sock.recv(65536)
                if not data:
                    raise RuntimeError(f"the SSE stream ended before {marker!r}:\n{bytes(buf)!r}")
                buf.extend(data)

        seen = wait_for(b"data: event 0\n\n", 0)
        if not buf.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"the SSE stream did not start: {bytes(buf[:300])!r}")
        for i in range(1, events + 1):
            time.sleep(rng.uniform(0.002, 0.006))  # an idle pipe between events
            marker = b"data: event %d\n\n" % i
            t = time.perf_counter()
            agent.sse_release.release()
            seen = wait_for(marker, seen)
            samples.append(time.perf_counter() - t)
    finally:
        sock.close()
        agent.sse_gated = False
    return samples


def sse(
    agent: TestAgent, agent_port: int, sandbar_port: int, headers: dict[str, str], events: int
) -> dict[str, Any]:
    rng = random.Random(1)
    direct_headers = {"Host": f"127.0.0.1:{agent_port}"}
    sse_latencies(agent, agent_port, direct_headers, 20, rng)  # warm up
    sse_latencies(agent, sandbar_port, headers, 20, rng)
    got: dict[str, list[float]] = {"direct": [], "sandbar": []}
    chunk = max(10, events // 4)
    for r in range(4):  # alternate in quarters: ABBA
        order = ("direct", "sandbar") if r in (0, 3) else ("sandbar", "direct")
        for side in order:
            port, hs = (agent_port, direct_headers) if side == "direct" else (sandbar_port, headers)
            got[side] += sse_latencies(agent, port, hs, chunk, rng)
    ms = 1000.0
    out: dict[str, Any] = {"events_per_side": len(got["direct"])}
    for side, samples in got.items():
        out[side] = {
            "p50_ms": pct(samples, 50) * ms,
            "p99_ms": pct(samples, 99) * ms,
            "max_ms": max(samples) * ms,
        }
    out["added_p50_ms"] = out["sandbar"]["p50_ms"] - out["direct"]["p50_ms"]
    out["added_p99_ms"] = out["sandbar"]["p99_ms"] - out["direct"]["p99_ms"]
    return out


# The run.


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two short rounds (a smoke run)")
    parser.add_argument(
        "--rounds", type=int, help="rounds of each measure, made even (ABBA; default 4)"
    )
    parser.add_argument("--seconds", type=float, help="seconds of each wrk run (default 10)")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="S",
        help="first wait up to S seconds for other processes to leave the cores idle",
    )
    args = parser.parse_args()
    rounds = even_rounds(args.rounds or (2 if args.quick else 4))
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    events = 100 if args.quick else 400
    for tool in (NGINX, WRK, CURL):
        if not Path(tool).exists():
            raise SystemExit(f"{tool} is not installed")

    load_before = wait_quiet(args.wait_quiet) if args.wait_quiet else machine_load()
    say(f"machine load before the run: {load_before:.2f} cores of {os.cpu_count()}")
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="sandbar-bench-proxy-"))
    folder.chmod(0o755)
    www = bench_files(folder)
    up_port, px_port = free_port(), free_port()
    agent = TestAgent()
    try:
        with (
            postgres_server() as (server_url, where),
            fresh_database(server_url) as url,
            nginx(folder / "upstream", UPSTREAM.format(port=up_port, www=www), up_port) as up,
            nginx(
                folder / "reverse", REVERSE.format(port=px_port, upstream=up_port), px_port
            ) as px,
            serving(agent) as agent_port,
        ):
            log = folder / "server.log"
            with sandbar_serving(url, folder, log) as (server, sandbar):
                side = SandbarSide(server, sandbar)
                files = side.route(f"127.0.0.1:{up_port}")
                agent_route = side.route(f"127.0.0.1:{agent_port}")
                urls = {
                    "direct": f"http://127.0.0.1:{up_port}",
                    "nginx": f"http://127.0.0.1:{px_port}",
                    "sandbar": f"http://127.0.0.1:{server.port}",
                }
                headers: dict[str, dict[str, str]] = {"direct": {}, "nginx": {}, "sandbar": files}
                for s in SIDES:
                    check_proxied(f"{urls[s]}/small.txt", headers[s], SMALL, log)
                check_proxied(f"{urls['sandbar']}/hello", agent_route, b"ok", log)
                small_urls = {s: f"{u}/small.txt" for s, u in urls.items()}
                pids = {"direct": up.pid, "nginx": px.pid, "sandbar": side.pid}
                say(f"small answers, -c32, {rounds} x {seconds:g} s per side ...")
                loaded = small_answers(small_urls, headers, pids, rounds, seconds, 32)
                half = max(1, round(seconds / 2))  # wrk takes whole seconds
                say(f"small answers, -c1, {rounds} x {half} s per side ...")
                single = small_answers(small_urls, headers, pids, rounds, half, 1)
                say(f"{BIG_MIB} MiB downloads, {rounds} per side ...")
                big = downloads({s: f"{u}/big.bin" for s, u in urls.items()}, headers, pids, rounds)
                say(f"SSE, {events} events per side ...")
                events_ = sse(agent, agent_port, server.port, agent_route, events)
            tracebacks = log.read_text(errors="replace").count("Traceback")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    elapsed = time.perf_counter() - started
    return report(args, where, elapsed, load_before, loaded, single, big, events_, tracebacks)


def report(
    args: argparse.Namespace,
    where: str,
    elapsed: float,
    load_before: float,
    loaded: dict[str, Any],
    single: dict[str, Any],
    big: dict[str, Any],
    sse_: dict[str, Any],
    tracebacks: int,
) -> int:
    def rate(x: float) -> str:
        return f"{x:,.0f}/s"

    def ms(x: float) -> str:
        return f"{x:.2f} ms"

    def added(x: float) -> str:
        return f"{x:+.2f} ms"

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT MET"

    mem = big["sandbar_memory"]
    rows: list[tuple[str, ...]] = []
    for label, w in (("-c32", loaded), ("-c1", single)):
        d, n, s = w["direct"], w["nginx"], w["sandbar"]
        rps_ok = w["rps_sandbar_vs_nginx"] >= TARGETS["rps_vs_nginx"]
        p99_ok = s["added_p99_ms"] < TARGETS["added_p99_ms"]
        rows.append(
            (
                f"100 B file, wrk {label}: req/s",
                rate(d["rps"]),
                rate(n["rps"]),
                rate(s["rps"]),
                f"{w['rps_sandbar_vs_nginx']:.2f}x nginx",
                f">= 0.5x nginx: {verdict(rps_ok)}" if label == "-c32" else "",
            )
        )
        for q in ("p50", "p99"):
            rows.append(
                (
                    f"100 B file, wrk {label}: {q}",
                    ms(d[f"{q}_ms"]),
                    ms(n[f"{q}_ms"]),
                    ms(s[f"{q}_ms"]),
                    f"{added(s[f'added_{q}_ms'])} (nginx {added(n[f'added_{q}_ms'])})",
                    f"added p99 < 5 ms: {verdict(p99_ok)}" if q == "p99" else "",
                )
            )
        rows.append(
            (
                f"100 B file, wrk {label}: proxy CPU/request",
                "",
                f"{n['cpu_us_per_request']:.0f} us",
                f"{s['cpu_us_per_request']:.0f} us",
                f"{w['cpu_per_request_sandbar_vs_nginx']:.2f}x nginx",
                "",
            )
        )
    rows += [
        (
            f"{BIG_MIB} MiB download (curl)",
            f"{big['direct_mib_per_s']:,.0f} MiB/s",
            f"{big['nginx_mib_per_s']:,.0f} MiB/s",
            f"{big['sandbar_mib_per_s']:,.0f} MiB/s",
            f"{big['sandbar_vs_nginx']:.2f}x nginx",
            f">= 0.7x nginx: {verdict(big['sandbar_vs_nginx'] >= TARGETS['download_vs_nginx'])}",
        ),
        (
            f"{BIG_MIB} MiB download: proxy CPU per GiB",
            "",
            f"{big['nginx_cpu_s_per_gib']:.2f} s",
            f"{big['sandbar_cpu_s_per_gib']:.2f} s",
            f"{big['sandbar_cpu_s_per_gib'] / big['nginx_cpu_s_per_gib']:.2f}x nginx",
            "",
        ),
        (
            "Sandbar RSS: before downloads / peak during",
            "",
            "",
            f"{mem['rss_before_mib']:.0f} / {mem['peak_rss_during_mib']:.0f} MiB",
            f"{mem['growth_mib']:+.1f} MiB",
            f"< {TARGETS['download_growth_mib']:g} MiB:"
            f" {verdict(mem['growth_mib'] < TARGETS['download_growth_mib'])}",
        ),
        (
            "SSE event, release to client: p50",
            ms(sse_["direct"]["p50_ms"]),
            "",
            ms(sse_["sandbar"]["p50_ms"]),
            added(sse_["added_p50_ms"]),
            f"added < 2 ms: {verdict(sse_['added_p50_ms'] < TARGETS['sse_added_ms'])}",
        ),
        (
            "SSE event, release to client: p99",
            ms(sse_["direct"]["p99_ms"]),
            "",
            ms(sse_["sandbar"]["p99_ms"]),
            added(sse_["added_p99_ms"]),
            f"added < 2 ms: {verdict(sse_['added_p99_ms'] < TARGETS['sse_added_ms'])}",
        ),
    ]
    table(
        ["MEASURE", "DIRECT", "NGINX PROXY", "SANDBAR PROXY", "SANDBAR ADDED/RATIO", "TARGET"], rows
    )
    print(
        f"\nwrk -t1: median of {loaded['rounds']} rounds ({loaded['seconds']:g} s at -c32,"
        f" {single['seconds']:g} s at -c1), sides in ABBA order; ratios and added = medians"
        f" over pairs of rounds of the pair's means. At -c32 the proxies used"
        f" {loaded['nginx']['cores']:.2f} (nginx) and {loaded['sandbar']['cores']:.2f} (Sandbar)"
        f" cores, while processes outside this benchmark used"
        f" {loaded['others_cores']:.2f} of the {os.cpu_count()} (before the run:"
        f" {load_before:.2f})."
        f" nginx proxy vs direct:"
        f" {loaded['nginx']['rps_vs_direct']:.2f}x req/s.\n"
        f"downloads: median of {big['rounds']}; nginx {big['nginx_vs_direct']:.2f}x direct,"
        f" Sandbar {big['sandbar_vs_direct']:.2f}x direct. Sandbar RSS after:"
        f" {mem['rss_after_mib']:.0f} MiB (peak since start before the downloads:"
        f" {mem['peak_rss_before_mib']:.0f} MiB).\n"
        f"SSE: {sse_['events_per_side']} events per side, in ABBA quarters.\n"
        f"PostgreSQL: {where}. Tracebacks in Sandbar's log: {tracebacks}."
        f" Whole run: {elapsed:.0f} s."
    )
    results = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "postgres": where,
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "machine_load_before_cores": load_before,
        "quick": args.quick,
        "seconds": elapsed,
        "targets": TARGETS,
        "small_c32": loaded,
        "small_c1": single,
        "download": big,
        "sse": sse_,
        "sandbar_log_tracebacks": tracebacks,
    }
    write_results("proxy", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

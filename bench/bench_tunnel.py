"""Sandbar's agent tunnel beside OpenSSH's reverse tunnel (`ssh -R`), measured in one run.

One upstream, nginx serving static files, reached five ways:
  direct   the upstream itself
  ssh -N   through `ssh -N -R` on loopback: a private sshd (its own host key, a key made
           for the run, chacha20-poly1305) and `ssh -N -R` dialling it. With no terminal
           neither end turns Nagle's algorithm off, so small answers stall some 40 ms on
           delayed ACKs now and then
  ssh -tt  the same with a terminal, `ssh -tt -R ... sleep N` (another sshd of its own):
           what a person typing `ssh -R` gets; both ends set TCP_NODELAY
           At each load the faster of the two (by median) is the baseline, "ssh": OpenSSH
           at its best; both are reported
  tunnel   through Sandbar: its subdomain proxy (Host oc-{id}, an access token as
           Authorization: Bearer), then a local sandbox's tunnel (HTTP/2 in a WebSocket)
           to a real `sandbar agent connect` process, which dials the upstream
  proxy    Sandbar's proxy straight to the upstream (a sandbox routed there, no tunnel):
           the proxy's own cost, so that what the tunnel adds shows

  small answers  wrk -t1 -c32 --latency on a 100-byte file: req/s, p50/p99; the same at
                 one connection (-c1), where latency is not queueing; CPU per request of
                 each relay (sshd and ssh; Sandbar and the agent), less exposed to a busy
                 machine than the rates
  download       100 MiB with curl, MiB/s, and CPU per GiB; Sandbar's and the agent's RSS
                 before the downloads and at their peak during them
  slow readers   clients downloading a large file through the tunnel, each reading 64 KiB
                 every 50 ms: VmRSS of Sandbar and of the agent sampled throughout (it must
                 stay flat: the stream windows, not the processes, absorb the difference),
                 and meanwhile a small request through the same tunnel now and then (a
                 stalled stream must not hold back the others)
  parallel       32 downloads at once (20 MiB each) through each `ssh -R` and through a
                 tunnel: MiB/s in all, and whether each arrives whole
  stalled        downloads at once through a tunnel, reading nothing: enough to fill the
                 tunnel's connection window (CONNECTION_WINDOW / WINDOW + 1 of them), or as
                 many as a tunnel admits (MAX_STREAMS, less room for the probes) when that
                 is fewer, the figures read from interfaces/tunnel/link.py; then small
                 requests through the same tunnel (docs/tunnel.md: a slow reader "holds back
                 only that stream"), 3 s after the downloads began (the windows filling)
                 and once the relays are still (the windows full), and what each stalled
                 stream costs Sandbar and the agent in RSS
  cancelled      stalled downloads, 4 at a time, closed by their clients once the windows
                 are full, 48 in all, with small requests through the same tunnel after
                 each batch: does the tunnel still answer?
  SSE            tests/upstream.py's TestAgent, gated: the time from letting the agent send
                 an event to the event reaching the client, directly, through `ssh -R`, and
                 through the tunnel

Within a round the sides run one after the other, in ABBA order (forward, then backward in
the next round; bench_proxy.abba); each figure is the median over rounds, each ratio the
median over pairs of rounds of the pair's means. The
machine is small and shared (2 cores carry wrk, the upstream and both ends of each
tunnel): read ratios, not absolute numbers. The cores that processes outside the
benchmark kept busy are reported beside each figure; --wait-quiet S first waits for a quiet
machine. Never asserts a timing.

Uses a fresh database on SANDBAR_BENCH_DATABASE_URL (default
postgresql://postgres@127.0.0.1:5432/postgres), dropped at the end. Needs wrk, curl, nginx
and OpenSSH (client and server: apt-get install openssh-client openssh-server). Every
process it starts is stopped at the end, on error too. Prints a table and writes
bench/results/tunnel.json.
Usage: .venv/bin/python bench/bench_tunnel.py [--quick] [--rounds N] [--seconds S]
       [--slow-readers N] [--wait-quiet S]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_core import fresh_database, pct, postgres_server, write_results  # noqa: E402
from bench.bench_proxy import (  # noqa: E402
    BIG_MIB,
    CURL,
    MIB,
    SMALL,
    UPSTREAM,
    WRK,
    CpuMeter,
    RssSampler,
    SandbarSide,
    bench_files,
    check_proxied,
    cpu_seconds,
    curl,
    machine_load,
    reset_peak,
    sandbar_serving,
    say,
    sse_latencies,
    status_field,
    wait_quiet,
    wrk,
)
from bench.rounds import abba, even_rounds, pair_difference, pair_ratio  # noqa: E402
from interfaces.cli.output import table  # noqa: E402
from interfaces.tunnel.link import CONNECTION_WINDOW, MAX_STREAMS, WINDOW  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.nginx_server import NGINX, nginx, port_answers  # noqa: E402
from tests.upstream import TestAgent, serving  # noqa: E402

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH = shutil.which("ssh") or "/usr/bin/ssh"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
CIPHER = "chacha20-poly1305@openssh.com"  # OpenSSH's default (docs/benchmarks.md)
SSH_SIDES = ("ssh_n", "ssh_tt")  # `ssh -N -R`, `ssh -tt -R ... sleep`
SIDES = ("direct", *SSH_SIDES, "tunnel", "proxy")
SSE_SIDES = ("direct", *SSH_SIDES, "tunnel")
LABELS = {"ssh_n": "ssh -N -R", "ssh_tt": "ssh -tt -R"}
SLOW_READ = 64 * 1024  # bytes a slow reader takes ...
SLOW_EVERY = 0.05  # ... every this many seconds
SLOW_SETTLE = 3.0  # seconds for the windows and buffers to fill before memory counts
STALLED_PROBES = 4  # (one at a time: one stream besides the stalled ones)
STREAMS_SPARE = 4  # streams a tunnel admits left free beside the stalled ones
# Stalled downloads at once: enough to fill the connection window were every stream's
# window full, unless a tunnel admits fewer streams; then as many as it admits.
STALLED = min(CONNECTION_WINDOW // WINDOW + 1, MAX_STREAMS - STREAMS_SPARE)
STALLED_FILL_LIMIT = 60.0  # seconds the stalled streams' windows are given to fill
FILLED_CORES = 0.05  # the relays' CPU below this, ...
FILLED_STILL = 2.0  # ... and their RSS steady, for this many seconds: the windows are full
PROBE_TIMEOUT = 3.0  # seconds a small request is given beside stalled streams
CANCEL_BATCH = 4  # stalled downloads opened, then cancelled, at a time
CANCEL_HOLD = 2.0  # seconds each batch stays open (the windows fill)
CANCEL_BATCHES = 12
PARALLEL = 32  # downloads at once ...
PARALLEL_MIB = 20  # ... of this much each (a Range of the 100 MiB file)
TARGETS = {  # "ssh": the faster of ssh -N and ssh -tt at that load
    "rps_vs_ssh": 1.0,  # at least, wrk -c32 and -c1
    "p99_ms": 10.0,  # under, wrk -c32 through the tunnel
    "p99_vs_ssh": 1.0,  # at most, wrk -c32 and -c1 (issue 23: "p99 no worse")
    "cpu_per_request_vs_ssh": 1.2,  # at most, the relays' CPU per request, -c32 and -c1
    "download_vs_ssh": 1.0,  # at least
    "sse_added_ms": 5.0,  # under: p99 through the tunnel less p99 direct
    "slow_reader_trend_mib": 2.0,  # under: each process's RSS trend while readers stall
}


# The processes: OpenSSH's reverse tunnel, Sandbar's agent.


SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding remote
GatewayPorts no
UseDNS no
PrintMotd no
LogLevel ERROR
"""


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, as /proc shows them now."""
    out = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        for child in children.read_text().split():
            out += process_tree(int(child))
    return out


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it lingers; also ends the descendants it leaves behind."""
    tree = process_tree(proc.pid) if proc.poll() is None else []
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in tree[1:]:  # (e.g. sshd's per-connection process)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextmanager
def ssh_reverse(folder: Path, forwards: dict[int, int], terminal: bool) -> Iterator[dict[str, int]]:
    """A private sshd on a free loopback port, and ``ssh -R`` dialling it with each
    ``listen port: upstream port`` of ``forwards``: ``ssh -N`` (no terminal, no command),
    or with ``terminal`` ``ssh -tt ... sleep`` (a terminal: sshd and ssh then set
    TCP_NODELAY, as for anyone who types ``ssh -R host``). Yields the two processes' pids."""
    folder.mkdir(parents=True)
    for name in ("host_key", "id"):
        subprocess.run(
            [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True
        )
    (folder / "authorized_keys").write_text((folder / "id.pub").read_text())
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(SSHD_CONFIG.format(port=port, dir=folder))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder
    log = folder / "sshd.log"
    sshd = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=log.open("wb")
    )
    ssh: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 10
        while not port_answers(port):
            if sshd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
        args = [SSH, "-F", "/dev/null", "-tt" if terminal else "-N"]
        args += ["-i", str(folder / "id"), "-p", str(port)]
        args += ["-c", CIPHER, "-o", "Compression=no", "-o", "BatchMode=yes"]
        args += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        args += ["-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR"]
        for listen, upstream in forwards.items():
            args += ["-R", f"{listen}:127.0.0.1:{upstream}"]
        ssh_log = folder / "ssh.log"
        command = ["sleep", "86400"] if terminal else []
        ssh = subprocess.Popen(
            [*args, "root@127.0.0.1", *command],
            # (a terminal's input kept open: its end would end the session)
            stdin=subprocess.PIPE if terminal else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=ssh_log.open("wb"),
        )
        deadline = time.monotonic() + 15
        while not all(port_answers(p) for p in forwards):
            if ssh.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"ssh -R did not come up:\n{ssh_log.read_text(errors='replace')}"
                    f"\n{log.read_text(errors='replace')}"
                )
            time.sleep(0.05)
        yield {"sshd": sshd.pid, "ssh": ssh.pid}
    finally:
        if ssh is not None:
            stop_process(ssh)
            if ssh.stdin is not None:
                ssh.stdin.close()
        stop_process(sshd)


class Agent:
    """A local sandbox registered with ``sandbar agent register``, and ``sandbar agent
    connect`` keeping its tunnel up, as a member runs them."""

    def __init__(self, side: SandbarSide, config: Path, name: str, target_port: int) -> None:
        self.side = side
        self.config = config
        self.env = {**os.environ, "SANDBAR_AGENT_CONFIG": str(config)}
        r = side.user.client.post(f"/api/workspaces/{side.workspace}/agent-code")
        assert r.status_code == 201, r.text
        before = set(json.loads(config.read_text())) if config.exists() else set()
        done = subprocess.run(
            [
                *(sys.executable, "-m", "interfaces.cli.main", "agent", "register"),
                *("--server", side.server.url, "--code", r.json()["code"], "--name", name),
                *("--target", f"http://127.0.0.1:{target_port}"),
            ],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"sandbar agent register failed:\n{done.stdout}{done.stderr}")
        (self.id,) = set(json.loads(config.read_text())) - before
        self.log = config.with_name(f"agent-{name}.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def connect(self) -> Agent:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "interfaces.cli.main", "agent", "connect", self.id],
            env=self.env,
            cwd=ROOT,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        return self.wait_running()

    def wait_running(self) -> Agent:
        """Until Sandbar says the sandbox is running (its agent connected)."""
        assert self.proc is not None
        client = self.side.user.client
        deadline = time.monotonic() + 30
        while (status := client.get(f"/api/sandboxes/{self.id}").json()["status"]) != "running":
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the agent did not connect ({status}):\n{self.log.read_text()[-3000:]}"
                )
            time.sleep(0.05)
        return self

    def headers(self) -> dict[str, str]:
        """What reaches this sandbox through Sandbar's proxy."""
        r = self.side.user.client.post(f"/api/sandboxes/{self.id}/access-tokens")
        assert r.status_code in (200, 201), r.text
        return {
            "Host": f"oc-{self.id}.localhost:{self.side.server.port}",
            "Authorization": f"Bearer {r.json()['token']}",
        }

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=20)


# (1) Small answers: wrk.

# The processes whose CPU each side spends (the upstream's is counted apart).
RELAYS = {
    "direct": (),
    "ssh_n": ("sshd_n", "ssh_n_client"),
    "ssh_tt": ("sshd_tt", "ssh_tt_client"),
    "tunnel": ("server", "agent"),
    "proxy": ("server",),
}


def best_ssh(figures: dict[str, float]) -> str:
    """The faster of ``ssh -N`` and ``ssh -tt`` by ``figures`` (side: a rate)."""
    return max(SSH_SIDES, key=lambda side: figures[side])


def small_answers(
    urls: dict[str, str],
    headers: dict[str, dict[str, str]],
    pids: dict[str, int],
    rounds: int,
    seconds: float,
    connections: int,
) -> dict[str, Any]:
    """``pids``: upstream, each ssh side's sshd and client, server, agent."""
    for side in SIDES:  # warm up: pools, caches, idle streams
        wrk(urls[side], headers[side], 1, connections)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for r in range(rounds):
        for side in abba(SIDES, r):
            with CpuMeter(pids) as cpu:
                run = wrk(urls[side], headers[side], seconds, connections)
            n = run["requests"]
            relay = sum(cpu.procs[p] for p in RELAYS[side])
            run["relay_cpu_us_per_request"] = relay / n * 1e6
            run["relay_cpu_by_process_us"] = {p: cpu.procs[p] / n * 1e6 for p in RELAYS[side]}
            run["upstream_cpu_us_per_request"] = cpu.procs["upstream"] / n * 1e6
            run["wrk_cpu_us_per_request"] = cpu.client / n * 1e6
            run["relay_cores"] = relay / cpu.wall
            run["others_cores"] = cpu.others_cores
            runs[side].append(run)
            say(
                f"  round {r + 1}/{rounds} -c{connections} {side:7} {run['rps']:>9,.0f} req/s"
                f"  p50 {run['p50_ms']:.2f} ms  p99 {run['p99_ms']:.2f} ms"
                + (
                    f"  relay {run['relay_cpu_us_per_request']:.0f} us CPU/req"
                    f" ({run['relay_cores']:.2f} cores)"
                    if RELAYS[side]
                    else ""
                )
                + f"  others {cpu.others_cores:.2f} cores"
                + (f"  (non-2xx: {run['non_2xx']})" if run["non_2xx"] else "")
                + (f"  (socket errors: {run['socket_errors']})" if run["socket_errors"] else "")
            )
    out: dict[str, Any] = {"connections": connections, "rounds": rounds, "seconds": seconds}
    for side in SIDES:
        keys = ("rps", "p50_ms", "p99_ms", "relay_cpu_us_per_request", "relay_cores")
        out[side] = {k: statistics.median(run[k] for run in runs[side]) for k in keys}
        out[side]["non_2xx"] = sum(run["non_2xx"] for run in runs[side])
        out[side]["socket_errors"] = [run["socket_errors"] for run in runs[side]]
        out[side]["runs"] = runs[side]
    out["others_cores"] = statistics.median(run["others_cores"] for s in SIDES for run in runs[s])

    def figures(side: str, key: str) -> list[float]:
        return [run[key] for run in runs[side]]

    # The baseline: OpenSSH at its best at this load, the faster of -N and -tt.
    ssh = out["ssh_best"] = best_ssh({side: out[side]["rps"] for side in SSH_SIDES})
    for side in ("tunnel", "proxy", "direct"):
        out[f"rps_{side}_vs_ssh"] = pair_ratio(figures(side, "rps"), figures(ssh, "rps"))
    for side in (*SSH_SIDES, "tunnel", "proxy"):
        out[side]["rps_vs_direct"] = pair_ratio(figures(side, "rps"), figures("direct", "rps"))
    cpu = "relay_cpu_us_per_request"
    out["cpu_per_request_tunnel_vs_ssh"] = pair_ratio(figures("tunnel", cpu), figures(ssh, cpu))
    for q in ("p50", "p99"):
        key = f"{q}_ms"
        out[f"{q}_tunnel_vs_ssh"] = pair_ratio(figures("tunnel", key), figures(ssh, key))
    # Against each of the two, whichever is the baseline.
    out["tunnel_vs_each_ssh"] = {
        side: {
            "rps": pair_ratio(figures("tunnel", "rps"), figures(side, "rps")),
            "p99": pair_ratio(figures("tunnel", "p99_ms"), figures(side, "p99_ms")),
            "cpu_per_request": pair_ratio(figures("tunnel", cpu), figures(side, cpu)),
        }
        for side in SSH_SIDES
    }
    # What the tunnel adds to the proxy: the agent's CPU, and the server's beyond the proxy's.
    out["tunnel_cpu_added_to_proxy_us"] = pair_difference(
        figures("tunnel", cpu), figures("proxy", cpu)
    )
    return out


# (2) 100 MiB downloads: curl.


def downloads(
    urls: dict[str, str], headers: dict[str, dict[str, str]], pids: dict[str, int], rounds: int
) -> dict[str, Any]:
    curl(urls["direct"], headers["direct"])  # the file in the page cache
    watched = ("server", "agent")
    before = {p: status_field(pids[p], "VmRSS") for p in watched}
    hwm_before = {p: status_field(pids[p], "VmHWM") for p in watched}
    resettable = all(reset_peak(pids[p]) for p in watched)
    speeds: dict[str, list[float]] = {side: [] for side in SIDES}
    cpu_per_gib: dict[str, list[float]] = {side: [] for side in SIDES if RELAYS[side]}
    by_process: dict[str, list[float]] = {p: [] for side in SIDES for p in RELAYS[side]}
    sampled = dict(before)
    for r in range(rounds):
        for side in abba(SIDES, r):
            with (
                RssSampler(pids["server"]) as server_rss,
                RssSampler(pids["agent"]) as agent_rss,
                CpuMeter(pids) as cpu,
            ):
                speeds[side].append(curl(urls[side], headers[side]))
            sampled["server"] = max(sampled["server"], server_rss.peak)
            sampled["agent"] = max(sampled["agent"], agent_rss.peak)
            line = f"  round {r + 1}/{rounds} {side:7} {speeds[side][-1]:>7,.0f} MiB/s"
            if RELAYS[side]:
                relay = sum(cpu.procs[p] for p in RELAYS[side])
                cpu_per_gib[side].append(relay * 1024 / BIG_MIB)
                if side != "proxy":  # (the server's share of the tunnel, not of the proxy)
                    for p in RELAYS[side]:
                        by_process[p].append(cpu.procs[p] * 1024 / BIG_MIB)
                line += f"  relay {cpu_per_gib[side][-1]:.2f} CPU s/GiB"
            say(line + f"  others {cpu.others_cores:.2f} cores")
    out: dict[str, Any] = {"rounds": rounds, "size_mib": BIG_MIB}
    for side in SIDES:
        out[f"{side}_mib_per_s"] = statistics.median(speeds[side])
        out[f"{side}_runs"] = speeds[side]
    ssh = out["ssh_best"] = best_ssh({side: out[f"{side}_mib_per_s"] for side in SSH_SIDES})
    for side in ("tunnel", "proxy", "direct"):
        out[f"{side}_vs_ssh"] = pair_ratio(speeds[side], speeds[ssh])
    out["tunnel_vs_each_ssh"] = {
        side: pair_ratio(speeds["tunnel"], speeds[side]) for side in SSH_SIDES
    }
    for side, values in cpu_per_gib.items():
        out[f"{side}_cpu_s_per_gib"] = statistics.median(values)
    out["ssh_cpu_s_per_gib"] = out[f"{ssh}_cpu_s_per_gib"]
    out["cpu_s_per_gib_by_process"] = {p: statistics.median(v) for p, v in by_process.items()}
    memory = {}
    for p in watched:
        hwm = status_field(pids[p], "VmHWM")
        peak = max(sampled[p], hwm) if resettable else sampled[p]
        memory[p] = {
            "rss_before_mib": before[p],
            "peak_rss_before_mib": hwm_before[p],  # VmHWM since start (the wrk runs included)
            "peak_rss_during_mib": peak,  # VmHWM reset before the downloads, and samples
            "rss_after_mib": status_field(pids[p], "VmRSS"),
            "growth_mib": peak - before[p],
        }
    out["memory"] = memory
    out["vmhwm_reset"] = resettable
    return out


# (3) Slow readers.


def slow_reader(
    port: int, headers: dict[str, str], stop: threading.Event, got: list[int], at: int
) -> None:
    """GET /big.bin, then take SLOW_READ bytes every SLOW_EVERY seconds until ``stop``."""
    sock = socket.socket()
    # A small receive buffer: the kernel does not soak up megabytes before the tunnel
    # feels the reader's pace (a browser's is larger; that only delays the same state).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 128 * 1024)
    sock.settimeout(30)
    try:
        sock.connect(("127.0.0.1", port))
        head = ["GET /big.bin HTTP/1.1", *(f"{n}: {v}" for n, v in headers.items()), "", ""]
        sock.sendall("\r\n".join(head).encode())
        while not stop.is_set():
            data = sock.recv(SLOW_READ)
            if not data:
                break
            got[at] += len(data)
            stop.wait(SLOW_EVERY)
    finally:
        sock.close()


def probe(port: int, headers: dict[str, str], timeout: float) -> float | None:
    """Seconds for one small request on a new connection (so a new stream in the tunnel,
    or an idle one); None when it fails or times out."""
    head = ["GET /small.txt HTTP/1.1", *(f"{n}: {v}" for n, v in headers.items())]
    request = "\r\n".join([*head, "Connection: close", "", ""]).encode()
    answer = bytearray()
    t = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(request)
            while data := sock.recv(65536):
                answer += data
    except OSError:
        return None
    elapsed = time.perf_counter() - t
    return elapsed if answer.startswith(b"HTTP/1.1 200") and answer.endswith(SMALL) else None


def slow_readers(
    port: int, headers: dict[str, str], pids: dict[str, int], readers: int, seconds: float
) -> dict[str, Any]:
    watched = ("server", "agent")
    before = [probe(port, headers, 10) for _ in range(10)]
    stop = threading.Event()
    got = [0] * readers
    threads = [
        threading.Thread(target=slow_reader, args=(port, headers, stop, got, i), daemon=True)
        for i in range(readers)
    ]
    idle = {p: status_field(pids[p], "VmRSS") for p in watched}
    samples: dict[str, list[tuple[float, float]]] = {p: [] for p in watched}
    probed: list[float | None] = []
    started = time.perf_counter()
    for t in threads:
        t.start()
    try:
        settled: dict[str, float] = {}
        reset = False
        next_probe = started + SLOW_SETTLE
        while (now := time.perf_counter()) - started < SLOW_SETTLE + seconds:
            for p in watched:
                samples[p].append((now - started, status_field(pids[p], "VmRSS")))
            if now - started >= SLOW_SETTLE and not settled:
                settled = {p: samples[p][-1][1] for p in watched}
                got_at_settle = sum(got)
                reset = all(reset_peak(pids[p]) for p in watched)
            if settled and now >= next_probe:
                probed.append(probe(port, headers, PROBE_TIMEOUT))
                next_probe = time.perf_counter() + 1.0
            time.sleep(0.1)
        read_while_measured = sum(got) - got_at_settle
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=35)
    memory = {}
    for p in watched:
        later = [rss for at, rss in samples[p] if at >= SLOW_SETTLE]
        third = max(1, len(later) // 3)
        peak = max(status_field(pids[p], "VmHWM") if reset else 0.0, *later)
        memory[p] = {
            "rss_idle_mib": idle[p],
            "rss_settled_mib": settled[p],
            "rss_end_mib": later[-1],
            "peak_rss_mib": peak,
            "peak_above_settled_mib": peak - settled[p],
            # The trend, less exposed to the allocator's ups and downs than the peak: the
            # median RSS of the last third of the period less that of the first third.
            "trend_mib": statistics.median(later[-third:]) - statistics.median(later[:third]),
            "samples": [(round(at, 2), round(rss, 2)) for at, rss in samples[p]],
        }
    ok = [x for x in probed if x is not None]
    answered = [x for x in before if x is not None]
    ms = 1000.0
    return {
        "readers": readers,
        "seconds": seconds,
        "settle_seconds": SLOW_SETTLE,
        "reader_pace_mib_per_s": SLOW_READ / SLOW_EVERY / MIB,
        "read_mib_per_s": read_while_measured / seconds / MIB,
        "read_mib_per_reader": [g / MIB for g in got],
        "memory": memory,
        "vmhwm_reset": reset,
        "probe_before_p50_ms": statistics.median(answered) * ms if answered else None,
        "probes": len(probed),
        "probes_failed": len(probed) - len(ok),
        "probe_p50_ms": statistics.median(ok) * ms if ok else None,
        "probe_max_ms": max(ok) * ms if ok else None,
    }


def ranged_download(url: str, headers: dict[str, str], out: list[Any], at: int) -> None:
    """The first PARALLEL_MIB of the big file at ``url``, read as fast as it comes:
    ``out[at]`` is True when it arrived whole."""
    host, _, port = url.split("://", 1)[1].partition(":")
    head = [
        "GET /big.bin HTTP/1.1",
        *(f"{n}: {v}" for n, v in {"Host": f"{host}:{port}", **headers}.items()),
        f"Range: bytes=0-{PARALLEL_MIB * MIB - 1}",
        "Connection: close",
        "",
        "",
    ]
    got = bytearray()
    try:
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            sock.sendall("\r\n".join(head).encode())
            while data := sock.recv(1 << 20):
                got += data
    except OSError:
        pass
    body = len(got) - got.find(b"\r\n\r\n") - 4
    out[at] = got.startswith(b"HTTP/1.1 206") and body == PARALLEL_MIB * MIB


def answers(port: int, headers: dict[str, str], timeout: float = 30) -> None:
    """Wait until a small request through ``port`` succeeds."""
    deadline = time.monotonic() + timeout
    while probe(port, headers, PROBE_TIMEOUT) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answers through port {port}")
        time.sleep(0.2)


def parallel_downloads(
    urls: dict[str, str], headers: dict[str, dict[str, str]], agent: Agent, rounds: int
) -> dict[str, Any]:
    """PARALLEL downloads at once through each ssh side and ``tunnel`` (the latter
    through ``agent``'s tunnel): MiB/s in all, and how many arrived whole."""
    sides = (*SSH_SIDES, "tunnel")
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for r in range(rounds):
        for side in abba(sides, r):
            if side == "tunnel":  # (again, should a round have broken the tunnel)
                agent.wait_running()
                answers(agent.side.server.port, headers[side])
            out: list[Any] = [None] * PARALLEL
            threads = [
                threading.Thread(target=ranged_download, args=(urls[side], headers[side], out, i))
                for i in range(PARALLEL)
            ]
            t = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - t
            whole = sum(1 for x in out if x is True)
            runs[side].append(
                {"seconds": elapsed, "whole": whole, "mib_per_s": whole * PARALLEL_MIB / elapsed}
            )
            say(
                f"  round {r + 1}/{rounds} {side:7} {runs[side][-1]['mib_per_s']:>7,.0f} MiB/s"
                f"  {whole} of {PARALLEL} whole"
            )
    out_: dict[str, Any] = {"downloads": PARALLEL, "mib_each": PARALLEL_MIB, "rounds": rounds}
    for side in sides:
        out_[side] = {
            "mib_per_s": statistics.median(x["mib_per_s"] for x in runs[side]),
            "cut": sum(PARALLEL - x["whole"] for x in runs[side]),
            "runs": runs[side],
        }
    ssh = out_["ssh_best"] = best_ssh({side: out_[side]["mib_per_s"] for side in SSH_SIDES})
    speeds = {side: [x["mib_per_s"] for x in runs[side]] for side in sides}
    out_["tunnel_vs_ssh"] = pair_ratio(speeds["tunnel"], speeds[ssh]) if all(speeds[ssh]) else None
    return out_


def stalled_download(port: int, headers: dict[str, str]) -> socket.socket:
    """A download through ``port`` whose client reads nothing (until it closes)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 128 * 1024)
    sock.connect(("127.0.0.1", port))
    head = ["GET /big.bin HTTP/1.1", *(f"{n}: {v}" for n, v in headers.items()), "", ""]
    sock.sendall("\r\n".join(head).encode())
    return sock


def probes(port: int, headers: dict[str, str], n: int) -> dict[str, Any]:
    got = [probe(port, headers, PROBE_TIMEOUT) for _ in range(n)]
    ok = [x for x in got if x is not None]
    return {
        "probes": n,
        "failed": n - len(ok),
        "p50_ms": statistics.median(ok) * 1000 if ok else None,
        "max_ms": max(ok) * 1000 if ok else None,
    }


def windows_filled(pids: dict[str, int]) -> bool:
    """Wait until the processes of ``pids`` are still (for FILLED_STILL seconds their CPU
    below FILLED_CORES and their RSS within 1 MiB: every stalled stream's window full,
    nothing left to relay), at most STALLED_FILL_LIMIT seconds; whether they were. (CPU
    alone misleads: the server's RSS was seen growing by 250 MiB over 10 s with the
    relays nearly idle.)"""
    deadline = time.monotonic() + STALLED_FILL_LIMIT
    step, still = 0.5, 0.0

    def sample() -> tuple[float, dict[str, float]]:
        cpu = sum(cpu_seconds(pid) for pid in pids.values())
        return cpu, {p: status_field(pid, "VmRSS") for p, pid in pids.items()}

    cpu, rss = sample()
    while time.monotonic() < deadline:
        time.sleep(step)
        cpu_now, rss_now = sample()
        quiet = cpu_now - cpu < FILLED_CORES * step
        steady = all(abs(rss_now[p] - rss[p]) < 1.0 for p in pids)
        still = still + step if quiet and steady else 0.0
        if still >= FILLED_STILL:
            return True
        cpu, rss = cpu_now, rss_now
    return False


def stalled_streams(
    port: int, headers: dict[str, str], pids: dict[str, int], streams: int
) -> dict[str, Any]:
    """On a tunnel of its own: ``streams`` downloads at once that read nothing (STALLED:
    enough to fill the tunnel's connection window at a stream window each, or as many as
    a tunnel admits), then small requests through the same tunnel: do they still pass?
    ``pids``: server, agent."""
    idle = {p: status_field(pid, "VmRSS") for p, pid in pids.items()}
    socks = []
    try:
        started = time.perf_counter()
        for _ in range(streams):
            socks.append(stalled_download(port, headers))
        time.sleep(SLOW_SETTLE)
        filling = probes(port, headers, STALLED_PROBES)  # (the windows may still fill)
        filled = windows_filled(pids)
        fill_s = time.perf_counter() - started
        held = {p: status_field(pid, "VmRSS") for p, pid in pids.items()}
        during = probes(port, headers, STALLED_PROBES)
    finally:
        for sock in socks:
            sock.close()
    return {
        "streams": streams,
        # Probes SLOW_SETTLE seconds after the downloads began, the windows maybe filling.
        "while_filling": filling,
        # Seconds until the relays were still (every window full), and whether they were
        # within STALLED_FILL_LIMIT; the probes below come after.
        "fill_seconds": fill_s,
        "filled": filled,
        "stream_window_mib": WINDOW / MIB,
        "connection_window_mib": CONNECTION_WINDOW / MIB,
        "max_streams": MAX_STREAMS,
        # Whether the stalled streams' windows add up to more than the connection's (if
        # not, no number of stalled streams a tunnel admits can fill it: MAX_STREAMS *
        # WINDOW is below CONNECTION_WINDOW, and the check shows the tunnel at its
        # fullest instead).
        "fills_connection_window": streams * WINDOW > CONNECTION_WINDOW,
        **during,
        "memory": {
            p: {
                "rss_idle_mib": idle[p],
                "rss_held_mib": held[p],
                "mib_per_stalled_stream": (held[p] - idle[p]) / streams,
            }
            for p in pids
        },
    }


def cancelled_streams(port: int, headers: dict[str, str], batches: int) -> dict[str, Any]:
    """On a tunnel of its own: a few stalled downloads at a time, each batch cancelled by
    its clients (closed) once the windows are full, then small requests through the same
    tunnel, now with no other stream open. How many cancelled downloads until the tunnel
    stops answering (None: it never did)?"""
    cancelled, after = 0, []
    for _ in range(batches):
        socks = [stalled_download(port, headers) for _ in range(CANCEL_BATCH)]
        time.sleep(CANCEL_HOLD)
        for sock in socks:
            sock.close()
        cancelled += len(socks)
        time.sleep(0.5)
        after.append({"cancelled": cancelled, **probes(port, headers, 2)})
        if after[-1]["failed"] == 2:
            time.sleep(2.0)  # not a moment's congestion: still nothing?
            after.append({"cancelled": cancelled, **probes(port, headers, 2)})
            if after[-1]["failed"] == 2:
                break
    dead = after[-1]["failed"] == after[-1]["probes"]
    return {
        "batch": CANCEL_BATCH,
        "hold_s": CANCEL_HOLD,
        "cancelled": cancelled,
        "dead_after_cancelled": cancelled if dead else None,
        "rounds": after,
    }


# (4) SSE: the gated TestAgent.


def sse(
    agent: TestAgent, ports: dict[str, int], headers: dict[str, dict[str, str]], events: int
) -> dict[str, Any]:
    rng = random.Random(1)
    for side in SSE_SIDES:  # warm up
        sse_latencies(agent, ports[side], headers[side], 20, rng)
    got: dict[str, list[float]] = {side: [] for side in SSE_SIDES}
    chunk = max(10, events // 8)
    for r in range(8):  # ABBA pairs: each side first and last
        for side in abba(SSE_SIDES, r):
            got[side] += sse_latencies(agent, ports[side], headers[side], chunk, rng)
    ms = 1000.0
    out: dict[str, Any] = {"events_per_side": len(got["direct"])}
    for side, samples in got.items():
        out[side] = {
            "p50_ms": pct(samples, 50) * ms,
            "p99_ms": pct(samples, 99) * ms,
            "max_ms": max(samples) * ms,
        }
    for side in (*SSH_SIDES, "tunnel"):
        for q in ("p50", "p99"):
            out[side][f"added_{q}_ms"] = out[side][f"{q}_ms"] - out["direct"][f"{q}_ms"]
    out["ssh_best"] = min(SSH_SIDES, key=lambda side: out[side]["p99_ms"])
    return out


# The run.


@dataclass
class Sides:
    """Everything running, and how each side reaches the upstream and the test agent."""

    urls: dict[str, str]  # side: base URL of the files
    headers: dict[str, dict[str, str]]  # side: headers that reach the files
    pids: dict[str, int]  # upstream, sshd_n, ssh_n_client, sshd_tt, ssh_tt_client, server,
    # agent (the files' agent)
    sse_ports: dict[str, int]  # SSE side: port of the test agent
    sse_headers: dict[str, dict[str, str]]
    test_agent: TestAgent
    server_port: int
    where: str  # PostgreSQL: "system" | "embedded"
    logs: list[Path]  # Sandbar's and the agents' (those started later too)
    new_agent: Callable[[str], Agent]  # another sandbox and agent for the files, connected


@contextmanager
def running(folder: Path) -> Iterator[Sides]:
    """The upstream, two sshd with an ``ssh -R`` each (-N, -tt), ``sandbar serve`` on a
    fresh database, and two agents (one for the files, one for the test agent), all
    stopped on the way out."""
    www = bench_files(folder)
    log = folder / "server.log"
    up_port = free_port()
    ssh_files = {side: free_port() for side in SSH_SIDES}
    ssh_sse = {side: free_port() for side in SSH_SIDES}
    test_agent = TestAgent()
    agents: list[Agent] = []
    with (
        postgres_server() as (server_url, where),
        fresh_database(server_url) as url,
        sandbar_serving(url, folder, log) as (server, sandbar),
        nginx(folder / "upstream", UPSTREAM.format(port=up_port, www=www), up_port) as up,
        serving(test_agent) as agent_port,
        ssh_reverse(
            folder / "ssh_n", {ssh_files["ssh_n"]: up_port, ssh_sse["ssh_n"]: agent_port}, False
        ) as ssh_n,
        ssh_reverse(
            folder / "ssh_tt", {ssh_files["ssh_tt"]: up_port, ssh_sse["ssh_tt"]: agent_port}, True
        ) as ssh_tt,
    ):
        try:
            side = SandbarSide(server, sandbar)
            config = folder / "agent" / "agents.json"
            files = Agent(side, config, "files", up_port)
            agents.append(files)
            files.connect()
            events_agent = Agent(side, config, "sse", agent_port)
            agents.append(events_agent)
            events_agent.connect()
            logs = [log, files.log, events_agent.log]

            def new_agent(name: str) -> Agent:
                agent = Agent(side, config, name, up_port)
                agents.append(agent)
                logs.append(agent.log)
                agent.connect()
                check_proxied(f"{server.url}/small.txt", agent.headers(), SMALL, log)
                return agent

            urls = {
                "direct": f"http://127.0.0.1:{up_port}",
                **{side: f"http://127.0.0.1:{ssh_files[side]}" for side in SSH_SIDES},
                "tunnel": f"http://127.0.0.1:{server.port}",
                "proxy": f"http://127.0.0.1:{server.port}",
            }
            headers: dict[str, dict[str, str]] = {
                "direct": {},
                **{side: {} for side in SSH_SIDES},
                "tunnel": files.headers(),
                "proxy": side.route(f"127.0.0.1:{up_port}"),
            }
            for s in SIDES:
                check_proxied(f"{urls[s]}/small.txt", headers[s], SMALL, log)
            sse_headers = {
                "direct": {"Host": f"127.0.0.1:{agent_port}"},
                **{side: {"Host": f"127.0.0.1:{ssh_sse[side]}"} for side in SSH_SIDES},
                "tunnel": events_agent.headers(),
            }
            check_proxied(f"{urls['tunnel']}/hello", sse_headers["tunnel"], b"ok", log)
            yield Sides(
                urls=urls,
                headers=headers,
                pids={
                    "upstream": up.pid,
                    "sshd_n": ssh_n["sshd"],
                    "ssh_n_client": ssh_n["ssh"],
                    "sshd_tt": ssh_tt["sshd"],
                    "ssh_tt_client": ssh_tt["ssh"],
                    "server": side.pid,
                    "agent": files.pid,
                },
                sse_ports={"direct": agent_port, **ssh_sse, "tunnel": server.port},
                sse_headers=sse_headers,
                test_agent=test_agent,
                server_port=server.port,
                where=where,
                logs=logs,
                new_agent=new_agent,
            )
        finally:
            for a in agents:
                a.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two short rounds (a smoke run)")
    parser.add_argument(
        "--rounds", type=int, help="rounds of each measure, made even (ABBA; default 4)"
    )
    parser.add_argument("--seconds", type=float, help="seconds of each wrk run (default 10)")
    parser.add_argument(
        "--slow-readers", type=int, default=4, metavar="N", help="slow readers at once"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="S",
        help="first wait up to S seconds for other processes to leave the cores idle",
    )
    args = parser.parse_args()
    # SIGTERM (timeout, kill) unwinds like an error: every process started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    rounds = even_rounds(args.rounds or (2 if args.quick else 4))
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    single_seconds = max(1, round(seconds / 2))  # (wrk takes whole seconds)
    slow_seconds = 8.0 if args.quick else 20.0
    events = 60 if args.quick else 300
    for tool in (NGINX, WRK, CURL, SSHD, SSH, SSH_KEYGEN):
        if not Path(tool).exists():
            raise SystemExit(
                f"{tool} is not installed (apt-get install openssh-server openssh-client)"
            )

    load_before = wait_quiet(args.wait_quiet) if args.wait_quiet else machine_load()
    loadavg_before = os.getloadavg()
    say(f"machine load before the run: {load_before:.2f} cores of {os.cpu_count()}")
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="sandbar-bench-tunnel-"))
    folder.chmod(0o755)
    try:
        with running(folder) as run:
            urls, headers, pids = run.urls, run.headers, run.pids
            small_urls = {s: f"{u}/small.txt" for s, u in urls.items()}
            say(f"small answers, -c32, {rounds} x {seconds:g} s per side ...")
            loaded = small_answers(small_urls, headers, pids, rounds, seconds, 32)
            say(f"small answers, -c1, {rounds} x {single_seconds} s per side ...")
            single = small_answers(small_urls, headers, pids, rounds, single_seconds, 1)
            say(f"{BIG_MIB} MiB downloads, {rounds} per side ...")
            big = downloads({s: f"{u}/big.bin" for s, u in urls.items()}, headers, pids, rounds)
            say(
                f"{args.slow_readers} slow readers through the tunnel"
                f" ({SLOW_READ // 1024} KiB every {SLOW_EVERY * 1000:g} ms),"
                f" {SLOW_SETTLE:g} + {slow_seconds:g} s ..."
            )
            slow = slow_readers(
                run.server_port, headers["tunnel"], pids, args.slow_readers, slow_seconds
            )
            say(f"{STALLED} stalled downloads at once through a new tunnel, small requests ...")
            agent = run.new_agent("stalled")
            stalled = stalled_streams(
                run.server_port,
                agent.headers(),
                {"server": pids["server"], "agent": agent.pid},
                STALLED,
            )
            say(f"up to {CANCEL_BATCHES} x {CANCEL_BATCH} cancelled stalled downloads, new tunnel")
            agent = run.new_agent("cancelled")
            cancelled = cancelled_streams(run.server_port, agent.headers(), CANCEL_BATCHES)
            say(f"{PARALLEL} parallel {PARALLEL_MIB} MiB downloads, {rounds} per side ...")
            agent = run.new_agent("parallel")
            parallel = parallel_downloads(
                {side: urls[side] for side in (*SSH_SIDES, "tunnel")},
                {**{side: {} for side in SSH_SIDES}, "tunnel": agent.headers()},
                agent,
                rounds,
            )
            say(f"SSE, {events} events per side ...")
            events_ = sse(run.test_agent, run.sse_ports, run.sse_headers, events)
            where, logs = run.where, run.logs
        text = "".join(log.read_text(errors="replace") for log in logs)
        tracebacks = text.count("Traceback")
        reconnects = text.count("disconnected (")  # the agents' "disconnected (why); ..."
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    elapsed = time.perf_counter() - started
    load_after = machine_load()
    say(f"machine load after the run: {load_after:.2f} cores")
    results = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "postgres": where,
        "python": platform.python_version(),
        "openssh": subprocess.run([SSH, "-V"], capture_output=True, text=True).stderr.strip(),
        "cores": os.cpu_count(),
        "machine_load_before_cores": load_before,
        "machine_load_after_cores": load_after,
        "loadavg_before": loadavg_before,  # (1, 5, 15 minutes, as uptime prints them)
        "loadavg_after": os.getloadavg(),
        "quick": args.quick,
        "seconds": elapsed,
        "targets": TARGETS,
        "small_c32": loaded,
        "small_c1": single,
        "download": big,
        "slow_readers": slow,
        "parallel_downloads": parallel,
        "stalled_streams": stalled,
        "cancelled_streams": cancelled,
        "sse": events_,
        "tracebacks_in_logs": tracebacks,
        "agent_reconnects": reconnects,
    }
    report(results)
    return 0


def report(results: dict[str, Any]) -> None:
    loaded, single = results["small_c32"], results["small_c1"]
    big, slow, sse_ = results["download"], results["slow_readers"], results["sse"]

    def rate(x: float) -> str:
        return f"{x:,.0f}/s"

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f} ms"

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT MET"

    def versus(ratio: float, ssh: str) -> str:
        """A ratio to the faster ssh, and which it was."""
        return f"{ratio:.2f}x {LABELS[ssh].split()[1]}"

    relays = SIDES[1:]  # (direct relays nothing)
    rows: list[tuple[str, ...]] = []
    for label, w in (("-c32", loaded), ("-c1", single)):
        ssh = w["ssh_best"]
        rows.append(
            (
                f"100 B file, wrk {label}: req/s",
                *(rate(w[s]["rps"]) for s in SIDES),
                versus(w["rps_tunnel_vs_ssh"], ssh),
                f">= {TARGETS['rps_vs_ssh']:g}x ssh:"
                f" {verdict(w['rps_tunnel_vs_ssh'] >= TARGETS['rps_vs_ssh'])}",
            )
        )
        for q in ("p50", "p99"):
            target = ""
            if q == "p99":
                no_worse = w["p99_tunnel_vs_ssh"] <= TARGETS["p99_vs_ssh"]
                target = f"<= ssh's: {verdict(no_worse)}"
                if label == "-c32":
                    under = w["tunnel"]["p99_ms"] < TARGETS["p99_ms"]
                    target += f"; < {TARGETS['p99_ms']:g} ms: {verdict(under)}"
            rows.append(
                (
                    f"100 B file, wrk {label}: {q}",
                    *(ms(w[s][f"{q}_ms"]) for s in SIDES),
                    versus(w[f"{q}_tunnel_vs_ssh"], ssh),
                    target,
                )
            )
        cpu_ok = w["cpu_per_request_tunnel_vs_ssh"] <= TARGETS["cpu_per_request_vs_ssh"]
        rows.append(
            (
                f"100 B file, wrk {label}: relay CPU/request",
                "",
                *(f"{w[s]['relay_cpu_us_per_request']:.0f} us" for s in relays),
                versus(w["cpu_per_request_tunnel_vs_ssh"], ssh),
                f"<= {TARGETS['cpu_per_request_vs_ssh']:g}x ssh: {verdict(cpu_ok)}",
            )
        )
    ssh = big["ssh_best"]
    rows += [
        (
            f"{BIG_MIB} MiB download (curl)",
            *(f"{big[f'{s}_mib_per_s']:,.0f} MiB/s" for s in SIDES),
            versus(big["tunnel_vs_ssh"], ssh),
            f">= {TARGETS['download_vs_ssh']:g}x ssh:"
            f" {verdict(big['tunnel_vs_ssh'] >= TARGETS['download_vs_ssh'])}",
        ),
        (
            f"{BIG_MIB} MiB download: relay CPU per GiB",
            "",
            *(f"{big[f'{s}_cpu_s_per_gib']:.2f} s" for s in relays),
            versus(big["tunnel_cpu_s_per_gib"] / big["ssh_cpu_s_per_gib"], ssh),
            "",
        ),
    ]
    blank = ("",) * len(SSH_SIDES)
    for p, name in (("server", "Sandbar"), ("agent", "agent")):
        m = big["memory"][p]
        rows.append(
            (
                f"{name} RSS: before downloads / peak",
                "",
                *blank,
                f"{m['rss_before_mib']:.0f} / {m['peak_rss_during_mib']:.0f} MiB",
                "",
                f"{m['growth_mib']:+.1f} MiB",
                "",
            )
        )
    limit = TARGETS["slow_reader_trend_mib"]
    for p, name in (("server", "Sandbar"), ("agent", "agent")):
        m = slow["memory"][p]
        rows.append(
            (
                f"{name} RSS, {slow['readers']} slow readers: settled / peak",
                "",
                *blank,
                f"{m['rss_settled_mib']:.1f} / {m['peak_rss_mib']:.1f} MiB",
                "",
                f"trend {m['trend_mib']:+.1f} MiB",
                f"flat (trend < {limit:g} MiB): {verdict(m['trend_mib'] < limit)}",
            )
        )
    rows.append(
        (
            f"small request beside {slow['readers']} slow readers",
            "",
            *blank,
            f"{ms(slow['probe_p50_ms'])} (max {ms(slow['probe_max_ms'])})",
            "",
            f"{slow['probes_failed']} of {slow['probes']} failed",
            f"before: {ms(slow['probe_before_p50_ms'])}",
        )
    )
    stalled, cancelled = results["stalled_streams"], results["cancelled_streams"]
    filling = stalled["while_filling"]
    dead = cancelled["dead_after_cancelled"]
    par = results["parallel_downloads"]
    cut = par["tunnel"]["cut"]
    rows += [
        (
            f"{par['downloads']} parallel {par['mib_each']} MiB downloads",
            "",
            *(f"{par[s]['mib_per_s']:,.0f} MiB/s" for s in SSH_SIDES),
            f"{par['tunnel']['mib_per_s']:,.0f} MiB/s",
            "",
            "-" if par["tunnel_vs_ssh"] is None else versus(par["tunnel_vs_ssh"], par["ssh_best"]),
            f"none cut: {verdict(cut == 0)}"
            + (f" ({cut} of {par['downloads'] * par['rounds']})" if cut else ""),
        ),
        (
            f"small request, {stalled['streams']} stalled downloads filling",
            "",
            *blank,
            f"{ms(filling['p50_ms'])} (max {ms(filling['max_ms'])})",
            "",
            f"{filling['failed']} of {filling['probes']} failed",
            f"all pass: {verdict(filling['failed'] == 0)}",
        ),
        (
            f"small request beside {stalled['streams']} stalled downloads",
            "",
            *blank,
            f"{ms(stalled['p50_ms'])} (max {ms(stalled['max_ms'])})",
            "",
            f"{stalled['failed']} of {stalled['probes']} failed",
            f"all pass: {verdict(stalled['failed'] == 0 and stalled['filled'])}",
        ),
        (
            "RSS per stalled download: Sandbar / agent",
            "",
            *blank,
            " / ".join(
                f"{stalled['memory'][p]['mib_per_stalled_stream']:.2f}" for p in ("server", "agent")
            )
            + " MiB",
            "",
            f"stream window {WINDOW / MIB:g} MiB",
            "",
        ),
        (
            "stalled downloads cancelled, then requests",
            "",
            *blank,
            f"dead after {dead}" if dead else f"alive after {cancelled['cancelled']}",
            "",
            "",
            f"stays alive: {verdict(dead is None)}",
        ),
    ]
    ssh = sse_["ssh_best"]
    for q in ("p50", "p99"):
        added = sse_["tunnel"][f"added_{q}_ms"]
        rows.append(
            (
                f"SSE event, release to client: {q}",
                ms(sse_["direct"][f"{q}_ms"]),
                *(ms(sse_[s][f"{q}_ms"]) for s in SSH_SIDES),
                ms(sse_["tunnel"][f"{q}_ms"]),
                "",
                f"{added:+.2f} ms ({LABELS[ssh].split()[1]} {sse_[ssh][f'added_{q}_ms']:+.2f})",
                f"added < 5 ms: {verdict(added < TARGETS['sse_added_ms'])}" if q == "p99" else "",
            )
        )
    table(
        [
            "MEASURE",
            "DIRECT",
            *(LABELS[s].upper() for s in SSH_SIDES),
            "TUNNEL",
            "PROXY ONLY",
            "TUNNEL VS SSH",
            "TARGET",
        ],
        rows,
    )
    cores = results["cores"]
    ssh = loaded["ssh_best"]
    fills = stalled["fills_connection_window"]
    print(
        f"\nssh: OpenSSH at its best at each load, the faster (by median) of `ssh -N -R` and"
        f" `ssh -tt -R ... sleep` (with a terminal both ends set TCP_NODELAY; -N leaves"
        f" Nagle on); 'TUNNEL VS SSH' names the one it was.\n"
        f"wrk -t1: median of {loaded['rounds']} rounds ({loaded['seconds']:g} s at -c32,"
        f" {single['seconds']:g} s at -c1), sides in ABBA order; ratios are medians over pairs"
        f" of rounds of the pair's means. At -c32 the relays used"
        f" {loaded[ssh]['relay_cores']:.2f} ({LABELS[ssh]}: sshd + ssh) and"
        f" {loaded['tunnel']['relay_cores']:.2f} (Sandbar + agent) cores, while processes"
        f" outside this benchmark used {loaded['others_cores']:.2f} of the {cores} (before the"
        f" run: {results['machine_load_before_cores']:.2f}, after:"
        f" {results['machine_load_after_cores']:.2f}; load average before"
        f" {' '.join(f'{x:.2f}' for x in results['loadavg_before'])}, after"
        f" {' '.join(f'{x:.2f}' for x in results['loadavg_after'])})."
        f" Tunnel vs proxy only: {loaded['tunnel']['rps'] / loaded['proxy']['rps']:.2f}x req/s,"
        f" {loaded['tunnel_cpu_added_to_proxy_us']:+.0f} us CPU/request.\n"
        f"downloads: median of {big['rounds']}. Slow readers: {slow['readers']} at"
        f" {slow['reader_pace_mib_per_s']:.2f} MiB/s each, {slow['seconds']:g} s measured after"
        f" {slow['settle_seconds']:g} s to settle (read {slow['read_mib_per_s']:.2f} MiB/s in"
        f" all); peak: VmHWM reset when settled, and VmRSS sampled every 0.1 s; trend: median"
        f" RSS over the last third of the period less that over the first third.\n"
        f"stalled: on a new tunnel, {stalled['streams']} downloads at once that read nothing"
        f" (a stream's window is {WINDOW / MIB:g} MiB, the connection's"
        f" {CONNECTION_WINDOW / MIB:g} MiB, at most {MAX_STREAMS} streams: "
        + (
            "enough to fill the connection window"
            if fills
            else f"as many as a tunnel admits less {STREAMS_SPARE}; no number of stalled"
            " streams can fill the connection window"
        )
        + f"): {filling['probes']} small requests after {SLOW_SETTLE:g} s (filling), then"
        f" {stalled['fill_seconds']:.1f} s from the start for the windows to fill (the relays"
        f" still: {'yes' if stalled['filled'] else 'NO'}), then {stalled['probes']} small"
        f" requests on new connections, each given {PROBE_TIMEOUT:g} s. Cancelled: on another"
        f" new tunnel, {cancelled['batch']} such downloads at a time, closed by their clients"
        f" after {cancelled['hold_s']:g} s, then 2 small requests with no other stream open;"
        f" dead = neither answered, twice.\n"
        f"parallel: {par['downloads']} downloads of {par['mib_each']} MiB (a Range) at once on a"
        f" tunnel of their own, MiB/s of whole ones in all; median of {par['rounds']}.\n"
        f"SSE: {sse_['events_per_side']} events per side, in ABBA order.\n"
        f"PostgreSQL: {results['postgres']}. {results['openssh']}. Tracebacks in Sandbar's and"
        f" the agents' logs: {results['tracebacks_in_logs']}; agent reconnects:"
        f" {results['agent_reconnects']}. Whole run: {results['seconds']:.0f} s."
    )
    write_results("tunnel", results)


if __name__ == "__main__":
    sys.exit(main())

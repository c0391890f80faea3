"""Sandbar under hostile traffic (issues 15 and 22), measured against a real `sandbar
serve` on loopback, and its speed beside a baseline revision's, in one run.

  refused      RSS growth of the server over N requests with 8 KiB heads to a made-up
               oc-{uuid} host (404, no sign-in), after a warm-up of N/20. Target: < 5 MiB.
  slow         /healthz p99 (a new connection per probe, 20/s) while S connections that
               sent half a head and went silent are open, beside its p99 before they
               opened; how many of them the server closed meanwhile. Target: < 100 ms.
  pipelined    one connection, with an access token: a request the upstream answers
               slowly, then up to 30 MiB of small requests pipelined behind it, for as long
               as the slow answer takes. RSS growth (peak, sampled), and how much of the
               30 MiB could be sent meanwhile (the sockets' buffers hold a few MiB of it).
               Target (this benchmark's): < 10 MiB.
  tunnel flood one hostile local agent (hostile_tools.py flood: the real wire format)
               floods its tunnel at 3 MB/s for 20 s: PUSH_PROMISE, then once Sandbar ends
               that tunnel, PINGs on the next, then SETTINGS, and so on, dialling again
               at once; it reads for the first half, then nothing (blind heartbeat ACKs
               keep it alive), and one request to its sandbox stays open so pushes have a
               stream. Meanwhile a real `sandbar agent connect` serves steady requests
               (50/s, keep-alive) and /healthz is probed (20/s). RSS growth (peak) and both
               p99s, beside a quiet period just before. Targets: RSS < 20 MiB; each p99
               within 2x of quiet.
  speed        req/s of the proxy (a sandbox routed to the upstream), of the tunnel (a
               local sandbox, a real agent) and of the REST API (`GET /healthz`, and a
               signed-in `GET /api/auth/me`) through the current tree and through a
               baseline revision (default 940734d, a `git worktree` at /tmp/sandbar-base,
               run with the same venv and PYTHONPATH pointed at it), each with 32
               keep-alive connections, the trees alternating within rounds; per-round
               ratios, and the server's (and agent's) CPU per request, which a busy
               machine moves less than rates. Target: no loss beyond noise (ratio >= 0.95,
               CPU per request <= 1.05x).

The upstream, the load and probe clients and the hostile agent are bench/hostile_tools.py
in processes of their own. The machine is small and shared: read ratios, and run the full
benchmark on a quiet machine. Every loop is bounded in count and time; only loopback
addresses. Never asserts: prints MET or MISSED per target.

Uses fresh databases on SANDBAR_BENCH_DATABASE_URL (default
postgresql://postgres@127.0.0.1:5432/postgres), dropped at the end. Prints a table; a full
run writes bench/results/hostile.json.
Usage: .venv/bin/python bench/bench_hostile.py [--quick] [--baseline REV|none]
       [--baseline-dir DIR] [--rounds N] [--seconds S]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_core import fresh_database, postgres_server, write_results  # noqa: E402
from bench.bench_proxy import (  # noqa: E402
    RssSampler,
    cpu_seconds,
    machine_load,
    say,
    status_field,
)
from bench.rounds import abba, even_rounds  # noqa: E402
from interfaces.cli.output import table  # noqa: E402
from tests.conftest import FAST_HASHING, User, free_port, register  # noqa: E402

TOOLS = ROOT / "bench" / "hostile_tools.py"
MIB = 1024 * 1024
HEAD_BYTES = 8 * 1024
DEFAULT_BASELINE = "940734d"
DEFAULT_BASELINE_DIR = Path("/tmp/sandbar-base")  # noqa: S108 - a checkout, not a temp file
MEASURES = ("refused", "slow", "pipelined", "flood", "speed")
KINDS = ("proxy", "tunnel", "healthz", "me")  # what speed measures
TARGETS = {
    "refused_rss_growth_mib": 5.0,  # under
    "slow_healthz_p99_ms": 100.0,  # under
    "pipelined_rss_growth_mib": 10.0,  # under (this benchmark's own)
    "flood_rss_growth_mib": 20.0,  # under
    "flood_p99_vs_quiet": 2.0,  # at most
    "speed_ratio": 0.95,  # at least: current / baseline req/s
    "cpu_per_request_ratio": 1.05,  # at most: current / baseline
}
# Running a baseline tree's code on its own database: a sandbox's agent recorded started.
RECORD_STARTED = """
import os, sys
from uuid import UUID
from domain.sandboxes import Sandbox
from infrastructure.settings import Settings
from interfaces.bootstrap import build
sandbar = build(Settings.from_env(os.environ))
box = sandbar.log.find(UUID(sys.argv[1]), Sandbox)
box.record_started(sys.argv[2])
sandbar.log.save(box)
sandbar.close()
"""


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def tool(*args: str, timeout: float) -> dict[str, Any]:
    """Run hostile_tools.py; its JSON answer."""
    done = subprocess.run(
        [sys.executable, str(TOOLS), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"hostile_tools {args[0]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def started_tool(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(TOOLS), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def tool_result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"hostile_tools failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def stop(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss(pid: int) -> float:
    return status_field(pid, "VmRSS")


def settled_rss(pid: int, seconds: float = 2.0) -> float:
    """VmRSS once a moment has passed (freed memory given back), the lowest of a few."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(rss(pid))
        time.sleep(0.1)
    return min(samples)


def request(host: str, path: str = "/", token: str | None = None, extra: str = "") -> str:
    """A request's bytes, with \\r\\n escapes (as hostile_tools.py takes them)."""
    auth = f"Authorization: Bearer {token}\\r\\n" if token else ""
    return f"GET {path} HTTP/1.1\\r\\nHost: {host}\\r\\n{auth}{extra}\\r\\n"


# The trees and their servers.


@dataclass
class Tree:
    name: str  # "current" or "baseline"
    root: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.root), **extra}

    def python(self, *args: str, env: dict[str, str], timeout: float = 60) -> str:
        done = subprocess.run(
            [sys.executable, *args],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            what = "a script" if args[0] == "-c" else " ".join(args[:4])
            raise RuntimeError(f"{self.name}: {what} failed:\n{done.stderr[-3000:]}")
        return done.stdout


def baseline_tree(rev: str, folder: Path) -> Tree:
    """The baseline revision checked out at ``folder`` (added as a git worktree if
    missing; one already there must be at that revision)."""
    want = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not folder.exists():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), want],
            check=True,
            capture_output=True,
        )
    have = subprocess.run(
        ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    if have != want:
        raise SystemExit(f"{folder} holds {have[:12] or 'no checkout'}, not {rev}: move it away")
    return Tree("baseline", folder)


@dataclass
class Agent:
    """A local sandbox registered with that tree's ``sandbar agent register``, and its
    ``sandbar agent connect`` once connected."""

    id: str
    token: str  # the tunnel token
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class Stack:
    """``sandbar serve`` of one tree on a fresh database, a user, a workspace."""

    tree: Tree
    folder: Path
    env: dict[str, str]
    port: int
    proc: subprocess.Popen[bytes]
    user: User
    workspace: str
    agents: list[Agent] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    def sandbox_host(self, sandbox_id: str) -> str:
        return f"oc-{sandbox_id}.localhost:{self.port}"

    def access_token(self, sandbox_id: str) -> str:
        r = self.user.client.post(f"/api/sandboxes/{sandbox_id}/access-tokens")
        assert r.status_code in (200, 201), r.text
        return r.json()["token"]

    def routed(self, target: str) -> tuple[str, str]:
        """A sandbox whose agent is at ``target`` (host:port): (its id, an access token)."""
        r = self.user.client.post(
            f"/api/workspaces/{self.workspace}/sandboxes", json={"name": "b", "type": "opencode"}
        )
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        self.tree.python("-c", RECORD_STARTED, sid, target, env=self.env)
        return sid, self.access_token(sid)

    def register_agent(self, name: str, target_port: int) -> Agent:
        r = self.user.client.post(f"/api/workspaces/{self.workspace}/agent-code")
        assert r.status_code == 201, r.text
        config = self.folder / "agents.json"
        before = set(json.loads(config.read_text())) if config.exists() else set()
        self.tree.python(
            *("-m", "interfaces.cli.main", "agent", "register", "--server"),
            *(f"http://127.0.0.1:{self.port}", "--code", r.json()["code"], "--name", name),
            *("--target", f"http://127.0.0.1:{target_port}"),
            env=self.agent_env(),
        )
        saved = json.loads(config.read_text())
        (sid,) = set(saved) - before
        agent = Agent(sid, saved[sid]["tunnel_token"])
        self.agents.append(agent)
        return agent

    def agent_env(self) -> dict[str, str]:
        return self.tree.env(SANDBAR_AGENT_CONFIG=str(self.folder / "agents.json"))

    def connect(self, agent: Agent) -> None:
        agent.proc = subprocess.Popen(
            [sys.executable, "-m", "interfaces.cli.main", "agent", "connect", agent.id],
            cwd=self.tree.root,
            env=self.agent_env(),
            stdout=(self.folder / f"agent-{agent.id}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while self.status(agent.id) != "running":
            if agent.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.folder / f"agent-{agent.id}.log").read_text(errors="replace")
                raise RuntimeError(f"{self.tree.name}: the agent did not connect:\n{log[-3000:]}")
            time.sleep(0.05)

    def status(self, sandbox_id: str) -> str:
        return self.user.client.get(f"/api/sandboxes/{sandbox_id}").json()["status"]

    def answers(self, sandbox_id: str, token: str) -> None:
        """Until a request through the proxy reaches the upstream (the route reaches the
        server's cache through the change feed)."""
        url = f"http://127.0.0.1:{self.port}/ready"
        headers = {"host": self.sandbox_host(sandbox_id), "authorization": f"Bearer {token}"}
        deadline = time.monotonic() + 15
        while True:
            r = httpx.get(url, headers=headers, timeout=10)
            if r.status_code == 200 and r.content.startswith(b"xxx"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.tree.name}: the proxy answered {r.status_code} {r.text}")
            time.sleep(0.1)

    def tracebacks(self) -> int:
        logs = [self.log, *self.folder.glob("agent-*.log")]
        return sum(p.read_text(errors="replace").count("Traceback") for p in logs)


@contextmanager
def serving(tree: Tree, server_url: str, folder: Path) -> Iterator[Stack]:
    folder.mkdir(parents=True)
    with fresh_database(server_url) as url:
        env = tree.env(
            **FAST_HASHING,
            SANDBAR_WORKER="false",
            SANDBAR_DATABASE_URL=url,
            SANDBAR_DATA_DIR=str(folder / "data"),
            SANDBAR_SECRET_KEY=uuid.uuid4().hex,
        )
        port = free_port()
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "interfaces.cli.main", "serve", "--host", "127.0.0.1"),
                *("--port", str(port), "--log-level", "warning"),
            ],
            cwd=tree.root,
            env=env,
            stdout=(folder / "server.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        stack: Stack | None = None
        try:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (folder / "server.log").read_text(errors="replace")
                    raise RuntimeError(f"{tree.name}: sandbar serve did not start:\n{log}")
                time.sleep(0.1)
            user = register(f"http://127.0.0.1:{port}", "bench")
            r = user.client.post("/api/workspaces", json={"name": "bench"})
            assert r.status_code == 201, r.text
            stack = Stack(tree, folder, env, port, proc, user, r.json()["id"])
            yield stack
        finally:
            for agent in stack.agents if stack else []:
                if agent.proc is not None:
                    stop(agent.proc)
            if stack is not None:
                stack.user.client.close()
            stop(proc, timeout=30)


# (1) Refused requests with 8 KiB heads.


def refused(stack: Stack, count: int, limit_s: float) -> dict[str, Any]:
    host = f"oc-{uuid.uuid4()}.localhost:{stack.port}"
    base = request(host)
    pad = HEAD_BYTES - len(base.replace("\\r\\n", "\r\n")) - len("X-Pad: \r\n")
    head = request(host, extra=f"X-Pad: {'a' * pad}\\r\\n")
    common = ["--port", str(stack.port), "--request", head, "--connections", "16"]
    common += ["--sources", "8"]
    # A warm-up of half the count: what the allocator, the thread pool's arenas and the
    # caches settle into (6-11 MiB here, the same after 100k or 300k requests) is not a
    # leak; what the measured run adds on top is.
    warm = max(500, count // 2)
    tool("load", *common, "--total", str(warm), "--seconds", str(limit_s), timeout=limit_s + 60)
    before = settled_rss(stack.pid)
    run = tool(
        "load", *common, "--total", str(count), "--seconds", str(limit_s), timeout=limit_s + 60
    )
    after = settled_rss(stack.pid)
    return {
        "requests": run["answers"],
        "asked": count,
        "warm_up": warm,
        "head_bytes": HEAD_BYTES,
        "rps": run["rps"],
        "statuses": run["statuses"],
        "errors": run["errors"],
        "connections_opened": run["connections_opened"],
        "rss_before_mib": before,
        "rss_after_mib": after,
        "growth_mib": after - before,
    }


# (2) Slow connections: half a head, then silence.


def raise_fd_limit(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_slow(port: int, n: int, sources: int, limit_s: float) -> tuple[list[socket.socket], int]:
    """``n`` connections (from ``sources`` loopback addresses) that each sent half a head."""
    half = f"GET /healthz HTTP/1.1\r\nHost: localhost:{port}\r\nUser-Agent: slow\r\nX-Sl".encode()
    out: list[socket.socket] = []
    failed = 0
    deadline = time.monotonic() + limit_s
    for i in range(n):
        if time.monotonic() > deadline:
            failed += n - i
            break
        s = socket.socket()
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.bind((f"127.0.{(i % sources) // 250}.{2 + (i % sources) % 250}", 0))
            s.settimeout(5)
            s.connect(("127.0.0.1", port))
            s.sendall(half)
            s.setblocking(False)
            out.append(s)
        except OSError:
            failed += 1
            s.close()
    return out, failed


def closed_by_server(sockets: list[socket.socket]) -> int:
    closed = 0
    for s in sockets:
        try:
            if s.recv(65536, socket.MSG_PEEK) is not None:
                closed += 1  # an answer (408, say) or the end of the stream
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return closed


def slow(stack: Stack, n: int, seconds: float, sources: int) -> dict[str, Any]:
    limit = raise_fd_limit(n + 1024)
    probe = ["probe", "--port", str(stack.port), "--request", request(f"localhost:{stack.port}")]
    probe += ["--fresh", "--rate", "20"]
    quiet = tool(*probe, "--seconds", str(min(5.0, seconds)), timeout=seconds + 60)
    started = time.monotonic()
    sockets, failed = open_slow(stack.port, n, sources, limit_s=max(30.0, n / 100))
    opened_in = time.monotonic() - started
    try:
        loaded = tool(*probe, "--seconds", str(seconds), timeout=seconds + 60)
        closed = closed_by_server(sockets)
        after = tool(*probe, "--seconds", "1", timeout=60)
    finally:
        for s in sockets:
            s.close()
    return {
        "connections": n,
        "opened": len(sockets),
        "failed_to_open": failed,
        "opened_in_s": opened_in,
        "closed_by_server": closed,
        "sources": sources,
        "fd_limit": limit,
        "quiet": quiet,
        "during": loaded,
        "healthz_after_answered": after["answered"],
        "rss_mib": rss(stack.pid),
    }


# (3) A pipelined flood behind a slow request.


def pipelined(stack: Stack, upstream_port: int, mib: int, slow_s: float) -> dict[str, Any]:
    sid, token = stack.routed(f"127.0.0.1:{upstream_port}")
    stack.answers(sid, token)
    host = stack.sandbox_host(sid)
    auth = f"Host: {host}\r\nAuthorization: Bearer {token}\r\n"
    first = f"GET /slow?s={slow_s:g} HTTP/1.1\r\n{auth}\r\n".encode()
    one = f"GET /p HTTP/1.1\r\n{auth}\r\n".encode()
    chunk = one * max(1, 65536 // len(one))
    goal = mib * MIB
    before = settled_rss(stack.pid, 1.0)
    sent = 0
    stalls = 0
    with RssSampler(stack.pid, every=0.05) as sampler:
        sock = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
            sock.sendall(first)
            sock.settimeout(0.2)
            deadline = time.monotonic() + slow_s
            view = memoryview(chunk)
            while sent < goal and time.monotonic() < deadline:
                try:
                    sent += sock.send(view[: min(len(chunk), goal - sent)])
                except TimeoutError:
                    stalls += 1  # the server is not reading: the point of a bound
                except OSError:
                    break
            while time.monotonic() < deadline:  # the queue is held until the slow answer
                time.sleep(0.1)
            during = rss(stack.pid)
        finally:
            sock.close()
    after = settled_rss(stack.pid)
    return {
        "goal_mib": mib,
        "sent_mib": sent / MIB,
        "requests_sent": sent // len(one),
        "send_stalls": stalls,
        "slow_answer_s": slow_s,
        "rss_before_mib": before,
        "rss_at_end_mib": during,
        "peak_rss_mib": sampler.peak,
        "rss_after_close_mib": after,
        "growth_mib": max(sampler.peak, during) - before,
    }


# (4) A hostile agent floods its tunnel while another agent serves.


def hold_open(stack: Stack, sid: str, token: str, stopping: threading.Event) -> None:
    """Keep one request to the hostile sandbox open (its stream is what pushes name),
    sent again whenever it is answered or cut; at most 500 times."""
    data = f"GET /hold HTTP/1.1\r\nHost: {stack.sandbox_host(sid)}\r\n"
    data += f"Authorization: Bearer {token}\r\n\r\n"
    for _ in range(500):
        if stopping.is_set():
            return
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", stack.port), timeout=5) as sock,
        ):
            sock.sendall(data.encode())
            sock.settimeout(0.2)
            while not stopping.is_set():
                try:
                    if not sock.recv(65536):
                        break
                    break  # answered (the agent is not there yet, say): send again
                except TimeoutError:
                    continue
        stopping.wait(0.2)


def flood(
    stack: Stack, upstream_port: int, seconds: float, quiet_s: float, mbps: float
) -> dict[str, Any]:
    steady = stack.register_agent("steady", upstream_port)
    stack.connect(steady)
    steady_token = stack.access_token(steady.id)
    stack.answers(steady.id, steady_token)
    hostile = stack.register_agent("hostile", upstream_port)
    hostile_token = stack.access_token(hostile.id)
    steady_probe = ["probe", "--port", str(stack.port), "--rate", "50"]
    steady_probe += ["--request", request(stack.sandbox_host(steady.id), "/steady", steady_token)]
    health_probe = ["probe", "--port", str(stack.port), "--rate", "20", "--fresh"]
    health_probe += ["--request", request(f"localhost:{stack.port}", "/healthz")]

    def probed(span: float) -> tuple[dict[str, Any], dict[str, Any]]:
        a = started_tool(*steady_probe, "--seconds", str(span))
        b = started_tool(*health_probe, "--seconds", str(span))
        return tool_result(a, span + 60), tool_result(b, span + 60)

    with RssSampler(stack.pid, every=0.1) as quiet_rss:
        quiet_steady, quiet_health = probed(quiet_s)
    before = statistics.median([rss(stack.pid), quiet_rss.peak])
    stopping = threading.Event()
    holder = threading.Thread(
        target=hold_open, args=(stack, hostile.id, hostile_token, stopping), daemon=True
    )
    holder.start()
    hostile_proc = started_tool(
        *("flood", "--port", str(stack.port), "--sandbox", hostile.id, "--token", hostile.token),
        *("--seconds", str(seconds), "--mbps", str(mbps), "--stall-after", str(seconds / 2)),
        *("--rotate", "--kinds", "push,ping,settings"),
    )
    try:
        with RssSampler(stack.pid, every=0.1) as sampler:
            flood_steady, flood_health = probed(seconds)
            flooded = tool_result(hostile_proc, seconds + 60)
    finally:
        stopping.set()
        stop(hostile_proc)
        holder.join(timeout=10)
    after = settled_rss(stack.pid)
    return {
        "seconds": seconds,
        "quiet_seconds": quiet_s,
        "flood": flooded,
        "rss_before_mib": before,
        "peak_rss_mib": sampler.peak,
        "rss_after_mib": after,
        "growth_mib": sampler.peak - before,
        "steady": {"quiet": quiet_steady, "flood": flood_steady},
        "healthz": {"quiet": quiet_health, "flood": flood_health},
        "steady_status_after": stack.status(steady.id),
    }


# (5) Speed: the current tree beside the baseline.


@dataclass
class SpeedSide:
    stack: Stack
    proxy_request: str
    tunnel_request: str
    healthz_request: str  # GET /healthz: the front's API path, the least the API does
    me_request: str  # GET /api/auth/me, signed in: a REST call with a session lookup
    agent_pid: int


def speed_side(stack: Stack, upstream_port: int) -> SpeedSide:
    sid, token = stack.routed(f"127.0.0.1:{upstream_port}")
    stack.answers(sid, token)
    agent = stack.register_agent("speed", upstream_port)
    stack.connect(agent)
    agent_token = stack.access_token(agent.id)
    stack.answers(agent.id, agent_token)
    assert agent.proc is not None
    cookie = "; ".join(f"{k}={v}" for k, v in stack.user.client.cookies.items())
    return SpeedSide(
        stack,
        request(stack.sandbox_host(sid), "/small", token),
        request(stack.sandbox_host(agent.id), "/small", agent_token),
        request(f"localhost:{stack.port}", "/healthz"),
        request(f"localhost:{stack.port}", "/api/auth/me", extra=f"Cookie: {cookie}\\r\\n"),
        agent.proc.pid,
    )


def speed(
    sides: dict[str, SpeedSide], rounds: int, seconds: float, kinds: tuple[str, ...] = KINDS
) -> dict[str, Any]:
    names = tuple(sides)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        kind: {n: [] for n in names} for kind in kinds
    }

    def one(side: SpeedSide, kind: str, span: float) -> dict[str, Any]:
        req = {
            "proxy": side.proxy_request,
            "tunnel": side.tunnel_request,
            "healthz": side.healthz_request,
            "me": side.me_request,
        }[kind]
        pids = {"server": side.stack.pid}
        if kind == "tunnel":
            pids["agent"] = side.agent_pid
        cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
        out = tool(
            *("load", "--port", str(side.stack.port), "--request", req),
            *("--connections", "32", "--seconds", str(span)),
            timeout=span + 60,
        )
        n = max(1, out["answers"])
        out["cpu_us"] = {k: (cpu_seconds(pids[k]) - v) / n * 1e6 for k, v in cpu.items()}
        out["cpu_us_per_request"] = sum(out["cpu_us"].values())
        return out

    for name in names:  # warm up: pools, caches, idle streams
        for kind in runs:
            one(sides[name], kind, 1)
    for r in range(rounds):
        for name in abba(names, r):
            for kind in runs:
                run = one(sides[name], kind, seconds)
                runs[kind][name].append(run)
                say(
                    f"  round {r + 1}/{rounds} {kind:6} {name:8} {run['rps']:>8,.0f} req/s"
                    f"  p99 {run['p99_ms'] or 0:.2f} ms  {run['cpu_us_per_request']:.0f} us CPU/req"
                    f" ({', '.join(f'{k} {v:.0f}' for k, v in run['cpu_us'].items())})"
                    + (f"  errors {run['errors']}" if run["errors"] else "")
                    + (f"  statuses {run['statuses']}" if set(run["statuses"]) != {"200"} else "")
                )
    out: dict[str, Any] = {"rounds": rounds, "seconds": seconds, "runs": runs}
    for kind, by in runs.items():
        out[kind] = {
            n: {
                "rps": statistics.median(x["rps"] for x in by[n]),
                "cpu_us_per_request": statistics.median(x["cpu_us_per_request"] for x in by[n]),
            }
            for n in names
        }
        if "baseline" in by and "current" in by:
            pairs = list(zip(by["current"], by["baseline"], strict=True))
            out[kind]["ratio"] = statistics.median(c["rps"] / b["rps"] for c, b in pairs)
            out[kind]["cpu_ratio"] = statistics.median(
                c["cpu_us_per_request"] / b["cpu_us_per_request"] for c, b in pairs
            )
            out[kind]["ratios"] = [c["rps"] / b["rps"] for c, b in pairs]
    return out


# The run.


@contextmanager
def upstream() -> Iterator[int]:
    port = free_port()
    proc = started_tool("upstream", "--port", str(port), "--seconds", "7200")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if '"listening"' not in line:
            raise RuntimeError(f"the upstream did not start: {line}{proc.stderr.read()}")
        yield port
    finally:
        stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="a git revision, or none")
    parser.add_argument("--baseline-dir", type=Path, default=DEFAULT_BASELINE_DIR)
    parser.add_argument(
        "--rounds", type=int, help="speed rounds, made even: ABBA pairs (default 4)"
    )
    parser.add_argument("--seconds", type=float, help="seconds per speed run (default 10)")
    parser.add_argument("--refused", type=int, help="refused requests (default 100,000)")
    parser.add_argument("--slow", type=int, help="slow connections (default 5,000)")
    parser.add_argument("--slow-sources", type=int, default=50, help="their source addresses")
    parser.add_argument("--flood-mbps", type=float, default=3.0, help="the hostile agent's MB/s")
    parser.add_argument(
        "--only", default=",".join(MEASURES), help=f"some of {','.join(MEASURES)} (default all)"
    )
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help=f"speed: some of {','.join(KINDS)} (default all)"
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    kinds = tuple(k for k in KINDS if k in args.kinds.split(","))
    if not kinds or set(args.kinds.split(",")) - set(KINDS):
        parser.error(f"--kinds takes some of {','.join(KINDS)}")
    if not only <= set(MEASURES):
        parser.error(f"--only takes some of {','.join(MEASURES)}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    q = args.quick
    rounds = even_rounds(args.rounds or (2 if q else 4))
    seconds = args.seconds or (2.0 if q else 10.0)
    n_refused = args.refused or (5_000 if q else 100_000)
    n_slow = args.slow or (500 if q else 5_000)
    slow_s = 3.0 if q else 10.0
    pipe_mib, pipe_s = (3, 4.0) if q else (30, 15.0)
    flood_s, quiet_s = (6.0, 3.0) if q else (20.0, 10.0)
    current = Tree("current", ROOT)
    baseline = (
        None
        if args.baseline == "none" or "speed" not in only
        else baseline_tree(args.baseline, args.baseline_dir)
    )
    raise_fd_limit(n_slow + 1024)

    load_before = machine_load()
    say(f"machine load before the run: {load_before:.2f} cores of {os.cpu_count()}")
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="sandbar-bench-hostile-"))
    results: dict[str, Any] = {}
    tracebacks: dict[str, int] = {}
    try:
        with postgres_server() as (server_url, where), upstream() as up_port:
            results["postgres"] = where
            if "speed" in only:
                say(f"speed: proxy and tunnel, -c32, {rounds} x {seconds:g} s per tree ...")
                with contextlib.ExitStack() as stacks:
                    cur = stacks.enter_context(serving(current, server_url, folder / "current"))
                    sides = {"current": speed_side(cur, up_port)}
                    if baseline is not None:
                        base = stacks.enter_context(serving(baseline, server_url, folder / "base"))
                        sides["baseline"] = speed_side(base, up_port)
                    results["speed"] = speed(sides, rounds, seconds, kinds)
                    tracebacks.update({n: s.stack.tracebacks() for n, s in sides.items()})
            if only - {"speed"}:
                with serving(current, server_url, folder / "hostile") as stack:
                    if "refused" in only:
                        say(f"refused: {n_refused:,} requests with 8 KiB heads ...")
                        results["refused"] = refused(stack, n_refused, limit_s=60 if q else 600)
                    if "slow" in only:
                        say(f"slow: {n_slow:,} connections with half a head, {slow_s:g} s ...")
                        results["slow"] = slow(stack, n_slow, slow_s, args.slow_sources)
                    if "pipelined" in only:
                        say(f"pipelined: {pipe_mib} MiB behind a {pipe_s:g} s answer ...")
                        results["pipelined"] = pipelined(stack, up_port, pipe_mib, pipe_s)
                    if "flood" in only:
                        say(f"tunnel flood: {quiet_s:g} s quiet, {flood_s:g} s of flood ...")
                        results["flood"] = flood(stack, up_port, flood_s, quiet_s, args.flood_mbps)
                    tracebacks["hostile"] = stack.tracebacks()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    results.update(
        {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "machine_load_before_cores": load_before,
            "quick": q,
            "baseline": args.baseline,
            "measures": sorted(only),
            "seconds": time.perf_counter() - started,
            "targets": TARGETS,
            "tracebacks_in_logs": tracebacks,
        }
    )
    report(results)
    return 0


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} ms"


def refused_rows(ref: dict[str, Any]) -> list[tuple[str, ...]]:
    limit = TARGETS["refused_rss_growth_mib"]
    ok = ref["growth_mib"] < limit and ref["requests"] >= ref["asked"]
    return [
        (
            f"RSS growth, {ref['requests']:,} refused requests ({ref['head_bytes'] // 1024} KiB)",
            f"{ref['growth_mib']:+.1f} MiB ({ref['rss_before_mib']:.0f} -> "
            f"{ref['rss_after_mib']:.0f}; {ref['rps']:,.0f} req/s; {ref['statuses']})",
            f"< {limit:g} MiB",
            verdict(ok),
        )
    ]


def slow_rows(sl: dict[str, Any]) -> list[tuple[str, ...]]:
    during, limit = sl["during"], TARGETS["slow_healthz_p99_ms"]
    ok = during["p99_ms"] is not None and during["p99_ms"] < limit
    return [
        (
            f"/healthz p99, {sl['opened']:,} slow connections open",
            f"{ms(during['p99_ms'])} (quiet {ms(sl['quiet']['p99_ms'])}; "
            f"{during['answered']}/{during['probes']} answered; "
            f"{sl['closed_by_server']:,} closed by the server meanwhile)",
            f"< {limit:g} ms",
            verdict(ok and during["answered"] == during["probes"]),
        )
    ]


def pipelined_rows(pipe: dict[str, Any]) -> list[tuple[str, ...]]:
    limit = TARGETS["pipelined_rss_growth_mib"]
    return [
        (
            f"RSS growth, {pipe['goal_mib']} MiB pipelined behind a slow answer",
            f"{pipe['growth_mib']:+.1f} MiB ({pipe['sent_mib']:.1f} MiB could be sent,"
            f" {pipe['requests_sent']:,} requests, before the slow answer)",
            f"< {limit:g} MiB",
            verdict(pipe["growth_mib"] < limit),
        )
    ]


def flood_rows(fl: dict[str, Any]) -> list[tuple[str, ...]]:
    sent, hostile = fl["flood"]["sent"], fl["flood"]
    limit, times = TARGETS["flood_rss_growth_mib"], TARGETS["flood_p99_vs_quiet"]
    rows = [
        (
            f"RSS growth, a hostile agent's flood, {fl['seconds']:g} s",
            f"{fl['growth_mib']:+.1f} MiB ({sent['bytes'] / MIB:.1f} MiB sent: "
            f"{sent['ping']:,} PING, {sent['settings']:,} SETTINGS, {sent['push']:,} PUSH;"
            f" {hostile['accepted']} of {hostile['dials']} dials accepted"
            + (f", refused: {hostile['refused']}" if hostile["refused"] else "")
            + ")",
            f"< {limit:g} MiB",
            verdict(fl["growth_mib"] < limit),
        )
    ]
    for key, label in (("steady", "the other agent's requests"), ("healthz", "/healthz")):
        quiet, loud = fl[key]["quiet"], fl[key]["flood"]
        both = quiet["p99_ms"] is not None and loud["p99_ms"] is not None
        ok = both and loud["p99_ms"] <= times * quiet["p99_ms"]
        ratio = f"{loud['p99_ms'] / quiet['p99_ms']:.1f}x" if both and quiet["p99_ms"] else "-"
        rows.append(
            (
                f"p99 of {label} during the flood",
                f"{ms(loud['p99_ms'])} vs quiet {ms(quiet['p99_ms'])} = {ratio}"
                f" ({loud['answered']}/{loud['probes']} answered)",
                f"<= {times:g}x quiet",
                verdict(ok and loud["answered"] == loud["probes"]),
            )
        )
    return rows


def speed_rows(sp: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for kind in ("proxy", "tunnel", "healthz", "me"):
        if kind not in sp:
            continue
        s = sp[kind]
        if "ratio" not in s:
            rows.append((f"{kind} req/s", f"{s['current']['rps']:,.0f}/s", "", "no baseline"))
            continue
        rows.append(
            (
                f"{kind} req/s, current vs baseline",
                f"{s['current']['rps']:,.0f} vs {s['baseline']['rps']:,.0f}/s = "
                f"{s['ratio']:.3f}x (rounds: {', '.join(f'{r:.3f}' for r in s['ratios'])})",
                f">= {TARGETS['speed_ratio']:g}x",
                verdict(s["ratio"] >= TARGETS["speed_ratio"]),
            )
        )
        rows.append(
            (
                f"{kind} CPU per request, current vs baseline",
                f"{s['current']['cpu_us_per_request']:.0f} vs "
                f"{s['baseline']['cpu_us_per_request']:.0f} us = {s['cpu_ratio']:.3f}x",
                f"<= {TARGETS['cpu_per_request_ratio']:g}x",
                verdict(s["cpu_ratio"] <= TARGETS["cpu_per_request_ratio"]),
            )
        )
    return rows


def report(results: dict[str, Any]) -> None:
    builders = {
        "refused": refused_rows,
        "slow": slow_rows,
        "pipelined": pipelined_rows,
        "flood": flood_rows,
        "speed": speed_rows,
    }
    rows = [
        row
        for name, rows_of in builders.items()
        if name in results
        for row in rows_of(results[name])
    ]
    table(["MEASURE", "RESULT", "TARGET", "VERDICT"], rows)
    notes = [f"quick: {results['quick']}; measures: {', '.join(results['measures'])}."]
    if "speed" in results:
        sp = results["speed"]
        notes.append(
            f"Speed: baseline {results['baseline']}; median of {sp['rounds']} rounds of"
            f" {sp['seconds']:g} s, the trees alternating; CPU per request is the server's (and,"
            f" for the tunnel, the agent's)."
        )
    if "slow" in results:
        sl = results["slow"]
        notes.append(
            f"Slow connections from {sl['sources']} loopback addresses, fd limit"
            f" {sl['fd_limit']}, {sl['failed_to_open']} failed to open."
        )
    if "flood" in results:
        fl = results["flood"]
        tunnels = [(d["kinds"], d["lasted_s"], d["ended"]) for d in fl["flood"]["tunnels"][:6]]
        notes.append(
            f"Flood: the hostile agent read for the first half, then nothing; its tunnels"
            f" (kind, seconds, end): {tunnels}; the other agent's sandbox after:"
            f" {fl['steady_status_after']}."
        )
    notes.append(
        f"PostgreSQL: {results['postgres']}. Tracebacks in the logs:"
        f" {results['tracebacks_in_logs']}. Machine load before the run:"
        f" {results['machine_load_before_cores']:.2f} cores of {results['cores']}."
        f" Whole run: {results['seconds']:.0f} s."
    )
    print("\n" + "\n".join(notes))
    if results["quick"]:
        print("(a quick run: bench/results/hostile.json is written by full runs only)")
    else:
        write_results("hostile", results)


if __name__ == "__main__":
    sys.exit(main())

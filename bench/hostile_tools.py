"""The loopback programs bench/bench_hostile.py runs, each as a process of its own so that
the client side does not share an interpreter (and its GIL) with what it measures, nor
with the process that samples Sandbar's memory:

  upstream  an HTTP/1.1 server answering every request with 100 bytes, keep-alive and
            pipelining, on asyncio (uvloop when installed): cheaper per request than
            Sandbar's proxy, so the proxy is what a load measures. ``GET /slow?s=N``
            answers after N seconds (at most 60), and the requests behind it on the same
            connection wait their turn.
  load      a closed-loop HTTP/1.1 client (as wrk is): C keep-alive connections, each with
            one request in flight, for S seconds or N answers, whichever comes first; a
            connection the server closes is opened again (RST on close, so no TIME_WAIT
            piles up over 100k connections). Prints {answers, rps, p50_ms, p99_ms, ...}.
  probe     one request at a time at a fixed pace, each on a new connection or on one kept
            alive: latency per request, and failures (no answer within 10 s, a close).
  flood     a hostile local agent: dials its tunnel with a valid token (the real wire
            format, docs/tunnel.md: HTTP/2 frames in WebSocket binary messages, the agent
            the HTTP/2 server), answers what a real agent must to stay connected, then
            sends PING, SETTINGS and PUSH_PROMISE frames at a fixed byte rate (all at
            once, or with --rotate one kind per tunnel, in turn); from
            ``--stall-after`` on it reads nothing more (a PING ACK sent blind keeps the
            heartbeat alive), so what Sandbar writes toward it piles up. A closed tunnel is
            dialled again. Prints what it sent, how many dials were accepted, and how long
            each tunnel lasted.

Only loopback addresses; every loop is bounded in count and time.
Usage: python bench/hostile_tools.py {upstream,load,probe,flood} --help"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import select
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

ANSWER = b"x" * 99 + b"\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: text/plain\r\n\r\n" + ANSWER
SLOW_CAP = 60.0  # seconds an upstream answer may be held back, at most
PROBE_TIMEOUT = 10.0  # seconds a probe waits for its answer
LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close with RST, no TIME_WAIT
_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")


def install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()


def pct(samples: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of ``samples``, None when there are none."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered), max(1, round(q / 100 * len(ordered)))) - 1]


def source(i: int, sources: int) -> str:
    """The i-th of ``sources`` loopback source addresses (127.0.0.1 when there is one)."""
    k = i % sources
    return "127.0.0.1" if sources <= 1 else f"127.0.{k // 250}.{2 + k % 250}"


def split_answer(buf: bytes | bytearray, head_only: bool = False) -> tuple[int, int, bool] | None:
    """(status, length of the whole answer, connection: close) of the first whole answer in
    ``buf`` (1xx answers before it skipped); None while it is not all there. An answer
    with neither Content-Length nor a bodiless status is taken as ending at its head
    (none of the servers measured sends one; the load tools count it as an error)."""
    start = 0
    while True:
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            return None
        head = bytes(buf[start:end])
        status_match = _STATUS.match(head)
        status = int(status_match.group(1)) if status_match else 0
        if 100 <= status < 200:
            start = end + 4
            continue
        length_match = _LENGTH.search(head)
        length = 0 if head_only or length_match is None else int(length_match.group(1))
        if len(buf) < end + 4 + length:
            return None
        close = b"\r\nconnection: close" in head.lower()
        return status, end + 4 + length, close


# upstream


class _Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.held: list[bytes] | None = None  # answers behind a slow one, in order

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out: list[bytes] = []
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head, self.buf = self.buf[:end], self.buf[end + 4 :]
            length = _LENGTH.search(head + b"\r\n")
            if length is not None:  # (a body: skipped; the benchmarks send none)
                self.buf = self.buf[int(length.group(1)) :]
            if head.startswith(b"GET /slow"):
                query = parse_qs(urlsplit(head.split(b" ")[1].decode("latin-1")).query)
                delay = min(SLOW_CAP, float((query.get("s") or ["5"])[0]))
                self._write(out)
                out = []
                self.held = []
                asyncio.get_running_loop().call_later(delay, self._release)
            else:
                out.append(RESPONSE)
        self._write(out)

    def _write(self, out: list[bytes]) -> None:
        if not out or self.transport is None:
            return
        if self.held is not None:
            self.held += out
        else:
            self.transport.write(b"".join(out))

    def _release(self) -> None:
        held, self.held = self.held or [], None
        self._write([RESPONSE, *held])


async def _serve_upstream(port: int, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Upstream, "127.0.0.1", port, backlog=4096)
    print(json.dumps({"listening": port}), flush=True)
    async with server:
        await asyncio.sleep(seconds)


# load


class _Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.port: int = args.port
        self.request = args.request.encode("latin-1").decode("unicode_escape").encode("latin-1")
        self.total: int | None = args.total
        self.sources: int = args.sources
        self.head_only = self.request.startswith(b"HEAD ")
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors = 0
        self.connections = 0
        self.answers = 0
        self.stopped = False
        self.finished: asyncio.Future[None] | None = None

    def done(self) -> bool:
        return self.stopped or (self.total is not None and self.answers >= self.total)

    def answered(self, status: int, latency: float) -> None:
        self.answers += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latencies.append(latency)
        if self.done() and self.finished is not None and not self.finished.done():
            self.finished.set_result(None)

    async def open(self, i: int) -> None:
        loop = asyncio.get_running_loop()
        while not self.done():
            self.connections += 1
            try:
                await loop.create_connection(
                    lambda: _LoadConnection(self, i),
                    "127.0.0.1",
                    self.port,
                    local_addr=(source(self.connections, self.sources), 0),
                )
                return
            except OSError:
                self.errors += 1
                await asyncio.sleep(0.01)


class _LoadConnection(asyncio.Protocol):
    def __init__(self, run: _Load, i: int) -> None:
        self.run = run
        self.i = i
        self.buf = bytearray()
        self.sent = 0.0
        self.transport: asyncio.Transport | None = None
        self.ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.sent = time.perf_counter()
        self.transport.write(self.run.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        answer = split_answer(self.buf, self.run.head_only)
        if answer is None:
            return
        status, length, close = answer
        del self.buf[:length]
        self.run.answered(status, time.perf_counter() - self.sent)
        if self.run.done() or close or self.buf:
            self._again()  # (bytes beyond the answer: the connection is not clean)
        else:
            self.send()

    def _again(self) -> None:
        self.ended = True
        if self.transport is not None:
            self.transport.close()
        if not self.run.done():
            asyncio.get_running_loop().create_task(self.run.open(self.i))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended:
            self.run.errors += 1  # closed before its answer
            self._again()


async def _load(args: argparse.Namespace) -> dict[str, Any]:
    run = _Load(args)
    run.finished = asyncio.get_running_loop().create_future()
    started = time.perf_counter()
    for i in range(args.connections):
        asyncio.get_running_loop().create_task(run.open(i))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(run.finished), args.seconds)
    run.stopped = True
    elapsed = time.perf_counter() - started
    p50, p99 = pct(run.latencies, 50), pct(run.latencies, 99)
    return {
        "answers": run.answers,
        "seconds": elapsed,
        "rps": run.answers / elapsed,
        "p50_ms": None if p50 is None else p50 * 1e3,
        "p99_ms": None if p99 is None else p99 * 1e3,
        "statuses": {str(k): v for k, v in sorted(run.statuses.items())},
        "errors": run.errors,
        "connections_opened": run.connections,
    }


# probe


def _probe(args: argparse.Namespace) -> dict[str, Any]:
    request = args.request.encode("latin-1").decode("unicode_escape").encode("latin-1")
    every = 1.0 / args.rate
    deadline = time.monotonic() + args.seconds
    latencies: list[float] = []
    failures: dict[str, int] = {}
    statuses: dict[str, int] = {}
    sock: socket.socket | None = None
    buf = bytearray()
    next_at = time.monotonic()
    while time.monotonic() < deadline and len(latencies) + sum(failures.values()) < args.max:
        next_at += every
        started = time.perf_counter()
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", args.port), timeout=PROBE_TIMEOUT)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
                buf.clear()
            sock.sendall(request)
            while (answer := split_answer(buf)) is None:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed before the answer")
                buf += chunk
            status, length, close = answer
            del buf[:length]
            latencies.append(time.perf_counter() - started)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if close or args.fresh:
                sock.close()
                sock = None
        except (OSError, ConnectionError) as e:
            failures[type(e).__name__] = failures.get(type(e).__name__, 0) + 1
            if sock is not None:
                sock.close()
            sock = None
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        else:
            next_at = time.monotonic()  # late: the pace slips rather than bursts
    if sock is not None:
        sock.close()
    p50, p99 = pct(latencies, 50), pct(latencies, 99)
    return {
        "probes": len(latencies) + sum(failures.values()),
        "answered": len(latencies),
        "p50_ms": None if p50 is None else p50 * 1e3,
        "p99_ms": None if p99 is None else p99 * 1e3,
        "max_ms": max(latencies) * 1e3 if latencies else None,
        "statuses": statuses,
        "failures": failures,
    }


# flood: a hostile agent

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # the HTTP/2 client's (Sandbar's)
DATA, HEADERS, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = 0, 1, 3, 4, 5, 6, 7
ACK, END_STREAM, END_HEADERS = 0x1, 0x1, 0x4
HEARTBEAT = b"sandbar!"  # the payload of Sandbar's heartbeat PINGs (interfaces/tunnel/link.py)
# A pushed request's header block from HPACK's static table alone (no dynamic state):
# :method GET, :scheme http, :path /, and :authority "agent" as a literal not indexed.
PUSH_BLOCK = b"\x82\x86\x84\x01\x05agent"


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">IBI", len(payload) << 8 | kind, flags, stream) + payload


class _Tunnel:
    """One dial of the hostile agent: the WebSocket, the HTTP/2 bytes each way. Once the
    handshake is done the socket is non-blocking: the writer waits for room (the server
    reading) rather than for a timeout, which would cut a message in two."""

    def __init__(self, args: argparse.Namespace, token_in_query: bool) -> None:
        query = f"?token={args.token}" if token_in_query else ""
        uri = f"ws://localhost:{args.port}/api/tunnel/{args.sandbox}{query}"
        self.ws = ClientProtocol(parse_uri(uri), max_size=None)
        self.sock = socket.create_connection(("127.0.0.1", args.port), timeout=10)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        self.lock = threading.Lock()  # the reader answers while the writer floods
        self.out = bytearray()  # bytes the socket has not taken yet
        self.open_streams: set[int] = set()
        self.closed = False
        self.flooding = False
        self.why = ""
        self._h2 = bytearray()
        self._preface = len(PREFACE)
        request = self.ws.connect()
        request.headers["Authorization"] = f"Bearer {args.token}"
        self.ws.send_request(request)
        with self.lock:
            self._flush()

    def handshake(self) -> int:
        """The answer's status (101: the tunnel is open)."""
        while True:
            data = self.sock.recv(65536)
            if not data:
                return 0
            self.ws.receive_data(data)
            for event in self.ws.events_received():
                if isinstance(event, Response):
                    if event.status_code == 101:
                        self.sock.setblocking(False)
                        self.send(frame(SETTINGS, 0, 0))  # the server's preface
                    return event.status_code
                self._frame(event)

    def send(self, data: bytes) -> None:
        with self.lock:
            if not self.closed:
                self.ws.send_binary(data)
                self._flush()

    def _flush(self) -> None:
        for data in self.ws.data_to_send():
            self.out += data
        while self.out:
            try:
                sent = self.sock.send(self.out)
            except BlockingIOError:
                return
            del self.out[:sent]

    def drain(self, until: float) -> None:
        """Wait, up to ``until``, for the socket to take what is waiting."""
        while self.out and not self.closed and time.monotonic() < until:
            select.select([], [self.sock], [], 0.2)
            with self.lock:
                try:
                    self._flush()
                except OSError as e:
                    self.closed, self.why = True, self.why or f"write: {type(e).__name__}"

    def read(self, until: Callable[[], bool]) -> None:
        """Read and answer (SETTINGS ACK, PING ACK) until the tunnel ends or ``until()``."""
        while not self.closed and not until():
            if not select.select([self.sock], [], [], 0.2)[0]:
                continue
            try:
                data = self.sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError as e:
                self.end(f"read: {type(e).__name__}")
                return
            if not data:
                self.end("closed by Sandbar")
                return
            with self.lock:
                self.ws.receive_data(data)
                events = self.ws.events_received()
            for event in events:
                self._frame(event)

    def _frame(self, event: Any) -> None:
        if not isinstance(event, Frame):
            return
        if event.opcode is Opcode.CLOSE:
            self.end("close frame from Sandbar")
            return
        if event.opcode not in (Opcode.BINARY, Opcode.CONT):
            return
        self._h2 += event.data
        if self._preface:
            skip = min(self._preface, len(self._h2))
            del self._h2[:skip]
            self._preface -= skip
        while len(self._h2) >= 9:
            length_kind, flags, stream = struct.unpack(">IBI", self._h2[:9])
            length, kind = length_kind >> 8, length_kind & 0xFF
            if len(self._h2) < 9 + length:
                return
            payload = bytes(self._h2[9 : 9 + length])
            del self._h2[: 9 + length]
            stream &= 0x7FFFFFFF
            if kind == SETTINGS and not flags & ACK:
                self.send(frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                self.send(frame(PING, ACK, 0, payload))
            elif kind == HEADERS and not flags & END_STREAM:
                self.open_streams.add(stream)  # a request: never answered, pushed onto
            elif kind == RST_STREAM:
                self.open_streams.discard(stream)
            elif kind == GOAWAY:
                code = struct.unpack(">I", payload[4:8])[0] if len(payload) >= 8 else -1
                self.why = f"GOAWAY {code}"

    def end(self, why: str) -> None:
        with self.lock:
            self.closed = True
            self.why = self.why or why
        with contextlib.suppress(OSError):
            self.sock.close()


def _batch(
    tunnel: _Tunnel, kinds: set[str], size: int, sent: dict[str, int], promised: int
) -> tuple[bytes, int]:
    """One message of flood (a blind PING ACK first, which keeps the heartbeat alive
    while nothing is read); the next promised stream id."""
    batch = [frame(PING, ACK, 0, HEARTBEAT)]
    total = len(batch[0])
    streams = sorted(tunnel.open_streams)
    while total < size:
        if "ping" in kinds:
            batch.append(frame(PING, 0, 0, struct.pack(">Q", sent["ping"])))
            sent["ping"] += 1
        if "settings" in kinds:
            batch.append(frame(SETTINGS, 0, 0, struct.pack(">HI", 0x1, 4096)))
            sent["settings"] += 1
        if "push" in kinds and streams and promised < 2**31 - 2:
            payload = struct.pack(">I", promised) + PUSH_BLOCK
            batch.append(frame(PUSH_PROMISE, END_HEADERS, streams[0], payload))
            promised += 2
            sent["push"] += 1
        total = sum(len(b) for b in batch)
    return b"".join(batch), promised


def _flood(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + args.seconds
    stall_at = started + (args.stall_after if args.stall_after is not None else args.seconds)
    order = args.kinds.split(",")
    budget = args.mbps * 1e6  # bytes per second
    sent = {"bytes": 0, "ping": 0, "settings": 0, "push": 0, "messages": 0}
    dials: list[dict[str, Any]] = []
    token_in_query = False
    while time.monotonic() < deadline and len(dials) < args.max_dials:
        dial_at = time.monotonic()
        try:
            tunnel = _Tunnel(args, token_in_query)
            status = tunnel.handshake()
        except OSError as e:
            dials.append({"status": type(e).__name__, "lasted_s": 0.0})
            time.sleep(0.1)
            continue
        if status != 101:
            tunnel.end("refused")
            dials.append({"status": status, "lasted_s": 0.0})
            if status in (400, 401, 403) and len(dials) == 1:
                token_in_query = True  # (a server that takes the token in the query only)
            else:
                time.sleep(0.1)
            continue
        reader = threading.Thread(
            target=tunnel.read,
            args=(lambda t=tunnel: t.flooding and time.monotonic() > stall_at,),
            daemon=True,
        )
        reader.start()
        accepted = sum(1 for d in dials if d["status"] == 101)
        kinds = {order[accepted % len(order)]} if args.rotate else set(order)
        # A stream to push onto first (bench_hostile.py keeps a request open), as an
        # attacker would wait for one: up to 3 s.
        until = min(deadline, time.monotonic() + 3)
        while "push" in kinds and not tunnel.open_streams and time.monotonic() < until:
            time.sleep(0.02)
        tunnel.flooding = True  # (reading may stop from now on)
        next_at = time.monotonic()
        promised = 2
        while not tunnel.closed and time.monotonic() < deadline:
            data, promised = _batch(tunnel, kinds, args.message, sent, promised)
            try:
                tunnel.send(data)
            except OSError as e:
                tunnel.end(f"write: {type(e).__name__}")
                break
            tunnel.drain(deadline)
            sent["bytes"] += len(data)
            sent["messages"] += 1
            next_at = max(next_at + len(data) / budget, time.monotonic() - 1)
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        lasted = time.monotonic() - dial_at
        tunnel.end(tunnel.why or "flood over")
        reader.join(timeout=2)
        dials.append(
            {
                "status": 101,
                "kinds": ",".join(sorted(kinds)),
                "lasted_s": round(lasted, 2),
                "ended": tunnel.why,
            }
        )
    tunnels = [d for d in dials if d["status"] == 101]
    elapsed = time.monotonic() - started
    return {
        "seconds": elapsed,
        "sent": sent,
        "mb_per_s": sent["bytes"] / 1e6 / elapsed,
        "dials": len(dials),
        "accepted": len(tunnels),
        "refused": dict(Counter(str(d["status"]) for d in dials if d["status"] != 101)),
        "token_in_query": token_in_query,
        "tunnels": tunnels[:20],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="tool", required=True)
    up = sub.add_parser("upstream")
    up.add_argument("--port", type=int, required=True)
    up.add_argument("--seconds", type=float, default=7200, help="stop after this long")
    load = sub.add_parser("load")
    load.add_argument("--port", type=int, required=True)
    load.add_argument("--request", required=True, help="the request's bytes (\\r\\n escapes)")
    load.add_argument("--connections", type=int, default=32)
    load.add_argument("--seconds", type=float, default=10)
    load.add_argument("--total", type=int, help="stop after this many answers")
    load.add_argument("--sources", type=int, default=1, help="loopback source addresses")
    probe = sub.add_parser("probe")
    probe.add_argument("--port", type=int, required=True)
    probe.add_argument("--request", required=True)
    probe.add_argument("--rate", type=float, default=20, help="requests per second")
    probe.add_argument("--seconds", type=float, default=10)
    probe.add_argument("--max", type=int, default=100_000, help="at most this many probes")
    probe.add_argument("--fresh", action="store_true", help="a new connection per request")
    flood = sub.add_parser("flood")
    flood.add_argument("--port", type=int, required=True)
    flood.add_argument("--sandbox", required=True)
    flood.add_argument("--token", required=True)
    flood.add_argument("--seconds", type=float, default=20)
    flood.add_argument("--mbps", type=float, default=3.0, help="MB/s of frames sent")
    flood.add_argument("--kinds", default="ping,settings,push")
    flood.add_argument("--rotate", action="store_true", help="one kind per tunnel, in turn")
    flood.add_argument("--message", type=int, default=16384, help="bytes per message")
    flood.add_argument("--stall-after", type=float, help="stop reading after this many s")
    flood.add_argument("--max-dials", type=int, default=200)
    args = parser.parse_args()
    if args.tool == "upstream":
        install_uvloop()
        asyncio.run(_serve_upstream(args.port, args.seconds))
        return 0
    if args.tool == "load":
        install_uvloop()
        out = asyncio.run(_load(args))
    elif args.tool == "probe":
        out = _probe(args)
    else:
        out = _flood(args)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

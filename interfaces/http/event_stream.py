"""Live workspace events as Server-Sent Events: the stream of one request, and the hub
that wakes the streams of a workspace when the log gains events in it.

The hub hears of every save from the change feed (this process's at once, other
processes' by NOTIFY), reads once which workspaces gained events, and wakes only their
streams; each stream then reads its own workspace's events past the last one it sent.
Before every batch a stream checks again that its session is live and its user a member:
a member removed (or signed out) mid-stream gets nothing more, and the stream ends. A
stream that hears nothing for ``HEARTBEAT`` seconds checks anyway and sends a comment,
which also keeps proxies from closing it as idle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import orjson
from starlette.concurrency import run_in_threadpool

from application.errors import AppError
from interfaces.http.present_log import render

HEARTBEAT = 15.0  # seconds
BATCH = 100  # events read per query
SCAN = 1000  # log rows the hub reads per query
RETRY_MS = 2000  # what a browser waits before it reconnects


class StreamHub:
    """Wakes the streams of the workspaces that gained events. One per server."""

    def __init__(self, latest: Callable[[], int], since: Callable[[int, int], list[Any]]) -> None:
        self._latest = latest
        self._since = since  # (position, limit) -> rows with position and workspace_id
        self._watchers: dict[UUID, set[asyncio.Event]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._position: int | None = None
        self._dirty = False
        self._scanning = False
        self.closed = False

    def changed(self) -> None:
        """From any thread: the log may have gained events."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._poke)

    def close(self) -> None:
        """The server is stopping: every stream ends (else it would hold the shutdown)."""
        self.closed = True
        for events in self._watchers.values():
            for event in events:
                event.set()

    @contextmanager
    def watch(self, workspace_id: UUID) -> Iterator[asyncio.Event]:
        """An event set whenever the workspace may have gained events."""
        self._loop = asyncio.get_running_loop()
        event = asyncio.Event()
        self._watchers.setdefault(workspace_id, set()).add(event)
        try:
            yield event
        finally:
            watchers = self._watchers.get(workspace_id, set())
            watchers.discard(event)
            if not watchers:
                self._watchers.pop(workspace_id, None)

    def _poke(self) -> None:
        self._dirty = True
        if not self._scanning and self._watchers:
            self._scanning = True
            asyncio.get_running_loop().create_task(self._scan())

    async def _scan(self) -> None:
        try:
            while self._dirty:
                self._dirty = False
                if self._position is None:
                    self._position = await run_in_threadpool(self._latest)
                    for events in self._watchers.values():  # (whatever came before)
                        for event in events:
                            event.set()
                    continue
                rows = await run_in_threadpool(self._since, self._position, SCAN)
                if rows:
                    self._position = rows[-1]["position"]
                    self._dirty = self._dirty or len(rows) == SCAN
                for workspace_id in {r["workspace_id"] for r in rows}:
                    for event in self._watchers.get(workspace_id, ()):
                        event.set()
        except Exception:  # (the database away: each stream's heartbeat reads anyway)
            self._position = None
        finally:
            self._scanning = False


def frame(event: str, data: Any, position: int | None = None) -> bytes:
    """One Server-Sent Event (``data`` as one line of JSON)."""
    head = f"id: {position}\n" if position is not None else ""
    return f"{head}event: {event}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


class Stream:
    """One client's stream of one workspace, from a position on."""

    def __init__(
        self,
        hub: StreamHub,
        workspace_id: UUID,
        position: int,
        read: Callable[[int], list[Any]],
        origin: tuple[str, str, str],
    ) -> None:
        self._hub = hub
        self._workspace_id = workspace_id
        self._position = position
        self._read = read  # (position) -> rows past it; raises AppError once not allowed
        self._origin = origin

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield f"retry: {RETRY_MS}\n\n".encode()
        yield frame("ready", {"position": self._position}, self._position)
        with self._hub.watch(self._workspace_id) as woken:
            while not self._hub.closed:
                woken.clear()  # (before the read: a wake during it is not lost)
                try:
                    rows = await run_in_threadpool(self._read, self._position)
                except AppError as e:  # signed out, removed, or the workspace gone
                    yield frame("end", {"code": e.code, "message": e.message})
                    return
                for row in rows:
                    self._position = row["position"]
                    yield frame(row["kind"], render(row, self._origin), self._position)
                if len(rows) == BATCH:
                    continue
                try:
                    await asyncio.wait_for(woken.wait(), HEARTBEAT)
                except TimeoutError:
                    yield b": still here\n\n"

"""Group commit: calls that arrive while a batch is being written wait for the next batch,
which is written as one. One call at a time is written at once (no added wait); under
load, one statement serves many calls instead of one statement each.

With a ``linger``, what nobody waits for (``post``) is written at most that often: a
batch gathers for up to ``linger`` seconds first, unless a ``submit`` or ``flush`` wants
it sooner."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


def own_copy(error: Exception) -> Exception:
    """A copy of ``error`` for one caller to raise, caused by the original: one exception
    object raised by many callers would gather all their frames (and tracebacks) on it."""
    try:
        mine = copy.copy(error)
    except Exception:  # (an exception that cannot be rebuilt from its arguments)
        mine = RuntimeError(str(error))
    mine.__cause__ = error
    return mine


class GroupCommit(Generic[Item, Result]):
    def __init__(
        self, write: Callable[[list[Item]], Awaitable[list[Result]]], linger: float = 0.0
    ) -> None:
        """``write`` takes a batch and returns one result per item, in order."""
        self._write = write
        self._linger = linger
        self._queue: list[tuple[Item, asyncio.Future[Result] | None]] = []
        self._writer: asyncio.Task[None] | None = None
        self._gathering: asyncio.Future[None] | None = None  # set: stop gathering
        self._urgent = False  # the next batch is wanted at once
        self._queued = 0  # items ever queued
        self._done = 0  # items ever written (or failed)
        self._flushing: list[asyncio.Future[None]] = []

    async def submit(self, item: Item) -> Result:
        """Written with the next batch; its result (or the batch's error)."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._enqueue(item, future)
        self._hurry()
        return await future

    def post(self, item: Item) -> None:
        """Written with the next batch; nobody waits for it (a failure is logged)."""
        self._enqueue(item, None)

    def _enqueue(self, item: Item, future: asyncio.Future[Result] | None) -> None:
        self._queue.append((item, future))
        self._queued += 1
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._queue:
            if self._linger and not self._urgent:
                loop = asyncio.get_running_loop()
                self._gathering = gathering = loop.create_future()
                timer = loop.call_later(self._linger, self._hurry)
                await gathering
                timer.cancel()
            batch, self._queue, self._urgent = self._queue, [], False
            try:
                results = await self._write([item for item, _ in batch])
            except Exception as e:  # every caller of the batch gets the error
                unheard = 0
                for _, future in batch:
                    if future is None:
                        unheard += 1
                    elif not future.done():
                        future.set_exception(own_copy(e))
                if unheard:
                    log.warning("could not write %d item(s): %s", unheard, e)
                self._wrote(len(batch))
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future is not None and not future.done():  # nor one that gave up
                    future.set_result(result)
            self._wrote(len(batch))  # (after: its callers hear before a flush returns)

    def _wrote(self, n: int) -> None:
        self._done += n
        flushing, self._flushing = self._flushing, []
        for waiter in flushing:
            if not waiter.done():
                waiter.set_result(None)

    def _hurry(self) -> None:
        self._urgent = True
        gathering, self._gathering = self._gathering, None
        if gathering is not None and not gathering.done():
            gathering.set_result(None)

    async def flush(self) -> None:
        """Wait until everything submitted so far is written (not what comes after)."""
        until = self._queued
        while self._done < until and self._writer is not None and not self._writer.done():
            self._hurry()
            waiter = asyncio.get_running_loop().create_future()
            self._flushing.append(waiter)
            await waiter

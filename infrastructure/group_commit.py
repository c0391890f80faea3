"""Group commit: calls that arrive while a batch is being written wait for the next batch,
which is written as one. One call at a time is written at once (no added wait); under
load, one statement serves many calls instead of one statement each."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    def __init__(self, write: Callable[[list[Item]], Awaitable[list[Result]]]) -> None:
        """``write`` takes a batch and returns one result per item, in order."""
        self._write = write
        self._queue: list[tuple[Item, asyncio.Future[Result] | None]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        """Written with the next batch; its result (or the batch's error)."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._enqueue(item, future)
        return await future

    def post(self, item: Item) -> None:
        """Written with the next batch; nobody waits for it (a failure is logged)."""
        self._enqueue(item, None)

    def _enqueue(self, item: Item, future: asyncio.Future[Result] | None) -> None:
        self._queue.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                results = await self._write([item for item, _ in batch])
            except Exception as e:  # every caller of the batch gets the error
                unheard = 0
                for _, future in batch:
                    if future is None:
                        unheard += 1
                    elif not future.done():
                        future.set_exception(e)
                if unheard:
                    log.warning("could not write %d item(s): %s", unheard, e)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future is not None and not future.done():  # nor one that gave up
                    future.set_result(result)

    async def flush(self) -> None:
        """Wait until everything submitted so far is written."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

"""Group commit (infrastructure/group_commit.py), which the Anthropic proxy's usage
counting rests on: calls made while a batch is written go together in the next one, each
caller gets its own result, an error reaches exactly its batch's callers, and flush waits
for everything submitted."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infrastructure.group_commit import GroupCommit


class Recorder:
    def __init__(self, fail_on: set[int] | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on or set()

    async def write(self, batch: list[int]) -> list[int]:
        self.batches.append(batch)
        await asyncio.sleep(0.01)  # a statement under way
        if self.fail_on & set(batch):
            raise RuntimeError(f"batch {batch} failed")
        return [item * 10 for item in batch]


@settings(max_examples=30, deadline=None)
@given(waves=st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=5))
def test_each_caller_gets_its_own_result_and_nothing_is_lost(waves: list[int]) -> None:
    async def run() -> None:
        recorder = Recorder()
        group = GroupCommit(recorder.write)
        calls, n = [], 0
        for size in waves:  # a wave of callers, then a moment for the writer
            for _ in range(size):
                calls.append(asyncio.ensure_future(group.submit(n)))
                n += 1
            await asyncio.sleep(0.003)
        assert await asyncio.gather(*calls) == [i * 10 for i in range(n)]
        written = [item for batch in recorder.batches for item in batch]
        assert written == list(range(n))  # each once, in order
        assert len(recorder.batches) <= len(waves)  # a wave never costs more than a batch

    asyncio.run(run())


def test_one_call_at_a_time_is_written_at_once() -> None:
    async def run() -> None:
        recorder = Recorder()
        group = GroupCommit(recorder.write)
        for i in range(3):
            assert await group.submit(i) == i * 10
        assert recorder.batches == [[0], [1], [2]]

    asyncio.run(run())


def test_an_error_reaches_its_batch_only_and_flush_waits() -> None:
    async def run() -> None:
        recorder = Recorder(fail_on={1})
        group = GroupCommit(recorder.write)
        first = asyncio.ensure_future(group.submit(0))
        await asyncio.sleep(0)  # the first batch, [0], is under way
        failing = [asyncio.ensure_future(group.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.015)  # [1, 2] under way
        last = asyncio.ensure_future(group.submit(3))
        await asyncio.sleep(0)
        await group.flush()
        assert last.done() and last.result() == 30
        assert first.result() == 0
        for call in failing:
            with pytest.raises(RuntimeError, match="failed"):
                call.result()
        assert recorder.batches == [[0], [1, 2], [3]]

    asyncio.run(run())


def test_a_posted_item_is_written_and_its_failure_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        recorder = Recorder(fail_on={5})
        group = GroupCommit(recorder.write)
        group.post(4)
        group.post(5)
        await group.flush()
        assert recorder.batches == [[4, 5]]

    asyncio.run(run())
    assert "could not write 2 item(s): batch [4, 5] failed" in caplog.text


def test_posts_gather_for_the_linger_and_a_flush_or_a_caller_cuts_it_short() -> None:
    async def run() -> None:
        recorder = Recorder()
        group = GroupCommit(recorder.write, linger=60.0)
        for i in range(5):
            group.post(i)
            await asyncio.sleep(0.01)
        assert recorder.batches == []  # still gathering
        await asyncio.wait_for(group.flush(), 10)  # not after the minute
        assert recorder.batches == [[0, 1, 2, 3, 4]]
        group.post(5)
        assert await asyncio.wait_for(group.submit(6), 10) == 60  # nor does a caller wait
        assert recorder.batches[1:] == [[5, 6]]

    asyncio.run(run())


def test_each_caller_of_a_failed_batch_raises_an_exception_of_its_own() -> None:
    """One exception object raised in every caller's task would gather all their frames
    on its traceback (issue 15): each caller gets its own copy, caused by the batch's."""

    async def run() -> None:
        recorder = Recorder(fail_on={1})
        group = GroupCommit(recorder.write)
        calls = [asyncio.ensure_future(group.submit(i)) for i in (1, 2, 3)]
        errors = []
        for call in calls:
            with pytest.raises(RuntimeError, match="failed") as raised:
                await call
            errors.append(raised.value)
        assert recorder.batches == [[1, 2, 3]]
        assert len({id(e) for e in errors}) == 3
        assert all(e.__cause__ is errors[0].__cause__ is not None for e in errors)

    asyncio.run(run())

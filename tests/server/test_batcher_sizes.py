"""DynamicBatcher with `size_of`: batches of similar sizes, the oldest item first, the padding-waste cap,
and the usual contracts (deadlines, cancellation, per-item errors) on that path; `max_concurrent_runs`.
Items are ints that are their own size; a held first batch lets the queue fill, so every batch below is
formed deterministically."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from server.batcher import BatchRecord, DeadlineExceededError, DynamicBatcher
from tests.server.test_batcher import Recorder, _started


def _own_size(i: int) -> int:
    return i


async def _queue_behind_held_batch(b: DynamicBatcher[int, int], rec: Recorder, items: list[int]
                                   ) -> tuple[asyncio.Task[int], list[asyncio.Task[int]]]:
    """Item 1 runs and is held; `items` queue behind it in this order."""
    running = asyncio.create_task(b.submit(1))
    await _started(rec)
    queued = []
    for i in items:
        queued.append(asyncio.create_task(b.submit(i)))
        await asyncio.sleep(0)  # enqueued in this order
    return running, queued


async def test_similar_sizes_share_batches_oldest_first() -> None:
    rec = Recorder(hold=True)
    b = DynamicBatcher(rec, max_batch_size=4, max_queue_delay_ms=0, max_queue_size=32, size_of=_own_size,
                       max_padding_waste=0.1)
    items = [10, 100, 11, 98, 12, 99, 50]
    running, queued = await _queue_behind_held_batch(b, rec, items)
    rec.release.set()
    assert await running == 2 and await asyncio.gather(*queued) == [2 * i for i in items]
    # 10 is the oldest: it goes first with the sizes near it among the 4 oldest [10, 100, 11, 98]; then
    # 100 (the oldest left) with its own among [100, 98, 12, 99]; 12 and 50 differ by more than 10 %
    assert rec.batches == [[1], [10, 11], [100, 98, 99], [12], [50]]
    assert b.stats.runs == 5 and b.stats.batch_sizes == {1: 3, 2: 1, 3: 1}
    await b.close()


async def test_cap_bounds_padding_waste() -> None:
    rec = Recorder(hold=True)
    b = DynamicBatcher(rec, max_batch_size=8, max_queue_delay_ms=0, max_queue_size=32, size_of=_own_size,
                       max_padding_waste=0.25)
    items = [40, 100, 70, 90, 60, 80, 50]
    running, queued = await _queue_behind_held_batch(b, rec, items)
    rec.release.set()
    await asyncio.gather(running, *queued)
    for batch in rec.batches:
        assert 1 - sum(batch) / (len(batch) * max(batch)) <= 0.25
    assert sorted(i for batch in rec.batches for i in batch) == sorted([1, *items])
    assert rec.batches[1][0] == 40  # the oldest waiting item is in the next batch
    assert 0 < b.stats.padding_waste <= 0.25
    await b.close()


async def test_batch_mates_come_from_the_oldest_max_batch_size_items() -> None:
    rec = Recorder(hold=True)
    b = DynamicBatcher(rec, max_batch_size=3, max_queue_delay_ms=0, max_queue_size=32, size_of=_own_size,
                       max_padding_waste=0.1)
    running, queued = await _queue_behind_held_batch(b, rec, [5, 100, 50, 5, 5, 5])
    rec.release.set()
    await asyncio.gather(running, *queued)
    # the younger 5s do not overtake 100 and 50 (from the whole queue they would have joined the first 5)
    assert rec.batches == [[1], [5], [100], [50], [5, 5, 5]]
    await b.close()


async def test_without_cap_batches_are_first_in_first_out() -> None:
    rec = Recorder(hold=True)
    b = DynamicBatcher(rec, max_batch_size=2, max_queue_delay_ms=0, max_queue_size=32, size_of=_own_size)
    running, queued = await _queue_behind_held_batch(b, rec, [5, 100, 6, 101, 7])
    rec.release.set()
    await asyncio.gather(running, *queued)
    assert rec.batches == [[1], [5, 100], [6, 101], [7]]
    assert b.stats.padding_waste > 0.4
    await b.close()


async def test_without_size_of_batches_stay_first_in_first_out() -> None:
    rec = Recorder(hold=True)
    b = DynamicBatcher(rec, max_batch_size=2, max_queue_delay_ms=0, max_queue_size=32)
    running, queued = await _queue_behind_held_batch(b, rec, [5, 100, 6, 101, 7])
    rec.release.set()
    await asyncio.gather(running, *queued)
    assert rec.batches == [[1], [5, 100], [6, 101], [7]]
    assert b.stats.padding_waste == 0.0
    await b.close()


async def test_an_outlier_is_not_starved() -> None:
    rec = Recorder(hold=True)
    b = DynamicBatcher(rec, max_batch_size=4, max_queue_delay_ms=0, max_queue_size=32, size_of=_own_size,
                       max_padding_waste=0.1)
    running, queued = await _queue_behind_held_batch(b, rec, [1000, 3, 3, 3, 3, 3])
    rec.release.set()
    await asyncio.gather(running, *queued)
    assert rec.batches == [[1], [1000], [3, 3, 3, 3], [3]]
    await b.close()


async def test_observer_gets_sizes_and_a_failed_batch_is_rerun_one_by_one() -> None:
    records: list[BatchRecord] = []
    rec = Recorder(hold=True, bad=(21,), poison=(30,))
    b = DynamicBatcher(rec, max_batch_size=4, max_queue_delay_ms=0, max_queue_size=32, size_of=_own_size,
                       max_padding_waste=0.5, observer=records.append)
    running, queued = await _queue_behind_held_batch(b, rec, [20, 21, 30, 32])
    rec.release.set()
    results = await asyncio.gather(running, *queued, return_exceptions=True)
    assert results[:2] == [2, 40]
    assert isinstance(results[2], ValueError) and isinstance(results[3], RuntimeError) and results[4] == 64
    assert rec.batches == [[1], [20, 21, 30, 32], [20], [21], [30], [32]]
    assert [r.sizes for r in records] == [(1,), (20, 21, 30, 32), (20,), (21,), (30,), (32,)]
    assert [r.failed for r in records] == [False, True, False, False, True, False]  # 30 fails alone too
    await b.close()


async def test_expired_and_cancelled_items_leave_the_queue_before_forming() -> None:
    rec = Recorder(hold=True)
    b = DynamicBatcher(rec, max_batch_size=4, max_queue_delay_ms=0, max_queue_size=32, size_of=_own_size,
                       max_padding_waste=0.3)
    running, (first, left, late) = await _queue_behind_held_batch(b, rec, [10, 11, 12])
    expiring = asyncio.create_task(b.submit(12, deadline=time.monotonic() + 0.05))
    left.cancel()
    with pytest.raises(DeadlineExceededError):
        await expiring
    with pytest.raises(asyncio.CancelledError):
        await left
    rec.release.set()
    assert await asyncio.gather(running, first, late) == [2, 20, 24]
    assert rec.batches == [[1], [10, 12]]
    assert b.stats.expired == 1 and b.stats.cancelled == 1 and b.queue_size == 0
    await b.close()


@pytest.mark.parametrize("waste", [-0.1, 1.5])
async def test_invalid_padding_cap(waste: float) -> None:
    with pytest.raises(ValueError, match="max_padding_waste"):
        DynamicBatcher(Recorder(), 4, 0, 8, size_of=_own_size, max_padding_waste=waste)


class Gate:
    """A run_batch that counts the runs inside it at once and holds each until `release` is set."""

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.active = self.max_active = 0

    def __call__(self, items: list[int]) -> list[int]:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.entered.release()
        self.release.wait(5)
        with self._lock:
            self.active -= 1
        return [2 * i for i in items]


async def test_concurrent_runs_overlap_up_to_the_limit_and_close_waits_for_them() -> None:
    gate = Gate()
    b = DynamicBatcher(gate, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=8, max_concurrent_runs=2)
    tasks = [asyncio.create_task(b.submit(i)) for i in range(3)]
    for _ in range(2):
        assert await asyncio.to_thread(gate.entered.acquire, timeout=5)
    assert b.queue_size == 1  # the third waits for a free run
    closing = asyncio.create_task(b.close())
    await asyncio.sleep(0.01)
    assert not closing.done()
    gate.release.set()
    assert await asyncio.gather(*tasks) == [0, 2, 4]
    await closing
    assert gate.max_active == 2 and b.stats.runs == 3


async def test_one_run_at_a_time_by_default() -> None:
    gate = Gate()
    gate.release.set()
    b = DynamicBatcher(gate, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=8)
    assert await asyncio.gather(*(b.submit(i) for i in range(4))) == [0, 2, 4, 6]
    assert gate.max_active == 1
    await b.close()


async def test_invalid_concurrent_runs() -> None:
    with pytest.raises(ValueError, match="max_concurrent_runs"):
        DynamicBatcher(Recorder(), 4, 0, 8, max_concurrent_runs=0)

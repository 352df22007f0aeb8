"""DynamicBatcher: batch forming, limits, per-item errors, deadlines, cancellation, draining."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from server.batcher import BatcherClosedError, DeadlineExceededError, DynamicBatcher, QueueFullError


class Recorder:
    """A run_batch that doubles ints, fails items named in `bad` (own exception) and whole batches
    containing `poison`, and can be held until `release` is set."""

    def __init__(self, bad: tuple[int, ...] = (), poison: tuple[int, ...] = (), hold: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.bad, self.poison = bad, poison
        self.release = threading.Event()
        self.started = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, items: list[int]) -> Sequence[int | Exception]:
        self.batches.append(list(items))
        self.started.set()
        self.release.wait(5)
        if any(i in self.poison for i in items):
            raise RuntimeError("poisoned batch")
        return [ValueError(f"bad item {i}") if i in self.bad else 2 * i for i in items]

    @property
    def seen(self) -> list[int]:
        return [i for b in self.batches for i in b]


async def _started(rec: Recorder) -> None:
    await asyncio.to_thread(rec.started.wait, 5)


async def test_concurrent_items_form_batches() -> None:
    rec = Recorder()
    b = DynamicBatcher(rec, max_batch_size=4, max_queue_delay_ms=200, max_queue_size=16)
    results = await asyncio.gather(*(b.submit(i) for i in range(8)))
    assert results == [2 * i for i in range(8)]
    assert b.stats.runs == 2 and b.stats.batch_sizes == {4: 2}  # full batches go before the delay ends
    await b.close()


async def test_max_batch_size_respected() -> None:
    rec = Recorder()
    b = DynamicBatcher(rec, max_batch_size=4, max_queue_delay_ms=20, max_queue_size=16)
    await asyncio.gather(*(b.submit(i) for i in range(10)))
    assert sorted(len(x) for x in rec.batches) == [2, 4, 4]
    assert sorted(rec.seen) == list(range(10))
    await b.close()


async def test_delay_waits_for_late_items_then_runs_a_partial_batch() -> None:
    rec = Recorder()
    b = DynamicBatcher(rec, max_batch_size=8, max_queue_delay_ms=150, max_queue_size=16)
    t0 = time.monotonic()
    first = asyncio.create_task(b.submit(1))
    await asyncio.sleep(0.03)
    assert await b.submit(2) == 4  # joined the first item's batch
    assert await first == 2
    assert time.monotonic() - t0 >= 0.14  # waited for the delay, since the batch never filled
    assert rec.batches == [[1, 2]]
    await b.close()


async def test_zero_delay_runs_at_once() -> None:
    rec = Recorder()
    b = DynamicBatcher(rec, max_batch_size=8, max_queue_delay_ms=0, max_queue_size=16)
    assert await b.submit(3) == 6
    assert rec.batches == [[3]]
    await b.close()


async def test_item_errors_stay_with_their_item() -> None:
    rec = Recorder(bad=(2,))
    b = DynamicBatcher(rec, max_batch_size=8, max_queue_delay_ms=50, max_queue_size=16)
    results = await asyncio.gather(*(b.submit(i) for i in range(4)), return_exceptions=True)
    assert results[:2] == [0, 2] and results[3] == 6
    assert isinstance(results[2], ValueError) and "bad item 2" in str(results[2])
    assert b.stats.runs == 1 and b.stats.failed_batches == 0
    await b.close()


async def test_failed_batch_is_rerun_one_by_one() -> None:
    rec = Recorder(poison=(5,))
    b = DynamicBatcher(rec, max_batch_size=8, max_queue_delay_ms=50, max_queue_size=16)
    results = await asyncio.gather(*(b.submit(i) for i in (1, 5, 3)), return_exceptions=True)
    assert results[0] == 2 and results[2] == 6
    assert isinstance(results[1], RuntimeError)
    assert rec.batches == [[1, 5, 3], [1], [5], [3]]
    assert b.stats.failed_batches == 1 and b.stats.runs == 4 and b.stats.batch_sizes == {3: 1, 1: 3}
    await b.close()


async def test_wrong_result_count_fails_each_caller() -> None:
    b: DynamicBatcher[int, int] = DynamicBatcher(lambda items: [], max_batch_size=4, max_queue_delay_ms=10,
                                                 max_queue_size=8)
    results = await asyncio.gather(*(b.submit(i) for i in range(2)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "0 results for 1 items" in str(r) for r in results)
    await b.close()


async def test_full_queue_raises_at_once() -> None:
    rec = Recorder(hold=True)
    b = DynamicBatcher(rec, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=2)
    running = asyncio.create_task(b.submit(0))
    await _started(rec)  # item 0 is in the engine; the queue is empty
    queued = [asyncio.create_task(b.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFullError, match="2 items waiting"):
        await b.submit(3)
    assert b.stats.rejected_queue_full == 1
    rec.release.set()
    assert await asyncio.gather(running, *queued) == [0, 2, 4]
    assert 3 not in rec.seen
    await b.close()


async def test_expired_items_are_dropped_before_running() -> None:
    rec = Recorder(hold=True)
    b = DynamicBatcher(rec, max_batch_size=4, max_queue_delay_ms=0, max_queue_size=8)
    running = asyncio.create_task(b.submit(0))
    await _started(rec)
    with pytest.raises(DeadlineExceededError):
        await b.submit(7, deadline=time.monotonic() + 0.05)  # waits behind the held batch
    with pytest.raises(DeadlineExceededError):
        await b.submit(8, deadline=time.monotonic() - 1)  # already past
    later = asyncio.create_task(b.submit(9, deadline=time.monotonic() + 5))
    rec.release.set()
    assert await running == 0 and await later == 18
    assert 7 not in rec.seen and 8 not in rec.seen
    assert b.stats.expired == 2 and b.queue_size == 0
    await b.close()


async def test_cancelled_callers_get_no_work() -> None:
    rec = Recorder(hold=True)
    b = DynamicBatcher(rec, max_batch_size=4, max_queue_delay_ms=0, max_queue_size=8)
    running = asyncio.create_task(b.submit(0))
    await _started(rec)
    left = asyncio.create_task(b.submit(5))
    stays = asyncio.create_task(b.submit(6))
    await asyncio.sleep(0.01)
    left.cancel()
    with pytest.raises(asyncio.CancelledError):
        await left
    rec.release.set()
    assert await running == 0 and await stays == 12
    assert 5 not in rec.seen and b.stats.cancelled == 1
    await b.close()


async def test_close_finishes_queued_work_and_refuses_new() -> None:
    rec = Recorder(hold=True)
    b = DynamicBatcher(rec, max_batch_size=2, max_queue_delay_ms=1000, max_queue_size=8)
    tasks = [asyncio.create_task(b.submit(i)) for i in range(5)]
    await _started(rec)
    closing = asyncio.create_task(b.close())
    await asyncio.sleep(0.01)
    with pytest.raises(BatcherClosedError):
        await b.submit(9)
    t0 = time.monotonic()
    rec.release.set()
    assert await asyncio.gather(*tasks) == [0, 2, 4, 6, 8]
    await closing
    assert b.stats.runs == 3
    assert time.monotonic() - t0 < 0.9  # closing does not wait out the 1 s delay of the last batch


@pytest.mark.parametrize("settings,field", [((0, 0, 1), "max_batch_size"), ((1, -1, 1), "max_queue_delay_ms"),
                                            ((1, 0, 0), "max_queue_size")])
async def test_invalid_settings(settings: tuple[int, int, int], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        DynamicBatcher(Recorder(), *settings)


async def test_an_urgent_item_ends_the_wait_for_batch_mates() -> None:
    rec = Recorder()
    b = DynamicBatcher(rec, max_batch_size=8, max_queue_delay_ms=2000, max_queue_size=16, urgent=lambda i: i < 0)
    t0 = time.monotonic()
    plain = asyncio.ensure_future(b.submit(1))
    await asyncio.sleep(0.05)
    assert not plain.done()  # a lone plain item waits for batch-mates (up to 2 s)
    assert await b.submit(-1) == -2  # the urgent one leaves at once and takes the waiting item along
    assert await plain == 2 and time.monotonic() - t0 < 1.0
    assert rec.batches == [[1, -1]]
    await b.close()

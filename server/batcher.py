"""Dynamic batching for asyncio servers; knows nothing of models.

Callers `await batcher.submit(item, deadline=...)` from many coroutines; one worker task gathers
items into a batch until `max_batch_size` items are waiting or `max_queue_delay_ms` has passed since
the batch's first item arrived, then calls `run_batch(items)` in a worker thread (ONNX Runtime
releases the GIL) and hands each caller its own result or its own exception (Triton's contract: one
response per request, one bad request never fails its batch-mates).

- Queue full: `submit` raises `QueueFullError` at once (RESOURCE_EXHAUSTED) when `max_queue_size` items
  wait, or (`max_queue_wait_ms`) when the item's predicted wait before its run exceeds that budget: the
  wait is predicted from measured run times (server/admission.py), so the queue holds as much work as
  the budget allows however fast the model is, instead of a count that is seconds of work on a CPU.
- Deadline (a `time.monotonic()` instant): `submit` raises `DeadlineUnmeetableError` (a
  `DeadlineExceededError`, DEADLINE_EXCEEDED) at once when the predicted wait plus the item's own run
  exceeds the time left, rather than queueing work whose answer nobody will read. DEADLINE_EXCEEDED, not
  RESOURCE_EXHAUSTED: the verdict is about this call's deadline (the client would see DEADLINE_EXCEEDED
  anyway, only later), while RESOURCE_EXHAUSTED says "retry with backoff" (server/errors.py), which
  cannot succeed within the same deadline. `DeadlineExceededError` when the deadline passes while the
  item waits (or the caller is cancelled after it), and an expired item is dropped before it runs.
- `check_admission(deadline)`: the same checks without an item, for servicers to call before costly
  preparation (audio decoding), so that shedding a request costs next to nothing.
- A caller that is cancelled (client left) removes its item; items already running are not stopped,
  their results are discarded.
- `run_batch` raising as a whole: the items are re-run one by one, so only the bad one fails.
- `close()` refuses new items (`BatcherClosedError`, UNAVAILABLE) and finishes the queued ones.
- `max_concurrent_runs` (default 1): batches that may run at once, each in its own thread (Triton's
  model instances). On a CPU, two runs of one ONNX Runtime thread each keep two cores busy without the
  per-operator thread hand-offs of one run on two threads, and one batch's decoding overlaps the other's
  engine run.
- `observer` (optional) gets a `BatchRecord` after every engine run and a `DropRecord` for every item
  refused at admission or expired before its run (metrics), so the batcher knows nothing of how they are
  reported.
- `size_of` (optional): the size an item is padded to in a batch (e.g. audio samples). Batches are then
  formed of similar sizes: the oldest waiting item always goes first, joined by the items nearest its
  size among the `max_batch_size` oldest (those first-in-first-out would run next) while the batch's
  padding waste, 1 - sum(sizes) / (n * max size), stays within `max_padding_waste` (read at every batch,
  so it may be changed on a running batcher); the rest wait for the next run. Picking batch-mates from
  the whole queue pads a little less but lets younger items overtake an odd-sized one again and again:
  in a simulation at 32 and 64 clients that raised the p99 latency by 35-47 % (bench/batcher_policies.py).
  Mixed-length speech padded to the longest clip otherwise wastes 33-42 % of the engine's work, and on a
  CPU a batch saves next to nothing per item (bench/results/batching_profile.md), so one padded batch is
  slower than a few matched ones.

    batcher = DynamicBatcher(run_batch, max_batch_size=16, max_queue_delay_ms=5, max_queue_size=256)
    batcher = DynamicBatcher(run_batch, 16, 5, 256, size_of=lambda utt: len(utt.samples), max_padding_waste=0.2)
    batcher = DynamicBatcher(run_batch, 16, 5, 256, max_queue_wait_ms=50)   # shed beyond 50 ms of queued work
    batcher.check_admission(deadline)   # QueueFullError / DeadlineUnmeetableError before preparing the item
    result = await batcher.submit(item, deadline=time.monotonic() + 2.0)
    await batcher.close()
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from server.admission import WaitPredictor

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

RunBatch = Callable[[list[T]], Sequence[R | Exception]]
SizeOf = Callable[[T], int]


class QueueFullError(Exception):
    """The batcher's queue holds `max_queue_size` items already, or its predicted wait is over budget."""


class DeadlineExceededError(Exception):
    """The item's deadline passed before its result was ready."""


class DeadlineUnmeetableError(DeadlineExceededError):
    """The item's deadline falls before its predicted wait and run end: refused without queueing it."""


class BatcherClosedError(Exception):
    """The batcher is closing or closed and takes no new items."""


@dataclass
class BatcherStats:
    """Counters for tests and, later, metrics. `batch_sizes[n]` = engine runs with n items."""

    runs: int = 0  # calls of run_batch, one-by-one re-runs included
    items_done: int = 0  # items that got a result or their own exception from run_batch
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)
    failed_batches: int = 0  # run_batch raised for a whole batch (then re-run one by one)
    rejected_queue_full: int = 0  # refused: max_queue_size items waiting
    rejected_queue_wait: int = 0  # refused: predicted wait over max_queue_wait_ms
    rejected_deadline: int = 0  # refused: the deadline falls before the predicted wait + run
    expired: int = 0  # deadline passed before the item's run (at submit or while queued)
    cancelled: int = 0  # the caller left while its item was queued
    queue_s_total: float = 0.0  # summed over items run: submit -> start of their run
    compute_s_total: float = 0.0  # summed over runs: run_batch wall time
    size_total: int = 0  # with size_of: summed over items run, their own sizes
    padded_size_total: int = 0  # with size_of: summed over runs, n items * the largest size

    @property
    def padding_waste(self) -> float:
        """Share of the padded work that was padding (0 without size_of)."""
        return 1.0 - self.size_total / self.padded_size_total if self.padded_size_total else 0.0


@dataclass(frozen=True)
class BatchRecord:
    """One call of run_batch, as observers see it."""

    size: int
    queue_s: tuple[float, ...]  # each item's wait, submit -> start of this run
    compute_s: float  # run_batch wall time
    failed: bool  # run_batch raised for the whole batch
    sizes: tuple[int, ...] = ()  # each item's size_of, empty without size_of


DropReason = Literal["queue_full", "queue_wait", "deadline", "expired"]


@dataclass(frozen=True)
class DropRecord:
    """An item that got no run: refused at admission (queue_full: the count bound, queue_wait: the
    predicted wait over budget, deadline: the deadline before the predicted end) or expired before its run."""

    reason: DropReason


BatchObserver = Callable[[BatchRecord | DropRecord], None]


@dataclass(eq=False)
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    deadline: float | None  # time.monotonic() instant
    enqueued_at: float  # time.monotonic()
    size: int = 0  # size_of(item); 0 without size_of
    units: int = 1  # work for the wait prediction: size with size_of, else 1
    urgent: bool = False  # dispatch without waiting for batch-mates


class DynamicBatcher(Generic[T, R]):
    """Gathers concurrent `submit` calls into batches for `run_batch`. Create it inside a running loop."""

    def __init__(self, run_batch: RunBatch[T, R], max_batch_size: int, max_queue_delay_ms: float,
                 max_queue_size: int, *, name: str = "batcher", observer: BatchObserver | None = None,
                 size_of: SizeOf[T] | None = None, max_padding_waste: float = 1.0,
                 max_concurrent_runs: int = 1, max_queue_wait_ms: float | None = None,
                 urgent: Callable[[T], bool] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        """`max_queue_wait_ms`: refuse items predicted to wait longer (None: the count bound only).
        `urgent`: items for which it is true end the wait for batch-mates at once (someone is waiting on
        exactly that item, e.g. the flush of a finished stream). `clock` times the runs for the wait
        prediction (tests pass a fake one)."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_queue_delay_ms < 0:
            raise ValueError(f"max_queue_delay_ms must be >= 0, got {max_queue_delay_ms}")
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {max_queue_size}")
        if max_concurrent_runs < 1:
            raise ValueError(f"max_concurrent_runs must be >= 1, got {max_concurrent_runs}")
        if not 0.0 <= max_padding_waste <= 1.0:
            raise ValueError(f"max_padding_waste must be in [0, 1], got {max_padding_waste}")
        if max_queue_wait_ms is not None and max_queue_wait_ms <= 0:
            raise ValueError(f"max_queue_wait_ms must be > 0 (or None: no wait bound), got {max_queue_wait_ms}")
        self._run_batch = run_batch
        self._size_of = size_of
        self._urgent = urgent
        self.max_padding_waste = max_padding_waste
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.max_queue_wait_s = None if max_queue_wait_ms is None else max_queue_wait_ms / 1000.0
        self.name = name
        self.observer = observer
        self.stats = BatcherStats()
        self._queue: collections.deque[_Pending[T, R]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self.max_concurrent_runs = max_concurrent_runs
        self.predictor = WaitPredictor(max_concurrent_runs)
        self._clock = clock
        self._running: dict[int, tuple[float, int]] = {}  # per batch taken: (clock when taken, units)
        # One thread per concurrent run, shared with nothing else.
        self._executor = ThreadPoolExecutor(max_workers=max_concurrent_runs, thread_name_prefix=name)
        self._worker = asyncio.get_running_loop().create_task(self._work(), name=f"{name}-worker")

    @property
    def queue_size(self) -> int:
        return len(self._queue)

    def predicted_wait_s(self) -> float:
        """How long an item submitted now is predicted to wait before its run starts."""
        now = self._clock()
        running = [(now - started, units) for started, units in self._running.values()]
        return self.predictor.wait_s([p.units for p in self._queue], running)

    def check_admission(self, deadline: float | None = None, units: int = 0) -> None:
        """Raise what `submit` would raise at once for an item of `units` units (0: its own run unknown,
        only the wait counts): BatcherClosedError, QueueFullError (count or predicted wait over budget),
        DeadlineExceededError (deadline passed) or DeadlineUnmeetableError (before the predicted end)."""
        if self._closing:
            raise BatcherClosedError(f"{self.name} is shutting down")
        if len(self._queue) >= self.max_queue_size:
            self._drop("queue_full")
            wait_ms = None if self.predictor.s_per_unit is None else 1e3 * self.predicted_wait_s()
            wait = "" if wait_ms is None else f", predicted wait {wait_ms:.0f} ms"
            raise QueueFullError(f"{self.name} queue is full ({self.max_queue_size} items waiting{wait})")
        if self.max_queue_wait_s is None and deadline is None:
            return
        wait_s = self.predicted_wait_s()
        if self.max_queue_wait_s is not None and wait_s > self.max_queue_wait_s:
            self._drop("queue_wait")
            raise QueueFullError(f"{self.name} predicted queue wait is {1e3 * wait_s:.0f} ms, over its "
                                 f"{1e3 * self.max_queue_wait_s:.0f} ms budget ({len(self._queue)} items waiting)")
        if deadline is None:
            return
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            self._drop("expired")
            raise DeadlineExceededError("the deadline passed before the request was queued")
        end_s = wait_s + self.predictor.run_s(units)
        if end_s > left_s:
            self._drop("deadline")
            raise DeadlineUnmeetableError(f"{self.name} predicts {1e3 * end_s:.0f} ms to the answer ("
                                          f"{1e3 * wait_s:.0f} ms queue wait); the deadline is "
                                          f"{1e3 * left_s:.0f} ms away")

    async def submit(self, item: T, deadline: float | None = None) -> R:
        """The result of `item` from `run_batch`; raises its own exception, QueueFullError,
        DeadlineExceededError (DeadlineUnmeetableError) or BatcherClosedError."""
        size = 0 if self._size_of is None else self._size_of(item)
        units = 1 if self._size_of is None else size
        self.check_admission(deadline, units)
        now = time.monotonic()
        pending: _Pending[T, R] = _Pending(item, asyncio.get_running_loop().create_future(), deadline, now,
                                           size, units, self._urgent is not None and self._urgent(item))
        self._queue.append(pending)
        self._wakeup.set()
        try:
            if deadline is None:
                return await asyncio.shield(pending.future)
            async with asyncio.timeout(deadline - time.monotonic()):
                return await asyncio.shield(pending.future)
        except TimeoutError:
            if self._forget(pending):
                self._drop("expired")
            raise DeadlineExceededError("the deadline passed before the result was ready") from None
        except asyncio.CancelledError:
            if self._forget(pending):
                # gRPC cancels a call when its deadline passes, racing the timeout above: count it expired
                if deadline is not None and time.monotonic() >= deadline:
                    self._drop("expired")
                else:
                    self.stats.cancelled += 1
            raise

    def _drop(self, reason: DropReason) -> None:
        """Count an item that gets no run and tell the observer."""
        if reason == "queue_full":
            self.stats.rejected_queue_full += 1
        elif reason == "queue_wait":
            self.stats.rejected_queue_wait += 1
        elif reason == "deadline":
            self.stats.rejected_deadline += 1
        else:
            self.stats.expired += 1
        self._notify(DropRecord(reason))

    def _forget(self, pending: _Pending[T, R]) -> bool:
        """Take a caller's item out of the queue (True) or mark a running one as abandoned (False)."""
        pending.future.cancel()
        try:
            self._queue.remove(pending)
            return True
        except ValueError:
            return False

    async def close(self) -> None:
        """Stop taking items, finish the queued ones, stop the worker."""
        self._closing = True
        self._wakeup.set()
        await self._worker
        self._executor.shutdown(wait=True)

    async def _work(self) -> None:
        """Form a batch whenever fewer than `max_concurrent_runs` are running (with one, the next batch
        forms only after the last one finished, gathering what arrived meanwhile)."""
        free = asyncio.Semaphore(self.max_concurrent_runs)
        running: set[asyncio.Task[None]] = set()
        while True:
            await free.acquire()
            batch = await self._next_batch()
            if not batch:  # closed and drained (None), or every caller of this batch left or expired
                free.release()
                if batch is None:
                    break
                continue
            # In flight from now on for the wait prediction (out of the queue, not yet in its thread).
            self._running[id(batch)] = (self._clock(), sum(p.units for p in batch))
            task = asyncio.get_running_loop().create_task(self._run_guarded(batch))
            running.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(lambda _: free.release())
        await asyncio.gather(*running)

    async def _run_guarded(self, batch: list[_Pending[T, R]]) -> None:
        try:
            await self._run(batch)
        except Exception as e:  # a broken invariant: fail this batch's callers rather than hang them
            logger.exception("%s: internal error while running a batch of %d", self.name, len(batch))
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
        finally:
            del self._running[id(batch)]

    async def _next_batch(self) -> list[_Pending[T, R]] | None:
        """Wait for a first item, then up to the delay for more; None when closed and drained."""
        while not self._queue:
            if self._closing:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        close_at = self._queue[0].enqueued_at + self.max_queue_delay_s
        while (len(self._queue) < self.max_batch_size and not self._closing
               and not any(p.urgent for p in self._queue)):
            remaining = close_at - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                break
            if not self._queue:  # every waiting caller left
                break
        return self._take()

    def _take(self) -> list[_Pending[T, R]]:
        """Drop the queue's expired and abandoned items, then take the next batch out of it: the oldest
        items, or with `size_of` the oldest and its nearest sizes (`_similar`)."""
        now = time.monotonic()
        live: list[_Pending[T, R]] = []
        for p in self._queue:
            if p.future.done():  # cancelled caller: no work for someone who left
                continue
            if p.deadline is not None and p.deadline <= now:
                self._drop("expired")
                p.future.set_exception(DeadlineExceededError("the deadline passed while it was queued"))
                continue
            live.append(p)
        batch = live[: self.max_batch_size] if self._size_of is None else self._similar(live)
        taken = {id(p) for p in batch}
        self._queue = collections.deque(p for p in live if id(p) not in taken)
        return batch

    def _similar(self, live: list[_Pending[T, R]]) -> list[_Pending[T, R]]:
        """The oldest item and the items nearest its size among the `max_batch_size` oldest, in queue
        order: grown one neighbour (in size order) at a time, always the one that keeps the padding waste
        lower, while it stays within `max_padding_waste`."""
        if not live:
            return []
        by_size = sorted(live[: self.max_batch_size], key=lambda p: p.size)  # stable: equal sizes oldest first
        lo = next(k for k, p in enumerate(by_size) if p is live[0])
        hi = lo + 1  # the batch is by_size[lo:hi]
        total = largest = by_size[lo].size
        while hi - lo < self.max_batch_size:
            options: list[tuple[float, int]] = []  # (waste after adding, -1 smaller / +1 larger neighbour)
            if lo > 0:
                options.append((_waste(total + by_size[lo - 1].size, hi - lo + 1, largest), -1))
            if hi < len(by_size):
                options.append((_waste(total + by_size[hi].size, hi - lo + 1, by_size[hi].size), 1))
            if not options:
                break
            waste, side = min(options)
            if waste > self.max_padding_waste:
                break
            if side < 0:
                lo -= 1
                total += by_size[lo].size
            else:
                total += by_size[hi].size
                largest = by_size[hi].size
                hi += 1
        chosen = {id(p) for p in by_size[lo:hi]}
        return [p for p in live if id(p) in chosen]

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        try:
            results = await self._call(batch)
        except Exception as e:
            self.stats.failed_batches += 1
            logger.warning("%s: a batch of %d failed (%s); re-running its items one by one",
                           self.name, len(batch), type(e).__name__)
            results = []
            for p in batch:
                try:
                    results.extend(await self._call([p]))
                except Exception as item_error:
                    results.append(item_error)
        for p, result in zip(batch, results, strict=True):
            self.stats.items_done += 1
            if p.future.done():  # the caller left while its item ran
                continue
            if isinstance(result, Exception):
                p.future.set_exception(result)
            else:
                p.future.set_result(result)

    async def _call(self, batch: list[_Pending[T, R]]) -> Sequence[R | Exception]:
        items = [p.item for p in batch]
        self.stats.runs += 1
        self.stats.batch_sizes[len(items)] += 1
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        clock_started = self._clock()
        failed = True
        try:
            results = await loop.run_in_executor(self._executor, self._run_batch, items)
            if len(results) != len(items):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
            failed = False
            return results
        finally:
            compute_s = self._clock() - clock_started
            if not failed:  # a failed batch's time says nothing of the work (re-run one by one)
                self.predictor.observe(compute_s, sum(p.units for p in batch))
            sizes = tuple(p.size for p in batch) if self._size_of is not None else ()
            self._record(BatchRecord(len(items), tuple(started - p.enqueued_at for p in batch),
                                     compute_s, failed, sizes))

    def _record(self, record: BatchRecord) -> None:
        self.stats.queue_s_total += sum(record.queue_s)
        self.stats.compute_s_total += record.compute_s
        if record.sizes:
            self.stats.size_total += sum(record.sizes)
            self.stats.padded_size_total += len(record.sizes) * max(record.sizes)
        self._notify(record)

    def _notify(self, record: BatchRecord | DropRecord) -> None:
        if self.observer is not None:
            try:
                self.observer(record)
            except Exception:  # a broken metrics hook must not fail requests
                logger.exception("%s: batch observer failed", self.name)


def _waste(total: int, n: int, largest: int) -> float:
    """Padding share of a batch of n items of summed size `total`, padded to `largest`."""
    return 1.0 - total / (n * largest) if largest > 0 else 0.0

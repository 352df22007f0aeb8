"""Latency-aware admission: the wait prediction (server/admission.py) and the DynamicBatcher shedding on it
(predicted wait over budget -> QueueFullError, deadline before the predicted answer -> DeadlineUnmeetableError,
DropRecords for the metrics). Run times come from a fake clock that the batch function advances, so every
prediction is exact and no assertion depends on how busy the machine is. Then a real server on port 0:
Recognize (nui and Riva) shed before their audio is decoded, and the shed / expired counters on /metrics."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Sequence

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from riva.client.proto import riva_asr_pb2, riva_asr_pb2_grpc

from proto import speech_pb2, speech_pb2_grpc
from server.admission import WaitPredictor
from server.audio import AudioEncoding, AudioLimits
from server.batcher import (
    BatchRecord,
    DeadlineExceededError,
    DeadlineUnmeetableError,
    DropRecord,
    DynamicBatcher,
    QueueFullError,
)
from server.speech_ctc import DecodeOptions
from tests.server.conftest import Models, StartServer
from tests.server.helpers import wait_until, wrap_models


def test_predictor_is_an_ewma_of_seconds_per_unit() -> None:
    p = WaitPredictor(runs_at_once=1, alpha=0.5)
    assert p.wait_s([1000], [(0.0, 10)]) == 0.0 and p.run_s(10) == 0.0  # nothing measured yet: admit
    p.observe(run_s=0.2, units=10)  # 0.02 s per unit
    assert p.s_per_unit == pytest.approx(0.02)
    p.observe(run_s=0.4, units=10)  # 0.04 -> EWMA 0.5 * 0.02 + 0.5 * 0.04
    assert p.s_per_unit == pytest.approx(0.03)
    p.observe(run_s=1.0, units=0)  # no work: ignored
    assert p.s_per_unit == pytest.approx(0.03)


def test_predicted_wait_counts_queued_work_and_what_running_batches_have_left() -> None:
    p = WaitPredictor(runs_at_once=2)
    p.observe(run_s=0.12, units=32000)  # 32000 units: 0.12 s
    assert p.wait_s([], [(0.05, 32000)]) == 0.0  # a run slot is idle
    assert p.wait_s([], [(0.05, 32000), (0.10, 32000)]) == pytest.approx(0.02)  # 0.07 and 0.02 s left
    assert p.wait_s([], [(0.05, 32000), (0.50, 32000)]) == 0.0  # a run past its prediction: free any moment
    # queued items take the slot free soonest: [0.07, 0] -> [0.07, 0.12] -> [0.13, 0.12]
    assert p.wait_s([32000, 16000], [(0.05, 32000)]) == pytest.approx(0.12)
    assert p.wait_s([32000, 16000, 8000], [(0.05, 32000)]) == pytest.approx(0.13)
    with pytest.raises(ValueError, match="runs_at_once"):
        WaitPredictor(runs_at_once=0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TimedRun:
    """A run_batch that doubles ints and takes `s_per_unit` * units of fake time; held while `release` is clear."""

    def __init__(self, clock: FakeClock, s_per_unit: float, size_of: dict[int, int] | None = None) -> None:
        self.clock, self.s_per_unit, self.size_of = clock, s_per_unit, size_of or {}
        self.release, self.started = threading.Event(), threading.Event()
        self.release.set()
        self.seen: list[int] = []

    def __call__(self, items: list[int]) -> Sequence[int | Exception]:
        self.seen += items
        self.started.set()
        self.release.wait(5)
        self.clock.now += self.s_per_unit * sum(self.size_of.get(i, 1) for i in items)
        return [2 * i for i in items]


def _batcher(run: TimedRun, clock: FakeClock, **kwargs: object) -> DynamicBatcher[int, int]:
    settings: dict[str, object] = {"max_batch_size": 1, "max_queue_delay_ms": 0, "max_queue_size": 64,
                                   "max_queue_wait_ms": 25, "clock": clock, **kwargs}
    return DynamicBatcher(run, **settings)  # type: ignore[arg-type]


async def _hold(run: TimedRun, b: DynamicBatcher[int, int], item: int) -> asyncio.Task[int]:
    """Submit `item` and return once its run has started and holds the engine."""
    run.release.clear()
    run.started.clear()
    task = asyncio.create_task(b.submit(item))
    await asyncio.to_thread(run.started.wait, 5)
    return task


async def test_batcher_sheds_when_the_predicted_wait_exceeds_its_budget() -> None:
    clock = FakeClock()
    run = TimedRun(clock, s_per_unit=0.010)
    records: list[BatchRecord | DropRecord] = []
    b = _batcher(run, clock, observer=records.append, name="speech_ctc-v1")
    assert b.predicted_wait_s() == 0.0
    assert await b.submit(1) == 2  # measured: 10 ms per item
    assert b.predictor.s_per_unit == pytest.approx(0.010)
    running = await _hold(run, b, 2)  # predicted 10 ms left (the fake clock stands still meanwhile)
    queued = [asyncio.create_task(b.submit(i)) for i in (3,)]
    await asyncio.sleep(0)
    assert b.predicted_wait_s() == pytest.approx(0.020)  # 10 ms running + 10 ms queued: within 25 ms
    queued.append(asyncio.create_task(b.submit(4)))
    await asyncio.sleep(0)
    assert b.queue_size == 2 and b.predicted_wait_s() == pytest.approx(0.030)
    with pytest.raises(QueueFullError, match=r"speech_ctc-v1 predicted queue wait is 30 ms, over its 25 ms budget"):
        await b.submit(5)
    with pytest.raises(QueueFullError):
        b.check_admission()  # the same verdict without an item (before decoding)
    assert b.stats.rejected_queue_wait == 2 and b.stats.rejected_queue_full == 0
    clock.now += 0.006  # the held run is 6 ms in: 4 ms left, so 24 ms in all: admitted
    b.check_admission()
    run.release.set()
    assert await asyncio.gather(running, *queued) == [4, 6, 8]
    assert 5 not in run.seen
    assert [r.reason for r in records if isinstance(r, DropRecord)] == ["queue_wait", "queue_wait"]
    await b.close()


async def test_count_bound_still_applies_and_wait_bound_is_optional() -> None:
    clock = FakeClock()
    run = TimedRun(clock, s_per_unit=0.010)
    b = _batcher(run, clock, max_queue_size=1, max_queue_wait_ms=None)
    await b.submit(1)
    running = await _hold(run, b, 2)
    queued = asyncio.create_task(b.submit(3))
    await asyncio.sleep(0)
    with pytest.raises(QueueFullError, match=r"queue is full \(1 items waiting, predicted wait 20 ms\)"):
        await b.submit(4)
    assert b.stats.rejected_queue_full == 1 and b.stats.rejected_queue_wait == 0
    run.release.set()
    assert await asyncio.gather(running, queued) == [4, 6]
    await b.close()
    with pytest.raises(ValueError, match="max_queue_wait_ms"):
        DynamicBatcher(run, 1, 0, 1, max_queue_wait_ms=0)


async def test_a_deadline_before_the_predicted_answer_is_refused_at_once() -> None:
    clock = FakeClock()
    run = TimedRun(clock, s_per_unit=0.100)
    records: list[BatchRecord | DropRecord] = []
    b = _batcher(run, clock, max_queue_wait_ms=None, observer=records.append)
    await b.submit(1)  # 100 ms per item
    running = await _hold(run, b, 2)  # 100 ms left
    started = time.monotonic()
    with pytest.raises(DeadlineUnmeetableError, match=r"predicts 200 ms to the answer \(100 ms queue wait\)"):
        await b.submit(3, deadline=time.monotonic() + 0.150)  # wait 100 + own run 100 > 150 ms
    assert time.monotonic() - started < 0.150  # refused, not left to expire in the queue
    with pytest.raises(DeadlineExceededError):  # the subclass maps to DEADLINE_EXCEEDED
        b.check_admission(deadline=time.monotonic() + 0.050)  # the wait alone is 100 ms
    later = asyncio.create_task(b.submit(4, deadline=time.monotonic() + 30))  # plenty of time: queued
    await asyncio.sleep(0)
    run.release.set()
    assert await asyncio.gather(running, later) == [4, 8]
    assert 3 not in run.seen and b.stats.rejected_deadline == 2 and b.stats.expired == 0
    assert [r.reason for r in records if isinstance(r, DropRecord)] == ["deadline", "deadline"]
    await b.close()


async def test_wait_is_predicted_per_unit_of_size_and_run_slot() -> None:
    clock = FakeClock()
    sizes = {1: 1000, 2: 1000, 3: 4000, 4: 1000, 5: 1000}
    run = TimedRun(clock, s_per_unit=1e-5, size_of=sizes)  # 10 ms per 1000 units (samples)
    b = _batcher(run, clock, size_of=sizes.__getitem__, max_concurrent_runs=2, max_queue_wait_ms=15)
    await b.submit(1)
    assert b.predictor.s_per_unit == pytest.approx(1e-5)
    running = await _hold(run, b, 2)  # 10 ms left on one of two run slots
    assert b.predicted_wait_s() == 0.0  # the other slot is idle
    long = asyncio.create_task(b.submit(3))  # 4000 units: 40 ms in the idle slot
    await asyncio.sleep(0)
    assert b.predicted_wait_s() == pytest.approx(0.010)  # slots free after 10 and 40 ms
    short = asyncio.create_task(b.submit(4))  # after item 2: 20 ms
    await asyncio.sleep(0)
    assert b.predicted_wait_s() == pytest.approx(0.020)
    with pytest.raises(QueueFullError, match="predicted queue wait is 20 ms, over its 15 ms budget"):
        await b.submit(5)
    run.release.set()
    assert await asyncio.gather(running, long, short) == [4, 6, 8]
    await b.close()


async def test_expired_items_are_reported_to_the_observer() -> None:
    clock = FakeClock()
    run = TimedRun(clock, s_per_unit=0.0)
    records: list[BatchRecord | DropRecord] = []
    b = _batcher(run, clock, max_queue_wait_ms=None, observer=records.append)
    running = await _hold(run, b, 1)
    with pytest.raises(DeadlineExceededError):
        await b.submit(7, deadline=time.monotonic() + 0.02)  # nothing measured: queued, then expires
    with pytest.raises(DeadlineExceededError):
        await b.submit(8, deadline=time.monotonic() - 1)
    run.release.set()
    await running
    assert [r.reason for r in records if isinstance(r, DropRecord)] == ["expired", "expired"]
    assert b.stats.expired == 2 and run.seen == [1]
    await b.close()



async def test_a_caller_cancelled_after_its_deadline_counts_as_expired() -> None:
    """gRPC cancels a call when its deadline passes, racing the batcher's own timeout: a cancellation after
    the deadline is an expiry; one before it is the caller leaving."""
    clock = FakeClock()
    run = TimedRun(clock, s_per_unit=0.0)
    records: list[BatchRecord | DropRecord] = []
    b = _batcher(run, clock, max_queue_wait_ms=None, observer=records.append)
    running = await _hold(run, b, 1)
    late = asyncio.create_task(b.submit(7, deadline=time.monotonic() + 0.05))
    left = asyncio.create_task(b.submit(8, deadline=time.monotonic() + 30))
    await asyncio.sleep(0)  # both queued
    time.sleep(0.06)  # the loop stalls past item 7's deadline; the cancellations come before its timer
    late.cancel()
    left.cancel()
    for task in (late, left):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert b.stats.expired == 1 and b.stats.cancelled == 1 and b.queue_size == 0
    assert [r.reason for r in records if isinstance(r, DropRecord)] == ["expired"]
    run.release.set()
    await running
    assert run.seen == [1]
    await b.close()

def _metric(port: int, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and s.labels == labels)


async def test_server_sheds_before_decoding_and_counts_what_it_drops(start: StartServer, tiny_models: Models,
                                                                     clips: list[bytes]) -> None:
    server = await start(models=wrap_models(tiny_models, delay_s=0.5), max_batch_size=1, max_queue_delay_ms=0,
                         max_queue_wait_ms=100, metrics_port=0)
    served = server.served["speech_ctc"][1]
    batcher = served.batcher
    async with grpc.aio.insecure_channel(server.address) as channel:
        speech = speech_pb2_grpc.SpeechStub(channel)
        riva = riva_asr_pb2_grpc.RivaSpeechRecognitionStub(channel)
        running = asyncio.ensure_future(speech.Recognize(speech_pb2.RecognizeRequest(audio=clips[0]), timeout=10))
        await wait_until(lambda: batcher.stats.runs == 1)
        batcher.predictor.s_per_unit = 1.0  # a second per sample: the running clip has hours left
        # Garbage audio would be INVALID_ARGUMENT once decoded: RESOURCE_EXHAUSTED shows it was never decoded
        with pytest.raises(grpc.aio.AioRpcError) as shed:
            await speech.Recognize(speech_pb2.RecognizeRequest(audio=b"not audio"), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as shed_riva:
            await riva.Recognize(riva_asr_pb2.RecognizeRequest(audio=b"not audio"), timeout=10)
        batcher.max_queue_wait_s = None  # no wait budget: the caller's deadline decides
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as unmeetable:
            await speech.Recognize(speech_pb2.RecognizeRequest(audio=clips[1]), timeout=5)
        refused_s = time.monotonic() - started
        batcher.predictor.s_per_unit = None  # nothing to predict from: queued, then expires behind the run
        utterance = served.model.prepare(clips[2], AudioEncoding.AUTO, 0, DecodeOptions(), AudioLimits(), "id-x")
        with pytest.raises(DeadlineExceededError):
            await batcher.submit(utterance, deadline=time.monotonic() + 0.05)
        await running
    for error in (shed, shed_riva):
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "speech_ctc-v1 predicted queue wait is" in (error.value.details() or "")
    assert unmeetable.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and refused_s < 4
    assert "the deadline is" in (unmeetable.value.details() or "")
    assert batcher.stats.runs == 1  # only the first call reached the engine
    port, model = server.metrics_port, {"model": "speech_ctc", "version": "1"}
    assert port is not None
    shed_by_reason = {reason: await asyncio.to_thread(_metric, port, "nui_shed_requests_total", **model,
                                                       reason=reason)
                      for reason in ("queue_full", "queue_wait", "deadline")}
    assert shed_by_reason == {"queue_full": 0, "queue_wait": 2, "deadline": 1}
    assert await asyncio.to_thread(_metric, port, "nui_expired_requests_total", **model) == 1


async def test_a_call_expired_in_the_queue_is_counted_on_metrics(start: StartServer, tiny_models: Models,
                                                                 clips: list[bytes]) -> None:
    """A call whose deadline passes while it is queued is counted expired on /metrics (whichever comes
    first, gRPC's cancellation or the batcher's timeout) and never reaches the engine."""
    server = await start(models=wrap_models(tiny_models, delay_s=0.6), max_batch_size=1, max_queue_delay_ms=0,
                         metrics_port=0)
    batcher = server.served["speech_ctc"][1].batcher
    async with grpc.aio.insecure_channel(server.address) as channel:
        speech = speech_pb2_grpc.SpeechStub(channel)
        running = asyncio.ensure_future(speech.Recognize(speech_pb2.RecognizeRequest(audio=clips[0]), timeout=10))
        await wait_until(lambda: batcher.stats.runs == 1)  # nothing measured yet: the next call is queued
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await speech.Recognize(speech_pb2.RecognizeRequest(audio=clips[1]), timeout=0.2)
        await running
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_until(lambda: batcher.stats.expired + batcher.stats.cancelled == 1)
    assert batcher.stats.expired == 1 and batcher.stats.cancelled == 0 and batcher.stats.runs == 1
    assert server.metrics_port is not None
    model = {"model": "speech_ctc", "version": "1"}
    assert await asyncio.to_thread(_metric, server.metrics_port, "nui_expired_requests_total", **model) == 1

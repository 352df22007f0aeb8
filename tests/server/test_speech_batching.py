"""The speech batcher a real server builds: batches of similar clip lengths, and with ONNX Runtime's
threads left to the server (no intra_op_threads) one batch running per core on one thread each;
transcripts stay those of one-by-one runs."""

from __future__ import annotations

import asyncio
import os

import grpc

from proto import speech_pb2, speech_pb2_grpc
from server.speech_ctc import SpeechCTCModel
from tests.server.conftest import StartServer


async def test_auto_threads_run_a_batch_per_core_and_transcripts_match(start: StartServer,
                                                                       clips: list[bytes]) -> None:
    reference = await start(max_batch_size=1, max_queue_delay_ms=0)  # intra_op_threads=1: one run at a time
    server = await start(intra_op_threads=None, max_batch_size=16, max_queue_delay_ms=50)
    batcher = server.served["speech_ctc"][1].batcher
    assert reference.served["speech_ctc"][1].batcher.max_concurrent_runs == 1
    assert batcher.max_concurrent_runs == max(1, min(4, os.cpu_count() or 1))
    assert batcher.max_padding_waste == SpeechCTCModel.max_padding_waste
    requests = [speech_pb2.RecognizeRequest(config=speech_pb2.RecognitionConfig(enable_word_time_offsets=True),
                                            audio=clips[i % 8]) for i in range(16)]
    async with grpc.aio.insecure_channel(reference.address) as a, grpc.aio.insecure_channel(server.address) as b:
        alone = [await speech_pb2_grpc.SpeechStub(a).Recognize(r, timeout=20) for r in requests[:8]]
        batched = await asyncio.gather(*(speech_pb2_grpc.SpeechStub(b).Recognize(r, timeout=20) for r in requests))
    for i, response in enumerate(batched):
        got, want = response.results[0].alternatives[0], alone[i % 8].results[0].alternatives[0]
        assert got.transcript == want.transcript and list(got.words) == list(want.words)
        assert abs(got.confidence - want.confidence) < 1e-5  # float sums over a padded batch
    stats = batcher.stats
    assert stats.items_done == 16 and stats.runs < 16  # clips shared runs
    assert stats.padding_waste <= SpeechCTCModel.max_padding_waste  # 0.4-1.45 s clips, never one padded run

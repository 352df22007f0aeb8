"""`Recognize` through a real grpc.aio server on port 0 with a tiny exported model."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from proto import speech_pb2, speech_pb2_grpc
from tests.server.conftest import Models, StartServer
from tests.server.helpers import encode, make_clip, pcm16, wait_until, wrap_models


@pytest.fixture
async def channel_to() -> AsyncIterator[object]:
    channels: list[grpc.aio.Channel] = []

    def _open(address: str) -> speech_pb2_grpc.SpeechStub:
        channels.append(grpc.aio.insecure_channel(address))
        return speech_pb2_grpc.SpeechStub(channels[-1])

    yield _open
    for c in channels:
        await c.close()


def _request(audio: bytes, **config: object) -> speech_pb2.RecognizeRequest:
    return speech_pb2.RecognizeRequest(config=speech_pb2.RecognitionConfig(**config), audio=audio)  # type: ignore[arg-type]


async def test_recognize_returns_a_transcript(start: StartServer, channel_to, clips: list[bytes],
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = await start()
    stub = channel_to(server.address)
    request = _request(clips[3], enable_word_time_offsets=True)
    request.request_id = "my-id-1"
    response = await stub.Recognize(request, timeout=10)
    assert (response.model, response.model_version, response.request_id) == ("speech_ctc", 1, "my-id-1")
    assert response.audio_duration_s == pytest.approx(0.85, abs=1e-3)
    [result] = response.results
    [alt] = result.alternatives
    assert isinstance(alt.transcript, str) and 0 < alt.confidence <= 1
    assert [w.word for w in alt.words] == alt.transcript.split()
    generated = await stub.Recognize(_request(clips[0]), timeout=10)
    assert len(generated.request_id) == 16 and not generated.results[0].alternatives[0].words
    assert "request my-id-1: OK" in caplog.text
    assert alt.transcript and alt.transcript not in caplog.text  # sizes and ids only, never text


async def test_concurrent_calls_are_batched_and_match_unbatched(start: StartServer, channel_to,
                                                                 clips: list[bytes]) -> None:
    server = await start(max_batch_size=16, max_queue_delay_ms=50)
    stub = channel_to(server.address)
    stats = server.served["speech_ctc"][1].batcher.stats
    requests = [_request(clips[i % 8], enable_word_time_offsets=True) for i in range(16)]
    together = await asyncio.gather(*(stub.Recognize(r, timeout=20) for r in requests))
    assert stats.runs < 16 and sum(stats.batch_sizes.values()) == stats.runs
    runs = stats.runs
    for request, batched in zip(requests[:8], together, strict=False):
        alone = await stub.Recognize(request, timeout=10)
        a, b = alone.results[0].alternatives[0], batched.results[0].alternatives[0]
        assert a.transcript == b.transcript and list(a.words) == list(b.words)
        assert a.confidence == pytest.approx(b.confidence, abs=1e-5)
    assert stats.runs == runs + 8 and stats.batch_sizes[1] >= 8


async def test_linear_pcm_and_resampled_input(start: StartServer, channel_to) -> None:
    server = await start()
    stub = channel_to(server.address)
    clip = make_clip(0.6, seed=3)
    from_wav = await stub.Recognize(_request(encode(clip)), timeout=10)
    from_pcm = await stub.Recognize(_request(pcm16(clip), encoding=speech_pb2.LINEAR_PCM,
                                             sample_rate_hertz=16000), timeout=10)
    assert from_pcm.results[0].alternatives[0].transcript == from_wav.results[0].alternatives[0].transcript
    at_8k = await stub.Recognize(_request(encode(make_clip(0.6, seed=3, sample_rate_hz=8000), 8000)),
                                 timeout=10)
    assert at_8k.audio_duration_s == pytest.approx(0.6)
    stereo = await stub.Recognize(_request(encode(make_clip(0.6, seed=3, channels=2))), timeout=10)
    assert stereo.results[0].alternatives[0].transcript == from_wav.results[0].alternatives[0].transcript


BAD_INPUTS: list[tuple[str, bytes, dict[str, Any], grpc.StatusCode, str]] = [
    ("empty", b"", {}, grpc.StatusCode.INVALID_ARGUMENT, "audio is empty"),
    ("garbage", b"not audio at all " * 64, {}, grpc.StatusCode.INVALID_ARGUMENT,
     "audio could not be decoded with encoding ENCODING_UNSPECIFIED"),
    ("pcm without rate", b"\x00\x01" * 4000, {"encoding": speech_pb2.LINEAR_PCM},
     grpc.StatusCode.INVALID_ARGUMENT, "config.sample_rate_hertz is required"),
    ("odd bytes", b"\x00" * 8001, {"encoding": speech_pb2.LINEAR_PCM, "sample_rate_hertz": 16000},
     grpc.StatusCode.INVALID_ARGUMENT, "audio has 8001 bytes"),
    ("4 kHz", b"\x00\x01" * 4000, {"encoding": speech_pb2.LINEAR_PCM, "sample_rate_hertz": 4000},
     grpc.StatusCode.INVALID_ARGUMENT, "config.sample_rate_hertz is 4000 Hz; allowed: 8000..48000 Hz"),
    ("too long", encode(make_clip(2.5, seed=0)), {}, grpc.StatusCode.OUT_OF_RANGE,
     "audio is 2.50 s long; the limit is 2 s"),
    ("too short", encode(make_clip(0.01, seed=0)), {}, grpc.StatusCode.INVALID_ARGUMENT,
     "audio is 0.010 s long"),
    ("unknown model", encode(make_clip(0.5, seed=0)), {"model": "klingon"}, grpc.StatusCode.NOT_FOUND,
     "config.model 'klingon' is not loaded; loaded models: ['speech_ctc']"),
    ("unknown version", encode(make_clip(0.5, seed=0)), {"model_version": 9}, grpc.StatusCode.NOT_FOUND,
     "config.model_version 9 of 'speech_ctc' is not loaded; loaded versions: [1]"),
    ("no LM", encode(make_clip(0.5, seed=0)), {"decoder": speech_pb2.DECODER_BEAM_LM},
     grpc.StatusCode.INVALID_ARGUMENT, "config.decoder asks for the language model"),
    ("unknown encoding", encode(make_clip(0.5, seed=0)), {"encoding": 7}, grpc.StatusCode.INVALID_ARGUMENT,
     "config.encoding 7 is not an AudioEncoding"),
]


async def test_bad_inputs_get_the_right_code(start: StartServer, channel_to) -> None:
    server = await start(max_audio_s=2.0)
    stub = channel_to(server.address)
    for name, audio, config, code, message in BAD_INPUTS:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Recognize(_request(audio, **config), timeout=10)
        assert (e.value.code(), name) == (code, name)
        assert message in (e.value.details() or ""), name
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Recognize(speech_pb2.RecognizeRequest(audio=BAD_INPUTS[-1][1], request_id="x" * 200))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (e.value.details() or "").startswith("request_id must be at most 128 printable characters")
    assert server.served["speech_ctc"][1].batcher.stats.runs == 0  # all rejected before the queue


async def test_oversized_message_is_refused(start: StartServer, channel_to) -> None:
    server = await start(max_message_bytes=64 * 1024)
    stub = channel_to(server.address)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Recognize(_request(encode(make_clip(3.0, seed=0))), timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_failing_item_leaves_its_batch_mates_intact(start: StartServer, channel_to,
                                                            tiny_models: Models, clips: list[bytes]) -> None:
    expected_server = await start()
    expected = [await channel_to(expected_server.address).Recognize(_request(c), timeout=10) for c in clips]
    poison = make_clip(0.77, seed=9)
    # a full batch of 5 runs at once; the long delay only guarantees the 5 calls share it
    server = await start(models=wrap_models(tiny_models, poison_samples=len(poison)), max_batch_size=5,
                         max_queue_delay_ms=5000)
    server.served["speech_ctc"][1].batcher.max_padding_waste = 1.0  # one batch whatever the clips' lengths
    stub = channel_to(server.address)
    calls = [stub.Recognize(_request(c), timeout=20) for c in clips[:4]]
    calls.insert(2, stub.Recognize(_request(encode(poison)), timeout=20))
    results = await asyncio.gather(*calls, return_exceptions=True)
    bad = results.pop(2)
    assert isinstance(bad, grpc.aio.AioRpcError) and bad.code() == grpc.StatusCode.INTERNAL
    assert bad.details().startswith("internal error (request id ")  # generic; details only in the log
    for got, want in zip(results, expected[:4], strict=True):
        assert isinstance(got, speech_pb2.RecognizeResponse)
        assert got.results[0].alternatives[0].transcript == want.results[0].alternatives[0].transcript
    stats = server.served["speech_ctc"][1].batcher.stats
    assert stats.failed_batches == 1 and stats.batch_sizes[5] == 1 and stats.batch_sizes[1] == 5


async def test_deadline_is_honoured_while_queued(start: StartServer, channel_to, tiny_models: Models,
                                                 clips: list[bytes]) -> None:
    server = await start(models=wrap_models(tiny_models, delay_s=0.6), max_batch_size=1, max_queue_delay_ms=0)
    stub = channel_to(server.address)
    stats = server.served["speech_ctc"][1].batcher.stats
    busy = asyncio.ensure_future(stub.Recognize(_request(clips[0]), timeout=10))
    await wait_until(lambda: stats.runs == 1)  # the first call occupies the engine for 0.6 s
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Recognize(_request(clips[1]), timeout=0.2)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await busy
    assert stats.runs == 1  # the expired request never reached the engine
    assert stats.expired + stats.cancelled == 1


async def test_full_queue_is_resource_exhausted(start: StartServer, channel_to, tiny_models: Models,
                                                clips: list[bytes]) -> None:
    server = await start(models=wrap_models(tiny_models, delay_s=0.4), max_batch_size=1, max_queue_delay_ms=0,
                         max_queue_size=1)
    stub = channel_to(server.address)
    batcher = server.served["speech_ctc"][1].batcher
    running = asyncio.ensure_future(stub.Recognize(_request(clips[0]), timeout=10))
    await wait_until(lambda: batcher.stats.runs == 1)
    queued = asyncio.ensure_future(stub.Recognize(_request(clips[1]), timeout=10))
    await wait_until(lambda: batcher.queue_size == 1)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Recognize(_request(clips[2]), timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full" in (e.value.details() or "")
    await asyncio.gather(running, queued)
    assert batcher.stats.runs == 2 and batcher.stats.rejected_queue_full == 1

"""StreamingRecognize over a real grpc.aio server with a tiny-streaming engine (random weights):
streamed transcript == offline transcript, batch dispatch across streams, interim then final,
endpointing, protocol errors, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest

from models.ctc_text import greedy_decode, greedy_word_timings
from proto import speech_pb2, speech_pb2_grpc
from server.app import SpeechServer
from server.errors import RequestError
from server.repository import load_speech_models, load_task_models
from server.streaming import (
    ChunkJob,
    ChunkOutput,
    RecognitionStream,
    StreamLimits,
    StreamOptions,
)
from tests.server.conftest import StartServer
from tests.server.helpers import SAMPLE_RATE_HZ, encode, make_clip, pcm16, wait_until

CHUNK_BYTES = 2 * 1600  # 100 ms of 16 kHz int16, on purpose not the engine's 120 ms chunk


def _config(**kw: object) -> speech_pb2.RecognitionConfig:
    settings: dict[str, object] = {"encoding": speech_pb2.LINEAR_PCM, "sample_rate_hertz": SAMPLE_RATE_HZ, **kw}
    return speech_pb2.RecognitionConfig(**settings)  # type: ignore[arg-type]


def _split(data: bytes, size: int = CHUNK_BYTES) -> list[bytes]:
    return [data[i: i + size] for i in range(0, len(data), size)]


async def _requests(first: Sequence[speech_pb2.StreamingRecognizeRequest], chunks: Sequence[bytes],
                    pace_s: float = 0.0) -> AsyncIterator[speech_pb2.StreamingRecognizeRequest]:
    for r in first:
        yield r
    for c in chunks:
        if pace_s:
            await asyncio.sleep(pace_s)
        yield speech_pb2.StreamingRecognizeRequest(audio=c)


async def _stream(server: SpeechServer, config: speech_pb2.RecognitionConfig, chunks: Sequence[bytes],
                  pace_s: float = 0.0) -> list[speech_pb2.StreamingRecognizeResponse]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = speech_pb2_grpc.SpeechStub(channel).StreamingRecognize(
            _requests([speech_pb2.StreamingRecognizeRequest(config=config, request_id="s-1")], chunks, pace_s))
        return [r async for r in call]


async def _code(server: SpeechServer, first: Sequence[speech_pb2.StreamingRecognizeRequest],
                chunks: Sequence[bytes] = ()) -> tuple[grpc.StatusCode, str]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = speech_pb2_grpc.SpeechStub(channel).StreamingRecognize(_requests(first, chunks))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for _ in call:
                pass
        return e.value.code(), e.value.details() or ""


def _finals(responses: list[speech_pb2.StreamingRecognizeResponse]) -> list[speech_pb2.SpeechRecognitionResult]:
    return [r for resp in responses for r in resp.results if r.is_final]


def _offline_log_probs(clip: np.ndarray) -> np.ndarray:
    """The torch offline forward of the same weights the streaming_repo fixture exported."""
    torch = pytest.importorskip("torch")
    from models.speech_ctc import build, get_preset

    torch.manual_seed(0)
    model = build(get_preset("tiny-streaming")).eval()
    x = torch.from_numpy(np.frombuffer(pcm16(clip), "<i2").astype(np.float32) / 32768.0)
    with torch.no_grad():
        lp, n = model(x[None], torch.tensor([len(x)]))
    return lp[0, : int(n[0])].numpy()


async def test_streamed_transcript_and_word_times_equal_the_offline_forward(
        start: StartServer, streaming_repo: Path) -> None:
    server = await start(repo=streaming_repo)
    clip = make_clip(2.3, seed=4)
    config = _config(enable_word_time_offsets=True, endpointing=speech_pb2.EndpointingConfig(disabled=True))
    responses = await _stream(server, config, _split(pcm16(clip)))
    [final] = _finals(responses)
    offline = _offline_log_probs(clip)
    want = greedy_decode(offline)
    assert want, "the seeded random model should emit some characters"
    assert final.alternatives[0].transcript == want
    got_words = [(w.word, round(w.start_s, 3), round(w.end_s, 3)) for w in final.alternatives[0].words]
    assert got_words == [(w.word, round(w.start_s, 3), round(w.end_s, 3))
                         for w in greedy_word_timings(offline, 0.02)]
    assert responses[-1].model == "speech_ctc_streaming" and responses[-1].model_version == 1
    assert responses[-1].request_id == "s-1"
    assert responses[-1].audio_processed_s == pytest.approx(2.3, abs=1e-3)
    assert final.result_end_s == pytest.approx(len(offline) * 0.02, abs=1e-4)


async def test_concurrent_streams_share_engine_runs(start: StartServer, streaming_repo: Path) -> None:
    server = await start(repo=streaming_repo, max_queue_delay_ms=20.0)
    batcher = server.streaming["speech_ctc_streaming"][1].batcher
    runs_before, done_before = batcher.stats.runs, batcher.stats.items_done
    clips = [make_clip(1.2 + 0.1 * i, seed=i) for i in range(6)]
    config = _config(endpointing=speech_pb2.EndpointingConfig(disabled=True))
    results = await asyncio.gather(*(_stream(server, config, _split(pcm16(c)), pace_s=0.01) for c in clips))
    chunks_run = batcher.stats.items_done - done_before
    runs = batcher.stats.runs - runs_before
    assert chunks_run >= 6 * 11  # >= 1.2 s / 0.12 s chunks each, plus flushes
    assert runs < chunks_run / 2, f"{runs} engine runs for {chunks_run} chunks"
    for clip, responses in zip(clips, results, strict=True):  # and batching changed nobody's result
        [final] = _finals(responses)
        assert final.alternatives[0].transcript == greedy_decode(_offline_log_probs(clip))


async def test_interim_results_come_before_the_final(start: StartServer, streaming_repo: Path) -> None:
    server = await start(repo=streaming_repo)
    clip = make_clip(2.3, seed=4)
    config = _config(interim_results=True, endpointing=speech_pb2.EndpointingConfig(disabled=True))
    responses = await _stream(server, config, _split(pcm16(clip)))
    results = [r for resp in responses for r in resp.results]
    interims = [r for r in results if not r.is_final]
    assert interims and results[-1].is_final and all(not r.is_final for r in results[:-1])
    assert all(0.0 <= r.stability <= 1.0 for r in interims) and results[-1].stability == 1.0
    ends = [r.result_end_s for r in results]
    assert ends == sorted(ends)  # interims cover ever more audio
    assert results[-1].alternatives[0].transcript.startswith(interims[0].alternatives[0].transcript.split()[0])


async def test_endpointing_splits_utterances_at_silence(start: StartServer, streaming_repo: Path) -> None:
    server = await start(repo=streaming_repo)
    silence = np.zeros(int(1.0 * SAMPLE_RATE_HZ), np.float32)
    audio = np.concatenate([make_clip(1.0, seed=1), silence, make_clip(0.8, seed=2), silence[:3200]])
    config = _config(endpointing=speech_pb2.EndpointingConfig(silence_ms=300))
    finals = _finals(await _stream(server, config, _split(pcm16(audio))))
    assert len(finals) == 2
    first, second = finals
    # the first utterance ends 300 ms into the silence (to a 20 ms frame), the second starts there
    assert first.result_start_s == 0.0 and first.result_end_s == pytest.approx(1.3, abs=0.021)
    assert second.result_start_s == first.result_end_s and second.result_end_s > 2.7


async def test_protocol_errors_get_their_codes(start: StartServer, streaming_repo: Path) -> None:
    server = await start(repo=streaming_repo)
    cfg = speech_pb2.StreamingRecognizeRequest(config=_config())
    audio = pcm16(make_clip(0.5, seed=0))

    code, msg = await _code(server, [speech_pb2.StreamingRecognizeRequest(audio=audio)])
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "config" in msg
    code, msg = await _code(server, [cfg, speech_pb2.StreamingRecognizeRequest(audio=audio), cfg])
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "config" in msg and "first" in msg
    code, msg = await _code(server, [speech_pb2.StreamingRecognizeRequest(config=_config(sample_rate_hertz=4000))])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "config.sample_rate_hertz" in msg
    code, msg = await _code(server, [speech_pb2.StreamingRecognizeRequest(
        config=_config(encoding=speech_pb2.ENCODING_UNSPECIFIED))])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "config.encoding ENCODING_UNSPECIFIED" in msg
    code, msg = await _code(server, [cfg], [pcm16(make_clip(6.0, seed=0))])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "per message" in msg
    code, msg = await _code(server, [cfg], [audio[:-1]])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "whole samples" in msg
    code, msg = await _code(server, [speech_pb2.StreamingRecognizeRequest(config=_config(model="nope"))])
    assert code == grpc.StatusCode.NOT_FOUND and "nope" in msg
    code, msg = await _code(server, [speech_pb2.StreamingRecognizeRequest(
        config=_config(endpointing=speech_pb2.EndpointingConfig(silence_ms=20)))])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "endpointing.silence_ms" in msg
    code, msg = await _code(server, [])
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert server.streams.in_flight == 0
    # a good stream right after the bad ones still works
    assert _finals(await _stream(server, _config(), _split(audio)))


async def test_no_streaming_model_is_a_clear_unavailable(start: StartServer, tiny_repo: Path) -> None:
    server = await start(models=load_speech_models(tiny_repo, intra_op_threads=1))
    code, msg = await _code(server, [speech_pb2.StreamingRecognizeRequest(config=_config())])
    assert code == grpc.StatusCode.UNAVAILABLE and "speech_ctc_streaming" in msg


async def test_cancel_frees_the_stream(start: StartServer, streaming_repo: Path) -> None:
    server = await start(repo=streaming_repo)
    gate = asyncio.Event()

    async def requests() -> AsyncIterator[speech_pb2.StreamingRecognizeRequest]:
        yield speech_pb2.StreamingRecognizeRequest(config=_config())
        yield speech_pb2.StreamingRecognizeRequest(audio=pcm16(make_clip(0.5, seed=0)))
        await gate.wait()  # never set: the client walks away mid-stream

    async with grpc.aio.insecure_channel(server.address) as channel:
        call = speech_pb2_grpc.SpeechStub(channel).StreamingRecognize(requests())
        await wait_until(lambda: server.streams.in_flight == 1)
        call.cancel()
        await wait_until(lambda: server.streams.in_flight == 0)
    assert server.streams.started >= 1
    assert server.streaming["speech_ctc_streaming"][1].batcher.queue_size == 0


async def test_stream_longer_than_the_limit_is_out_of_range(streaming_repo: Path) -> None:
    model = load_task_models(streaming_repo, "speech_ctc_streaming", 1)["speech_ctc_streaming"][1]

    async def submit(job: ChunkJob) -> ChunkOutput:
        [out] = model.run_batch([job])
        assert isinstance(out, ChunkOutput)
        return out

    stream = RecognitionStream(model, submit, StreamOptions(SAMPLE_RATE_HZ), StreamLimits(max_stream_s=1.0), "x")
    await stream.feed(pcm16(make_clip(0.8, seed=0)))
    with pytest.raises(RequestError) as e:
        await stream.feed(pcm16(make_clip(0.3, seed=0)))
    assert e.value.code == grpc.StatusCode.OUT_OF_RANGE


async def test_resampled_float_stream_is_accepted(start: StartServer, streaming_repo: Path) -> None:
    server = await start(repo=streaming_repo)
    clip = make_clip(1.0, seed=3, sample_rate_hz=8000)
    config = _config(encoding=speech_pb2.LINEAR_FLOAT32, sample_rate_hertz=8000)
    responses = await _stream(server, config, _split(clip.astype("<f4").tobytes(), 3200))
    assert len(_finals(responses)) == 1 and responses[-1].audio_processed_s == pytest.approx(1.0)


async def test_nui_transcribe_stream_prints_interims_then_the_final(
        start: StartServer, streaming_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from server.transcribe import main

    server = await start(repo=streaming_repo)
    clip = make_clip(2.3, seed=4)
    path = tmp_path / "clip.wav"
    path.write_bytes(encode(clip))
    args = [str(path), "--server", server.address, "--stream", "--no-pace", "--chunk-ms", "50"]
    assert await asyncio.to_thread(main, args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("~ ") and lines[-1] == greedy_decode(_offline_log_probs(clip))
    assert main([str(path), "--stream"]) == 1
    assert "--stream needs --server" in capsys.readouterr().err


@pytest.fixture
def streaming_lm_repo(streaming_repo: Path, lm_repo: Path, tmp_path: Path) -> Path:
    """The streaming model with the 3-gram LM and beam options of `lm_repo` in its manifest."""
    import dataclasses
    import shutil

    from engines.manifest import read_manifest, sha256_file, write_manifest

    repo = tmp_path / "repo"
    shutil.copytree(lm_repo / "speech_ctc", repo / "speech_ctc")
    folder = repo / "speech_ctc_streaming" / "1"
    shutil.copytree(streaming_repo / "speech_ctc_streaming" / "1", folder)
    lm = read_manifest(lm_repo / "speech_ctc" / "1")
    for name in ("lm.arpa", "unigrams.txt"):
        shutil.copyfile(lm_repo / "speech_ctc" / "1" / name, folder / name)
    manifest = read_manifest(folder)
    write_manifest(folder, dataclasses.replace(
        manifest, files={**manifest.files, **{n: sha256_file(folder / n) for n in ("lm.arpa", "unigrams.txt")}},
        extras={**manifest.extras, "lm": lm.extras["lm"], "decoder": lm.extras["decoder"]}))
    return repo


async def test_finals_use_the_lm_and_interims_stay_greedy(start: StartServer, streaming_lm_repo: Path) -> None:
    # the utterance decoded whole at its end (piece by piece it is server/stream_pieces.py's tests)
    server = await start(repo=streaming_lm_repo, stream_lm_lookahead_s=0.0)
    model = server.streaming["speech_ctc_streaming"][1].model
    assert model.lm_decoder is not None
    clip = make_clip(2.3, seed=4)
    offline = _offline_log_probs(clip)
    config = _config(interim_results=True, endpointing=speech_pb2.EndpointingConfig(disabled=True))
    results = [r for resp in await _stream(server, config, _split(pcm16(clip))) for r in resp.results]
    [want] = model.lm_decoder.decode(offline, 0.02, words=False, max_alternatives=1)
    assert results[-1].is_final and results[-1].alternatives[0].transcript == want.transcript
    assert want.transcript != greedy_decode(offline)  # so the check above tells LM from greedy
    interims = [r.alternatives[0].transcript for r in results if not r.is_final]
    assert interims and greedy_decode(offline).startswith(interims[-1])
    greedy = _config(decoder=speech_pb2.DECODER_GREEDY, endpointing=speech_pb2.EndpointingConfig(disabled=True))
    [final] = _finals(await _stream(server, greedy, _split(pcm16(clip))))
    assert final.alternatives[0].transcript == greedy_decode(offline)


def test_energy_endpointer_ends_after_silence_whatever_the_message_sizes() -> None:
    from server.endpointing import EndpointOptions, EnergyEndpointer

    silence = np.zeros(8000, np.float32)
    audio = np.concatenate([silence, make_clip(0.5, seed=1), silence, make_clip(0.3, seed=2), silence[:4000]])
    whole = EnergyEndpointer(EndpointOptions(silence_ms=200), SAMPLE_RATE_HZ).push(audio)
    assert whole == [16000 + 3200, 24000 + 4800 + 3200]  # 200 ms after each burst; leading silence ignored
    pieces = EnergyEndpointer(EndpointOptions(silence_ms=200), SAMPLE_RATE_HZ)
    ends = [e for i in range(0, len(audio), 777) for e in pieces.push(audio[i: i + 777])]
    assert ends == whole
    assert EnergyEndpointer(EndpointOptions(enabled=False), SAMPLE_RATE_HZ).push(audio) == []
    quiet = EnergyEndpointer(EndpointOptions(silence_ms=200, threshold_dbfs=-5), SAMPLE_RATE_HZ)
    assert quiet.push(audio) == []  # the bursts (about -13 dBFS) are below this threshold: no speech, no end


async def test_a_silent_client_is_cut_off_after_the_idle_limit() -> None:
    from server.streaming import StreamTracker
    from server.streaming_service import StreamingRecognizer, StreamProtocol, _audio, _respond, _start

    class Context:
        code: grpc.StatusCode | None = None

        async def abort(self, code: grpc.StatusCode, message: str) -> None:
            self.code = code
            raise grpc.aio.AbortError()

    async def silent() -> AsyncIterator[speech_pb2.StreamingRecognizeRequest]:
        await asyncio.Event().wait()  # never sends anything
        yield speech_pb2.StreamingRecognizeRequest()

    tracker = StreamTracker()
    recognizer = StreamingRecognizer({}, StreamLimits(max_idle_s=0.05), tracker)
    context = Context()
    with pytest.raises(grpc.aio.AbortError):
        async for _ in recognizer.run(silent(), context, StreamProtocol(_start, _audio, _respond)):
            pass
    assert context.code == grpc.StatusCode.OUT_OF_RANGE and tracker.in_flight == 0


async def test_streams_beyond_the_limit_are_refused(start: StartServer, streaming_repo: Path) -> None:
    server = await start(repo=streaming_repo, max_streams=1)
    gate = asyncio.Event()

    async def holding() -> AsyncIterator[speech_pb2.StreamingRecognizeRequest]:
        yield speech_pb2.StreamingRecognizeRequest(config=_config())
        await gate.wait()

    async with grpc.aio.insecure_channel(server.address) as channel:
        first = speech_pb2_grpc.SpeechStub(channel).StreamingRecognize(holding())
        await wait_until(lambda: server.streams.in_flight == 1)
        code, msg = await _code(server, [speech_pb2.StreamingRecognizeRequest(config=_config())])
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "streams" in msg
        gate.set()
        assert _finals([r async for r in first])  # the admitted stream finishes normally

"""The real `nvidia-riva-client` (2.27) against a nui server: offline_recognize of a WAV file and of raw
PCM, streaming_response_generator over a WAV file's chunks, GetRivaSpeechRecognitionConfig, and the
codes of what nui refuses. The client is synchronous, so its calls run in a worker thread while the
grpc.aio server runs on the test's event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from models.ctc_text import greedy_decode
from server.app import SpeechServer
from server.audio import AudioEncoding, AudioLimits
from server.repository import load_speech_models
from server.speech_ctc import DecodeOptions, Recognition
from tests.server.conftest import StartServer
from tests.server.helpers import SAMPLE_RATE_HZ, encode, make_clip, pcm16

riva_client = pytest.importorskip("riva.client")
from riva.client.proto import riva_asr_pb2  # noqa: E402


def _asr(server: SpeechServer) -> Any:  # riva.client.ASRService
    return riva_client.ASRService(riva_client.Auth(uri=server.address, use_ssl=False))


def _config(**kw: object) -> Any:  # riva.client.RecognitionConfig
    settings: dict[str, object] = {"language_code": "en-US", "encoding": riva_client.AudioEncoding.LINEAR_PCM,
                                   "max_alternatives": 1, **kw}
    return riva_client.RecognitionConfig(**settings)


def _nui_recognize(repo: Path, wav: bytes) -> Recognition:
    model = load_speech_models(repo, intra_op_threads=1)["speech_ctc"][1]
    utt = model.prepare(wav, AudioEncoding.AUTO, 0, DecodeOptions(words=True), AudioLimits(), "ref")
    [result] = model.run_batch([utt])
    assert isinstance(result, Recognition)
    return result


def _streaming_reference(clip: np.ndarray) -> str:
    """Greedy transcript of the torch offline forward of the weights the streaming_repo fixture exported."""
    torch = pytest.importorskip("torch")
    from models.speech_ctc import build, get_preset

    torch.manual_seed(0)
    model = build(get_preset("tiny-streaming")).eval()
    x = torch.from_numpy(np.frombuffer(pcm16(clip), "<i2").astype(np.float32) / 32768.0)
    with torch.no_grad():
        lp, n = model(x[None], torch.tensor([len(x)]))
    return greedy_decode(lp[0, : int(n[0])].numpy())


async def test_offline_recognize_a_wav_file_and_raw_pcm(start: StartServer, streaming_repo: Path,
                                                      tmp_path: Path) -> None:
    server = await start(repo=streaming_repo)
    asr = _asr(server)
    clip = make_clip(1.7, seed=5)
    path = tmp_path / "clip.wav"
    path.write_bytes(encode(clip))
    want = _nui_recognize(streaming_repo, path.read_bytes()).alternatives[0]

    config = _config(enable_word_time_offsets=True)
    riva_client.add_audio_file_specs_to_config(config, path)
    response = await asyncio.to_thread(asr.offline_recognize, path.read_bytes(), config)
    [result] = response.results
    alt = result.alternatives[0]
    assert alt.transcript == want.transcript and result.audio_processed == pytest.approx(1.7)
    assert [(w.word, w.start_time, w.end_time) for w in alt.words] == [
        (w.word, round(1000 * w.start_s), round(1000 * w.end_s)) for w in want.words]

    raw = await asyncio.to_thread(asr.offline_recognize, pcm16(clip), _config(sample_rate_hertz=SAMPLE_RATE_HZ))
    assert raw.results[0].alternatives[0].transcript == want.transcript


async def test_streaming_response_generator_over_a_wav_file(start: StartServer, streaming_repo: Path,
                                                            tmp_path: Path) -> None:
    server = await start(repo=streaming_repo)
    asr = _asr(server)
    clip = make_clip(2.3, seed=4)
    path = tmp_path / "clip.wav"
    path.write_bytes(encode(clip))
    config = _config()
    riva_client.add_audio_file_specs_to_config(config, path)
    streaming_config = riva_client.StreamingRecognitionConfig(config=config, interim_results=True)

    def transcribe() -> list[riva_asr_pb2.StreamingRecognizeResponse]:
        # The client sends the file as it is, WAV header first (nui strips and checks it, as Riva does).
        with riva_client.AudioChunkFileIterator(str(path), 1600) as chunks:
            return list(asr.streaming_response_generator(audio_chunks=chunks, streaming_config=streaming_config))

    responses = await asyncio.to_thread(transcribe)
    results = [r for resp in responses for r in resp.results]
    finals = [r for r in results if r.is_final]
    assert finals and any(not r.is_final for r in results)
    want = _streaming_reference(clip)
    assert want and " ".join(r.alternatives[0].transcript for r in finals) == want
    assert finals[-1].audio_processed == pytest.approx(2.3, abs=0.01)


async def test_get_riva_speech_recognition_config_lists_both_kinds(start: StartServer,
                                                                   streaming_repo: Path) -> None:
    server = await start(repo=streaming_repo)
    asr = _asr(server)
    response = await asyncio.to_thread(asr.stub.GetRivaSpeechRecognitionConfig,
                                       riva_asr_pb2.RivaSpeechRecognitionConfigRequest())
    configs = {c.model_name: dict(c.parameters) for c in response.model_config}
    assert configs["speech_ctc"]["type"] == "offline" and configs["speech_ctc_streaming"]["type"] == "online"
    assert configs["speech_ctc_streaming"]["chunk_size"] == "0.12"
    assert {p["language_code"] for p in configs.values()} == {"en-US"}
    with pytest.raises(grpc.RpcError) as e:
        await asyncio.to_thread(asr.stub.GetRivaSpeechRecognitionConfig,
                                riva_asr_pb2.RivaSpeechRecognitionConfigRequest(model_name="nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_what_nui_cannot_honour_is_refused_with_the_field(start: StartServer, streaming_repo: Path,
                                                                tiny_repo: Path) -> None:
    server = await start(repo=streaming_repo)
    asr = _asr(server)
    wav = encode(make_clip(0.5, seed=0))
    cases = [
        (_config(language_code="de-DE"), "config.language_code"),
        (_config(encoding=riva_client.AudioEncoding.MULAW), "config.encoding MULAW"),
        (_config(diarization_config=riva_asr_pb2.SpeakerDiarizationConfig(enable_speaker_diarization=True)),
         "config.diarization_config"),
        (_config(sample_rate_hertz=8000), "config.sample_rate_hertz"),  # the WAV header says 16000
    ]
    for config, field in cases:
        with pytest.raises(grpc.RpcError) as e:
            await asyncio.to_thread(asr.offline_recognize, wav, config)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in e.value.details()

    def stream_german() -> None:
        config = riva_client.StreamingRecognitionConfig(config=_config(language_code="fr-FR",
                                                                       sample_rate_hertz=SAMPLE_RATE_HZ))
        list(asr.streaming_response_generator(audio_chunks=[pcm16(make_clip(0.3, seed=0))],
                                              streaming_config=config))

    with pytest.raises(grpc.RpcError) as e:
        await asyncio.to_thread(stream_german)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "language_code" in e.value.details()

    offline_only = await start(models=load_speech_models(tiny_repo, intra_op_threads=1))

    def stream_without_model() -> None:
        config = riva_client.StreamingRecognitionConfig(config=_config(sample_rate_hertz=SAMPLE_RATE_HZ))
        list(_asr(offline_only).streaming_response_generator(audio_chunks=[pcm16(make_clip(0.3, seed=0))],
                                                             streaming_config=config))

    with pytest.raises(grpc.RpcError) as e:
        await asyncio.to_thread(stream_without_model)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "streaming" in e.value.details()

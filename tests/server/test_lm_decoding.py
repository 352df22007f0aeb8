"""Beam search + LM as the pluggable decoder: loading from manifest extras, selection per request."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from engines.manifest import MANIFEST_NAME, Manifest, read_manifest, write_manifest
from models.ctc_beam import BeamOptions, CTCBeamDecoder
from models.ctc_text import greedy_decode
from proto import speech_pb2, speech_pb2_grpc
from server.audio import AudioEncoding, AudioLimits
from server.repository import load_speech_models
from server.speech_ctc import (
    BeamLMDecoder,
    DecodeOptions,
    Recognition,
    SpeechCTCModel,
    beam_options,
    pad_batch,
)
from server.transcribe import main as transcribe_main
from tests.server.conftest import StartServer
from tests.server.helpers import encode, make_clip


def _model(repo: Path) -> SpeechCTCModel:
    return load_speech_models(repo, intra_op_threads=1)["speech_ctc"][1]


def _log_probs(model: SpeechCTCModel, data: bytes) -> np.ndarray:
    utt = model.prepare(data, AudioEncoding.AUTO, 0, DecodeOptions(use_lm=False), AudioLimits(), "r")
    audio, lengths = pad_batch([utt.samples])
    out = model.engine.run({"audio": audio, "audio_lengths": lengths})
    return out["log_probs"][0, : int(out["out_lengths"][0])]


def test_manifest_lm_is_loaded_with_its_options(lm_repo: Path) -> None:
    model = _model(lm_repo)
    assert model.has_lm and isinstance(model.lm_decoder, BeamLMDecoder)
    assert model.lm_decoder.decoder.has_lm
    assert model.lm_decoder.decoder.options == BeamOptions(beam_width=8, alpha=0.7, beta=1.0)


async def test_requests_choose_the_decoder(lm_repo: Path, start: StartServer, clips: list[bytes]) -> None:
    model = _model(lm_repo)
    lp = _log_probs(model, clips[5])
    beam = CTCBeamDecoder(lm_repo / "speech_ctc" / "1" / "lm.arpa",
                          (lm_repo / "speech_ctc" / "1" / "unigrams.txt").read_text().split(),
                          BeamOptions(beam_width=8, alpha=0.7, beta=1.0)).decode(lp, model.spec.frame_s)
    server = await start(repo=lm_repo)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = speech_pb2_grpc.SpeechStub(channel)

        async def recognize(decoder: int) -> speech_pb2.SpeechRecognitionAlternative:
            config = speech_pb2.RecognitionConfig(decoder=decoder,  # type: ignore[arg-type]
                                                  enable_word_time_offsets=True)
            request = speech_pb2.RecognizeRequest(config=config, audio=clips[5])
            reply = await stub.Recognize(request, timeout=10)
            return reply.results[0].alternatives[0]

        default = await recognize(speech_pb2.DECODER_UNSPECIFIED)
        with_lm = await recognize(speech_pb2.DECODER_BEAM_LM)
        greedy = await recognize(speech_pb2.DECODER_GREEDY)
    assert default == with_lm  # the model ships an LM, so it is the default
    assert with_lm.transcript == beam.transcript
    assert beam.words and [w.word for w in with_lm.words] == [w.word for w in beam.words]
    assert [t for w in with_lm.words for t in (w.start_s, w.end_s)] == pytest.approx(
        [t for w in beam.words for t in (w.start_s, w.end_s)])
    assert with_lm.confidence == pytest.approx(beam.confidence, rel=1e-5)
    assert greedy.transcript == greedy_decode(lp)
    assert greedy.transcript != with_lm.transcript  # random weights: greedy spells nonsense, the LM does not


def test_transcribe_uses_the_lm_by_default(lm_repo: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    wav = tmp_path / "clip.wav"
    wav.write_bytes(encode(make_clip(1.0, seed=4)))
    assert transcribe_main([str(wav), "--repo", str(lm_repo), "--lm"]) == 0
    with_lm = capsys.readouterr().out
    assert transcribe_main([str(wav), "--repo", str(lm_repo)]) == 0
    assert capsys.readouterr().out == with_lm
    assert transcribe_main([str(wav), "--repo", str(lm_repo), "--no-lm"]) == 0
    lp = _log_probs(_model(lm_repo), wav.read_bytes())
    assert capsys.readouterr().out == greedy_decode(lp) + "\n"


def test_lm_model_results_are_per_item(lm_repo: Path, clips: list[bytes]) -> None:
    model = _model(lm_repo)
    utts = [model.prepare(c, AudioEncoding.AUTO, 0, DecodeOptions(words=True), AudioLimits(), f"r{i}")
            for i, c in enumerate(clips[:4])]
    together = model.run_batch(utts)
    for utt, batched in zip(utts, together, strict=True):
        [alone] = model.run_batch([utt])
        assert isinstance(alone, Recognition) and isinstance(batched, Recognition)
        a, b = alone.alternatives[0], batched.alternatives[0]
        assert (a.transcript, a.words) == (b.transcript, b.words)
        assert a.confidence == pytest.approx(b.confidence, rel=1e-4)  # ORT sums differ by batch shape


def _rewrite(repo: Path, tmp_path: Path, **extras: object) -> Path:
    src = repo / "speech_ctc" / "1"
    dst = tmp_path / "speech_ctc" / "1"
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    manifest = read_manifest(dst)
    write_manifest(dst, dataclasses.replace(manifest, extras={**manifest.extras, **extras}))
    return tmp_path


def test_lm_files_must_be_checksummed(lm_repo: Path, tmp_path: Path) -> None:
    repo = _rewrite(lm_repo, tmp_path, lm={"arpa": "other.arpa"})
    folder = repo / "speech_ctc" / "1"
    (folder / "other.arpa").write_bytes((folder / "lm.arpa").read_bytes())
    with pytest.raises(ValueError, match=r"LM file 'other\.arpa' is not listed"):
        load_speech_models(repo)


def test_bad_decoder_options_fail_start_up(lm_repo: Path, tmp_path: Path) -> None:
    repo = _rewrite(lm_repo, tmp_path, decoder={"alpha": 0.5, "bogus": 1})
    with pytest.raises(ValueError, match=r"unknown keys \['bogus'\]"):
        load_speech_models(repo)


def test_beam_options_shapes() -> None:
    assert beam_options(None) == BeamOptions()
    assert beam_options({"alpha": 0.9}) == BeamOptions(alpha=0.9)
    evaluate_results = {"rows": [], "decoder": {"alpha": 0.3, "beta": 2.0, "beam_width": 16}}
    assert beam_options(evaluate_results) == BeamOptions(alpha=0.3, beta=2.0, beam_width=16)
    with pytest.raises(ValueError, match="must be an object"):
        beam_options([1])


def test_manifest_without_lm_has_none(tiny_repo: Path) -> None:
    manifest = Manifest.from_dict(json.loads((tiny_repo / "speech_ctc" / "1" / MANIFEST_NAME).read_text()))
    assert "lm" not in manifest.extras and not _model(tiny_repo).has_lm

"""Speech CTC pre/post-processing without gRPC: spec, validation, batching, pluggable decoding."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import numpy as np
import pytest

from server.audio import AudioEncoding, AudioLimits
from server.errors import RequestError
from server.speech_ctc import (
    DecodeOptions,
    GreedyDecoder,
    Hypothesis,
    InlineDecoder,
    Recognition,
    SpeechCTCModel,
    SpeechSpec,
    Utterance,
    pad_batch,
)
from tests.server.conftest import Models
from tests.server.helpers import encode, make_clip

LIMITS = AudioLimits()


def _model(models: Models) -> SpeechCTCModel:
    return models["speech_ctc"][1]


def _prepare(model: SpeechCTCModel, data: bytes, options: DecodeOptions | None = None,
             rid: str = "r") -> Utterance:
    return model.prepare(data, AudioEncoding.AUTO, 0, options or DecodeOptions(), LIMITS, rid)


@pytest.mark.parametrize("preset", ["tiny", "small", "ds2", "small-streaming"])
def test_spec_matches_the_torch_config(preset: str) -> None:
    pytest.importorskip("torch")
    from models.speech_ctc import get_preset

    cfg = get_preset(preset)
    spec = SpeechSpec.from_config(cfg.to_dict())
    assert spec == SpeechSpec(cfg.sample_rate_hz, cfg.min_samples, cfg.frame_s)


def test_spec_rejects_incomplete_config() -> None:
    with pytest.raises(ValueError, match="n_fft"):
        SpeechSpec.from_config({"sample_rate_hz": 16000})


def test_pad_batch() -> None:
    audio, lengths = pad_batch([np.ones(3, np.float32), np.ones(5, np.float32)])
    assert audio.shape == (2, 5) and audio.dtype == np.float32 and lengths.dtype == np.int64
    np.testing.assert_array_equal(lengths, [3, 5])
    np.testing.assert_array_equal(audio[0], [1, 1, 1, 0, 0])


def test_batched_equals_unbatched(tiny_models: Models, clips: list[bytes]) -> None:
    model = _model(tiny_models)
    utts = [_prepare(model, c, DecodeOptions(words=True), f"r{i}") for i, c in enumerate(clips)]
    batched = model.run_batch(utts)
    for utt, together in zip(utts, batched, strict=True):
        [alone] = model.run_batch([utt])
        assert isinstance(alone, Recognition) and isinstance(together, Recognition)
        a, b = alone.alternatives[0], together.alternatives[0]
        assert a.transcript == b.transcript and a.words == b.words
        assert a.confidence == pytest.approx(b.confidence, abs=1e-5)
        assert 0.0 < a.confidence <= 1.0
        assert [w.word for w in a.words] == a.transcript.split()
        assert all(0 <= w.start_s < w.end_s <= together.audio_duration_s + 0.05 for w in a.words)
    assert [r.audio_duration_s for r in batched if isinstance(r, Recognition)] == pytest.approx(
        [0.4 + 0.15 * i for i in range(8)], abs=1e-3)


def test_words_only_when_asked(tiny_models: Models, clips: list[bytes]) -> None:
    model = _model(tiny_models)
    [rec] = model.run_batch([_prepare(model, clips[-1])])
    assert isinstance(rec, Recognition) and rec.alternatives[0].words == ()


def test_greedy_decoder_regression() -> None:
    # frames: a a <b> b " " c  -> "ab c"; per-frame best probability 0.9 everywhere
    ids = [3, 3, 0, 4, 1, 5]
    lp = np.full((6, 29), np.log(0.1 / 28), dtype=np.float32)
    lp[np.arange(6), ids] = np.log(0.9)
    [hyp] = GreedyDecoder().decode(lp, 0.02, words=True, max_alternatives=3)
    assert hyp.transcript == "ab c" and hyp.confidence == pytest.approx(0.9, rel=1e-6)
    assert [w.word for w in hyp.words] == ["ab", "c"]
    assert [t for w in hyp.words for t in (w.start_s, w.end_s)] == pytest.approx([0.0, 0.08, 0.1, 0.12])


def test_too_short_names_audio_and_minimum(tiny_models: Models) -> None:
    with pytest.raises(RequestError) as e:
        _prepare(_model(tiny_models), encode(make_clip(0.01, seed=0)))
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.message.startswith("audio is 0.010 s long")
    assert "400 samples at 16000 Hz" in e.value.message


def test_resampled_input_is_at_model_rate(tiny_models: Models) -> None:
    utt = _prepare(_model(tiny_models), encode(make_clip(0.5, seed=0, sample_rate_hz=8000), 8000))
    assert abs(len(utt.samples) - 8000) <= 1 and utt.audio_duration_s == pytest.approx(0.5)


@pytest.mark.parametrize("options,field", [(DecodeOptions(max_alternatives=11), "config.max_alternatives"),
                                           (DecodeOptions(max_alternatives=-1), "config.max_alternatives"),
                                           (DecodeOptions(use_lm=True), "config.decoder")])
def test_bad_options(tiny_models: Models, clips: list[bytes], options: DecodeOptions, field: str) -> None:
    with pytest.raises(RequestError) as e:
        _prepare(_model(tiny_models), clips[0], options)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and e.value.message.startswith(field)


class FakeLM(InlineDecoder):
    """Three hypotheses per utterance; its `fail_on`-th call (0-based) raises."""

    def __init__(self, fail_on: int) -> None:
        self.calls, self.fail_on = 0, fail_on

    def decode(self, log_probs: np.ndarray, frame_s: float, *, words: bool,
               max_alternatives: int, context: Sequence[str] = ()) -> list[Hypothesis]:
        self.calls += 1
        if self.calls - 1 == self.fail_on:
            raise ValueError("decoder failed")
        return [Hypothesis(f"lm {k}", 1.0 / (k + 1)) for k in range(3)]


def test_lm_decoder_is_pluggable_and_errors_stay_per_item(tiny_models: Models, clips: list[bytes]) -> None:
    model = SpeechCTCModel(_model(tiny_models).engine, lm_decoder=FakeLM(fail_on=1))
    assert model.has_lm
    with_lm = [_prepare(model, c, DecodeOptions(max_alternatives=2)) for c in clips[:3]]  # LM by default
    greedy = _prepare(model, clips[0], DecodeOptions(use_lm=False, max_alternatives=2))
    results = model.run_batch([*with_lm, greedy])
    assert isinstance(results[1], ValueError)
    for r in (results[0], results[2]):
        assert isinstance(r, Recognition) and [h.transcript for h in r.alternatives] == ["lm 0", "lm 1"]
    last = results[3]
    assert isinstance(last, Recognition) and len(last.alternatives) == 1  # greedy: one alternative
    assert not last.alternatives[0].transcript.startswith("lm")


class BadShapes:
    def __init__(self, inner: SpeechCTCModel) -> None:
        self.name, self.version, self.manifest = "speech_ctc", 1, inner.engine.manifest

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"log_probs": np.zeros((1, 2, 29), np.float32), "out_lengths": np.array([2, 2])}


def test_engine_output_shapes_are_checked(tiny_models: Models, clips: list[bytes]) -> None:
    model = SpeechCTCModel(BadShapes(_model(tiny_models)))
    with pytest.raises(RuntimeError, match="engine returned log_probs"):
        model.run_batch([_prepare(model, clips[0]), _prepare(model, clips[1])])


def test_wrong_task_is_refused(tiny_models: Models) -> None:
    import dataclasses

    engine = BadShapes(_model(tiny_models))
    engine.manifest = dataclasses.replace(engine.manifest, task="captioner")
    with pytest.raises(ValueError, match="task is 'captioner'"):
        SpeechCTCModel(engine)

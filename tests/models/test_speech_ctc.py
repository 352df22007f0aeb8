"""The speech CTC model: config validation, shapes, padding invariance, causality, featurizer, text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.ctc_text import VOCAB, decode_ids, encode, greedy_decode, greedy_word_timings, normalize_text
from models.speech_ctc import PRESETS, SpeechCTCConfig, build, get_preset, output_lengths


def _audio(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed)) * 0.1


@pytest.mark.parametrize("name", ["tiny", "tiny-streaming"])
def test_shapes_and_lengths(name: str) -> None:
    cfg = get_preset(name)
    torch.manual_seed(0)
    model = build(cfg).eval()
    lengths = torch.tensor([16000, 9000, 400])
    log_probs, out_lengths = model(_audio(3, 16000), lengths)
    assert log_probs.shape == (3, int(out_lengths.max()), len(VOCAB)) and log_probs.dtype == torch.float32
    assert out_lengths.tolist() == output_lengths(cfg, lengths).tolist()
    # (S - 400) // 160 + 1 feature frames (25 ms windows, 10 ms hop, no centring), then time stride 2
    assert out_lengths.tolist() == [49, 27, 1]
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3, log_probs.shape[1]), atol=1e-5)


@pytest.mark.parametrize("name", ["tiny", "tiny-streaming"])
def test_padding_never_changes_valid_frames(name: str) -> None:
    torch.manual_seed(0)
    model = build(get_preset(name)).eval()
    audio = _audio(3, 24000, seed=1)
    lengths = torch.tensor([24000, 15000, 5000])
    with torch.no_grad():
        batched, n = model(audio, lengths)
        for i in range(3):
            alone, m = model(audio[i:i + 1, : lengths[i]], lengths[i:i + 1])
            assert int(m[0]) == int(n[i])
            assert torch.allclose(alone[0, : m[0]], batched[i, : n[i]], atol=1e-5)


def test_streaming_variant_sees_only_a_bounded_future() -> None:
    """Changing audio after second 1.0 must not change outputs well before it (unidirectional GRUs +
    lookahead), while the bidirectional model's early outputs do change."""
    audio = _audio(1, 32000, seed=2)
    changed = audio.clone()
    changed[0, 16000:] = _audio(1, 16000, seed=3)
    lengths = torch.tensor([32000])
    for name, causal in [("tiny-streaming", True), ("tiny", False)]:
        torch.manual_seed(0)
        model = build(get_preset(name)).eval()
        with torch.no_grad():
            a, _ = model(audio, lengths)
            b, _ = model(changed, lengths)
        early = slice(0, 35)  # output frames up to 0.7 s: receptive field + lookahead stay before 1.0 s
        assert torch.allclose(a[0, early], b[0, early], atol=1e-6) is causal


def test_config_validation_and_presets() -> None:
    with pytest.raises(ValueError, match="lookahead_frames"):
        SpeechCTCConfig(lookahead_frames=2)
    with pytest.raises(ValueError, match="feature_norm"):
        SpeechCTCConfig(bidirectional=False)
    with pytest.raises(ValueError, match="unknown speech preset"):
        get_preset("huge")
    for name, cfg in PRESETS.items():
        assert SpeechCTCConfig.from_dict(cfg.to_dict()) == cfg, name
    n_params = sum(p.numel() for p in build(get_preset("ds2")).parameters())
    assert 90e6 < n_params < 110e6, "ds2 is the ~100M-parameter GPU preset"


def test_featurizer_is_gain_invariant_after_utterance_normalisation() -> None:
    torch.manual_seed(0)
    model = build(get_preset("tiny")).eval()
    audio = _audio(1, 16000, seed=4)
    with torch.no_grad():
        a, _ = model(audio, torch.tensor([16000]))
        b, _ = model(audio * 4.0, torch.tensor([16000]))
    assert torch.allclose(a, b, atol=1e-3)


def test_regression_value_of_a_seeded_tiny_model() -> None:
    torch.manual_seed(0)
    model = build(get_preset("tiny")).eval()
    with torch.no_grad():
        log_probs, _ = model(_audio(1, 8000, seed=5), torch.tensor([8000]))
    assert float(log_probs.sum()) == pytest.approx(-2472.27, rel=1e-4)


def test_text_normalisation_and_vocabulary() -> None:
    assert normalize_text("Hello, World! It's 5 o'clock — café ‘quoted’") == "hello world it's five o'clock cafe quoted"
    assert decode_ids(encode("it's a test")) == "it's a test"
    with pytest.raises(ValueError, match="normalize_text"):
        encode("Caps")


def test_greedy_decoding_collapses_repeats_and_times_words() -> None:
    frames = [VOCAB.index(c) if c != "_" else 0 for c in "hh_ii_ _tthh_ee_rr_ee"]
    log_probs = np.log(np.full((len(frames), len(VOCAB)), 1e-4))
    log_probs[np.arange(len(frames)), frames] = 0.0
    assert greedy_decode(log_probs) == "hi there"
    words = greedy_word_timings(log_probs, frame_s=0.03)
    assert [w.word for w in words] == ["hi", "there"]
    assert words[0].start_s == 0.0 and words[0].end_s == pytest.approx(5 * 0.03)
    assert words[1].start_s == pytest.approx(8 * 0.03) and words[1].end_s == pytest.approx(len(frames) * 0.03)

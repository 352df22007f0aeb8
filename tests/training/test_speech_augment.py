"""Speech training augmentation: speed perturbation, frequency warp, SpecAugment masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.speech_ctc.augment import AugmentSection, augment_features, perturb_speed, warp_frequency


def test_speed_perturbation_changes_length_by_the_factor() -> None:
    audio = np.sin(np.arange(16000, dtype=np.float32) * 0.05)
    assert perturb_speed(audio, 1.0, 16000) is audio
    faster = perturb_speed(audio, 1.25, 16000)
    slower = perturb_speed(audio, 0.8, 16000)
    assert abs(len(faster) - 12800) <= 2 and abs(len(slower) - 20000) <= 2
    assert faster.dtype == np.float32


def test_frequency_warp_identity_shift_and_padding() -> None:
    feats = torch.zeros(2, 5, 8)
    feats[:, :3, 2] = 1.0  # energy in bin 2 on 3 valid frames, 2 padded frames
    same = warp_frequency(feats, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(same, feats)
    warped = warp_frequency(feats, torch.tensor([1.5, 1.0]))
    assert warped[0, 0].argmax().item() == 3  # bin 2 stretched by 1.5 lands on bin 3
    torch.testing.assert_close(warped[1], feats[1])
    assert warped[:, 3:].abs().sum() == 0  # padded frames stay zero


def test_masks_stay_within_limits_and_are_reproducible() -> None:
    cfg = AugmentSection(freq_masks=2, freq_mask_bins=4, time_masks=2, time_mask_frac=0.2)
    feats = torch.ones(3, 50, 16)
    lengths = torch.tensor([50, 30, 10])
    out = augment_features(feats, lengths, cfg, np.random.default_rng(0))
    again = augment_features(feats, lengths, cfg, np.random.default_rng(0))
    torch.testing.assert_close(out, again)
    for i, n in enumerate(lengths.tolist()):
        masked_bins = int((out[i, :n] == 0).all(dim=0).sum())
        assert masked_bins <= 2 * 4
        masked_frames = int((out[i, :n] == 0).all(dim=1).sum())
        assert masked_frames <= 2 * int(0.2 * n)
    assert (out == 0).any()
    assert augment_features(feats, lengths, AugmentSection(), np.random.default_rng(0)) is feats


@pytest.mark.parametrize("bad", [{"speed_min": 1.2, "speed_max": 1.1}, {"freq_warp": 0.6},
                                 {"time_mask_frac": 0.9}, {"freq_masks": -1}])
def test_bad_augment_settings_are_rejected(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AugmentSection(**bad)  # type: ignore[arg-type]

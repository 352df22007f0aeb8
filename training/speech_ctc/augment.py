"""Training-time augmentation for the speech model, aimed at voices it has never heard.

- Speed perturbation of the waveform (Ko et al., Interspeech 2015): resampling by a factor changes
  tempo, pitch and formant positions together, like a speaker with a different vocal tract and pace.
- A random warp of the mel axis of the normalised features (VTLP-like; Jaitly & Hinton 2013).
- SpecAugment frequency and time masks (Park et al. 2019), set to 0 = the normalised mean.

Every draw comes from a generator seeded by (seed, epoch, utterance index) for the waveform and
(seed, step, rank) for the features, so a run stays bitwise reproducible and resumes exactly.
All default to off; `training/speech_ctc/recipes/small.yaml` turns them on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr
import torch


@dataclass(frozen=True)
class AugmentSection:
    speed_min: float = 1.0  # waveform speed factor drawn uniformly from [speed_min, speed_max]
    speed_max: float = 1.0
    freq_warp: float = 0.0  # mel axis stretched by a factor drawn from [1 - freq_warp, 1 + freq_warp]
    freq_masks: int = 0  # SpecAugment masks per utterance over mel bins ...
    freq_mask_bins: int = 0  # ... each up to this many bins wide
    time_masks: int = 0  # masks per utterance over frames ...
    time_mask_frac: float = 0.0  # ... each up to this fraction of the utterance's frames

    def __post_init__(self) -> None:
        if not 0.5 <= self.speed_min <= self.speed_max <= 2.0:
            raise ValueError(f"augment: need 0.5 <= speed_min <= speed_max <= 2.0, got {self.speed_min}, "
                             f"{self.speed_max}")
        if not 0.0 <= self.freq_warp < 0.5:
            raise ValueError(f"augment.freq_warp must be in [0, 0.5), got {self.freq_warp}")
        if self.freq_masks < 0 or self.freq_mask_bins < 0 or self.time_masks < 0:
            raise ValueError("augment: mask counts and widths must be >= 0")
        if not 0.0 <= self.time_mask_frac <= 0.5:
            raise ValueError(f"augment.time_mask_frac must be in [0, 0.5], got {self.time_mask_frac}")

    @property
    def perturbs_speed(self) -> bool:
        return self.speed_min != 1.0 or self.speed_max != 1.0

    @property
    def changes_features(self) -> bool:
        return bool(self.freq_warp or (self.freq_masks and self.freq_mask_bins)
                    or (self.time_masks and self.time_mask_frac))


def perturb_speed(audio: np.ndarray, factor: float, sample_rate_hz: int) -> np.ndarray:
    """`audio` played `factor` times faster (len / factor samples) at the same sample rate."""
    if factor == 1.0:
        return audio
    return np.ascontiguousarray(soxr.resample(audio, sample_rate_hz * factor, sample_rate_hz), dtype=np.float32)


def warp_frequency(feats: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """(B, T, F) features with each utterance's bin axis stretched by its factor (> 1 moves energy to
    higher bins), linear interpolation, edges clamped. Zero (padded) frames stay zero."""
    n_bins = feats.shape[-1]
    pos = torch.arange(n_bins, dtype=torch.float32, device=feats.device)[None, :] / factors[:, None]  # (B, F)
    pos = pos.clamp(0, n_bins - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n_bins - 1)
    w = (pos - lo.to(pos.dtype))[:, None, :].to(feats.dtype)  # (B, 1, F)
    expand = (-1, feats.shape[1], -1)
    low = feats.gather(2, lo[:, None, :].expand(*expand))
    high = feats.gather(2, hi[:, None, :].expand(*expand))
    return low * (1 - w) + high * w


def augment_features(feats: torch.Tensor, lengths: torch.Tensor, cfg: AugmentSection,
                     rng: np.random.Generator) -> torch.Tensor:
    """Frequency warp then SpecAugment masks on normalised features (B, T, F); `lengths` (B,) frames."""
    if not cfg.changes_features:
        return feats
    b, _, n_bins = feats.shape
    if cfg.freq_warp:
        factors = torch.from_numpy(rng.uniform(1 - cfg.freq_warp, 1 + cfg.freq_warp, b).astype(np.float32))
        feats = warp_frequency(feats, factors.to(feats.device))
    keep = torch.ones_like(feats)
    for i, n_frames in enumerate(lengths.tolist()):
        for _ in range(cfg.freq_masks if cfg.freq_mask_bins else 0):
            width = int(rng.integers(0, min(cfg.freq_mask_bins, n_bins) + 1))
            start = int(rng.integers(0, n_bins - width + 1))
            keep[i, :, start:start + width] = 0
        max_width = int(cfg.time_mask_frac * n_frames)
        for _ in range(cfg.time_masks if max_width else 0):
            width = int(rng.integers(0, max_width + 1))
            start = int(rng.integers(0, n_frames - width + 1))
            keep[i, start:start + width, :] = 0
    return feats * keep

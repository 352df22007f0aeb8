"""training/captioner/domain_study.py: the detectors it compares, on synthetic pooled features."""

from __future__ import annotations

import numpy as np

from training.captioner.domain_study import detectors


def test_direction_detectors_flag_another_activation_pattern_at_a_training_norm() -> None:
    """ReLU-like features: training rows use channels 0..639 at norms that vary 10x; the odd rows use
    channels 640..1279 at a training-like norm. The direction-based detectors flag every odd row."""
    rng = np.random.default_rng(0)

    def rows(n: int, channels: slice) -> np.ndarray:
        x = np.zeros((n, 1280))
        x[:, channels] = rng.gamma(0.5, 1.0, (n, 640))
        return x * np.exp(rng.uniform(np.log(0.3), np.log(3.0), (n, 1)))

    train, val, odd = rows(600, slice(0, 640)), rows(300, slice(0, 640)), rows(10, slice(640, 1280))
    found = detectors(train)
    assert set(found) == {"raw PPCA K=256 (v2)", "L2-normalised PPCA K=256 (v3)", "cosine kNN k=5, all train",
                          "energy (ImageNet head)"}
    for name in ("L2-normalised PPCA K=256 (v3)", "cosine kNN k=5, all train"):
        score = found[name]
        assert (score(odd) > np.quantile(score(val), 0.99)).all(), name
    assert np.isfinite(found["energy (ImageNet head)"](odd)).all()

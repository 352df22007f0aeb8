"""The captioner's out-of-domain check, in numpy: fit on training features, threshold on dev, decide.

The captioner only ever saw cut-outs pasted on textures; on a real photo its decoder still writes a
fluent template caption about the wrong things. So before decoding, the image's pooled encoder features
(the 1280-d vector EfficientNet-Lite0's ImageNet classifier reads) are scored against the training
scenes' feature distribution, and an image too far from it gets an honest caption instead:
"a photo of <ImageNet label>" when the encoder's own ImageNet classifier is confident, else "a photo".

Features are L2-normalised first (Mahalanobis++, Mueller & Hein 2025: the norm of CNN features varies
a lot within a class and hides the direction, which is what tells photos from the scenes; measured here on
real photos outside scikit-image, raw-feature scores missed 11 of 20 photos at the same dev false-alarm
rate, normalised ones 1 of 20; model_repository/captioner/MODEL_CARD.md).
Score: Mahalanobis distance under a probabilistic-PCA Gaussian (Tipping & Bishop 1999): the top K
principal directions with their variances, the remaining C - K directions sharing the mean of the
discarded variances, so the residual (the low-variance directions, which matter most for
out-of-distribution detection; Kamoi & Kobayashi 2020) is scored, but only K x C numbers are stored.
Reported as an RMS per dimension, `sqrt(d^2 / C)`: about 1 for a typical training image.
Threshold: a high quantile of the dev split's scores (never test images, never photos).
The export graph computes the score (engines/export_captioner.py); `domain_scores` is its numpy
reference, `judge` the decision the server and `nui eval captioner` both apply.

    stats = fit_domain(train_pooled, components=256, l2_normalize=True)   # (N, C) float features
    threshold = float(np.quantile(domain_scores(dev_pooled, stats), 0.99))
    verdict = judge(score, label_probs, DomainPolicy(threshold, labels=imagenet_labels))
    verdict.in_domain, verdict.caption                        # False, "a photo of a coffee mug"
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Maximum softmax probability (Hendrycks & Gimpel 2017) at which the ImageNet label is named. v2 used 0.5
# ("most of the mass on one class"); on 20 real photos outside scikit-image (the model card's tuning set)
# 7 of the 15 labels at >= 0.5 were wrong (a bridge "bow", a dahlia "acorn"), none of the 6 at >= 0.9
# (v3, whose classifier read 128 px images, not its 224 px): a named label must be a very confident one.
# At 224 px the classifier is less sure and more often right: v5 names labels from 0.6 (its model card).
DEFAULT_LABEL_THRESHOLD = 0.9
DEFAULT_QUANTILE = 0.99
NORM_EPS = 1e-12  # an all-zero feature vector is left at zero rather than divided by zero
GENERIC_CAPTION = "a photo"


@dataclass(frozen=True)
class DomainStats:
    """PPCA Gaussian of training features: mean (C,), components (K, C) orthonormal rows, their
    variances (K,), and the shared variance of the other C - K directions; with `l2_normalize` every
    feature vector is scaled to unit length before it is fitted or scored."""

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    residual_variance: float
    l2_normalize: bool = False

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), in float64."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), NORM_EPS)


def fit_domain(features: np.ndarray, components: int = 256, l2_normalize: bool = False) -> DomainStats:
    """Maximum-likelihood PPCA fit of (N, C) features, in float64; K = min(components, C - 1, N - 1)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 3:
        raise ValueError(f"need (N >= 3, C) features to fit a domain, got shape {x.shape}")
    if l2_normalize:
        x = unit_rows(x)
    n, c = x.shape
    k = min(components, c - 1, n - 1)
    if k < 1:
        raise ValueError(f"components must be >= 1, got {components}")
    mean = x.mean(axis=0)
    # eigen-decomposition of the sample covariance via SVD of the centred data
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    eig = s ** 2 / (n - 1)
    eig = np.concatenate([eig, np.zeros(max(0, c - len(eig)))])  # (C,) when N < C
    # ML residual variance; floored so that directions never seen in training still score finitely
    floor = 1e-6 * max(float(eig[0]), 1e-12)
    residual = max(float(eig[k:].mean()), floor)
    return DomainStats(mean.astype(np.float32), vt[:k].astype(np.float32),
                       np.maximum(eig[:k], residual).astype(np.float32), residual, l2_normalize)


def domain_scores(features: np.ndarray, stats: DomainStats) -> np.ndarray:
    """(N,) RMS-per-dimension Mahalanobis distance of (N, C) features under `stats` (float64 maths)."""
    x = unit_rows(features) if stats.l2_normalize else np.asarray(features, dtype=np.float64)
    d = x - stats.mean
    v = stats.components.astype(np.float64)  # (K, C)
    proj = d @ v.T  # (N, K)
    off = d - proj @ v  # (N, C): the part off the K directions, as the export graph computes it
    d2 = (proj * proj / stats.variances).sum(axis=1) + (off * off).sum(axis=1) / stats.residual_variance
    return np.sqrt(d2 / stats.dim)


@dataclass(frozen=True)
class DomainPolicy:
    """What the manifest records: the score threshold and the fallback classifier's labels/threshold."""

    score_threshold: float
    label_threshold: float = DEFAULT_LABEL_THRESHOLD
    labels: tuple[str, ...] = ()  # ImageNet class names, index = class id; empty = no classifier

    def __post_init__(self) -> None:
        if not np.isfinite(self.score_threshold) or self.score_threshold <= 0:
            raise ValueError(f"score_threshold must be positive, got {self.score_threshold}")
        if not 0.0 < self.label_threshold <= 1.0:
            raise ValueError(f"label_threshold must be in (0, 1], got {self.label_threshold}")

    def to_dict(self) -> dict[str, Any]:
        return {"score_threshold": self.score_threshold, "label_threshold": self.label_threshold,
                "labels": list(self.labels)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DomainPolicy:
        try:
            return cls(float(d["score_threshold"]), float(d.get("label_threshold", DEFAULT_LABEL_THRESHOLD)),
                       tuple(str(x) for x in d.get("labels", ())))
        except (KeyError, TypeError) as e:
            raise ValueError(f"domain policy lacks or mangles {e}") from e


@dataclass(frozen=True)
class DomainVerdict:
    in_domain: bool
    score: float
    threshold: float
    label: str = ""  # the ImageNet label named in the fallback caption ("" when none)
    label_prob: float = 0.0  # the classifier's top probability (whether or not it was confident)
    caption: str = ""  # the fallback caption when out of domain, "" otherwise
    top_label: str = ""  # the classifier's top class, confident or not ("" without a classifier)


def with_article(noun: str) -> str:
    """'coffee mug' -> 'a coffee mug', 'American robin' -> 'an American robin' (by first letter)."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def judge(score: float, label_probs: np.ndarray | None, policy: DomainPolicy) -> DomainVerdict:
    """In domain when score <= threshold; otherwise the fallback caption, naming the ImageNet label when
    its probability reaches `label_threshold`. `label_probs`: (classes,) softmax, or None."""
    if not np.isfinite(score):
        raise ValueError(f"domain score is {score}")
    label, prob, top_label = "", 0.0, ""
    if label_probs is not None and len(policy.labels):
        if len(label_probs) != len(policy.labels):
            raise ValueError(f"{len(label_probs)} class probabilities for {len(policy.labels)} labels")
        top = int(np.argmax(label_probs))
        prob, top_label = float(label_probs[top]), policy.labels[top]
        label = top_label if prob >= policy.label_threshold else ""
    if score <= policy.score_threshold:
        return DomainVerdict(True, float(score), policy.score_threshold, "", prob, "", top_label)
    caption = f"{GENERIC_CAPTION} of {with_article(label)}" if label else GENERIC_CAPTION
    return DomainVerdict(False, float(score), policy.score_threshold, label, prob, caption, top_label)


def dev_threshold(dev_scores: Sequence[float] | np.ndarray, quantile: float = DEFAULT_QUANTILE) -> float:
    """The `quantile` of the dev split's scores (linear interpolation)."""
    scores = np.asarray(dev_scores, dtype=np.float64)
    if scores.size == 0 or not 0.5 <= quantile < 1.0:
        raise ValueError(f"need dev scores and a quantile in [0.5, 1), got {scores.size} scores, {quantile}")
    return float(np.quantile(scores, quantile))

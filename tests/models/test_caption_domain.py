"""The out-of-domain check's numpy side: PPCA fit and score, dev-quantile threshold, the fallback decision."""

from __future__ import annotations

import numpy as np
import pytest

from models.caption_domain import (
    GENERIC_CAPTION,
    DomainPolicy,
    dev_threshold,
    domain_scores,
    fit_domain,
    judge,
    with_article,
)


def _gaussian(n: int, seed: int, dim: int = 40) -> np.ndarray:
    """Correlated features: 8 strong directions, the rest weak (as pooled CNN features are)."""
    rng = np.random.default_rng(seed)
    scales = np.concatenate([np.full(8, 5.0), np.full(dim - 8, 0.3)])
    basis = np.linalg.qr(np.random.default_rng(99).normal(size=(dim, dim)))[0]
    return (rng.normal(size=(n, dim)) * scales) @ basis.T + 2.0


def test_training_like_features_score_about_one_and_the_dev_quantile_flags_about_one_percent() -> None:
    stats = fit_domain(_gaussian(4000, 0), components=8)
    assert stats.components.shape == (8, 40) and stats.dim == 40
    np.testing.assert_allclose(stats.components @ stats.components.T, np.eye(8), atol=1e-5)
    assert stats.residual_variance == pytest.approx(0.09, rel=0.1)  # the weak directions' variance 0.3^2
    dev, test = domain_scores(_gaussian(2000, 1), stats), domain_scores(_gaussian(4000, 2), stats)
    assert np.median(dev) == pytest.approx(1.0, abs=0.05)
    threshold = dev_threshold(dev, 0.99)
    assert 0.005 < np.mean(test > threshold) < 0.02  # fresh samples of the same distribution: ~1 %
    assert round(float(threshold), 2) == 1.27  # regression value; theory: sqrt(chi2_40 q99 / 40) = 1.26


def test_the_residual_directions_count_most() -> None:
    """A small step off the training subspace is far out; a larger one along a strong direction is not."""
    x = _gaussian(4000, 0)
    stats = fit_domain(x, components=8)
    along, across = stats.components[0], np.linalg.qr(np.c_[stats.components.T, np.ones(40)])[0][:, -1]
    base = stats.mean[None, :]
    s_along, s_across = domain_scores(np.r_[base + 8.0 * along, base + 2.0 * across], stats)
    assert s_across > 3 * s_along


def test_numpy_reference_matches_a_full_mahalanobis_when_every_direction_is_kept() -> None:
    x = _gaussian(500, 3, dim=12)
    stats = fit_domain(x, components=11)  # K = C - 1: the one residual direction has its own variance
    cov = np.cov(x, rowvar=False)
    d = x[:5] - x.mean(axis=0)
    full = np.sqrt(np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d) / 12)
    np.testing.assert_allclose(domain_scores(x[:5], stats), full, rtol=1e-4)


def test_l2_normalized_scores_ignore_the_feature_norm_and_see_the_direction() -> None:
    """Training-like features whose norm varies 10x: the spread inflates the raw PPCA's variances, so a
    vector pointing elsewhere (at a training-like norm) hides inside it; the normalised score, which does
    not change with the norm, flags it."""
    rng = np.random.default_rng(5)
    x = _gaussian(4000, 0)
    scales = np.exp(rng.uniform(np.log(0.3), np.log(3.0), (len(x), 1)))
    train, dev = x[:3000] * scales[:3000], x[3000:] * scales[3000:]
    raw, unit = fit_domain(train, components=8), fit_domain(train, components=8, l2_normalize=True)
    assert unit.l2_normalize and not raw.l2_normalize
    base = _gaussian(1, 9)
    np.testing.assert_allclose(domain_scores(np.r_[base, 3 * base, base / 4], unit), domain_scores(base, unit)[0],
                               rtol=1e-9)
    t_raw, t_unit = dev_threshold(domain_scores(dev, raw)), dev_threshold(domain_scores(dev, unit))
    # another direction: the weak directions swapped for a fresh random pattern, norm as in training
    other = np.abs(np.random.default_rng(11).normal(size=40)) * 1.2
    other *= np.median(np.linalg.norm(train, axis=1)) / np.linalg.norm(other)
    assert domain_scores(other[None], unit)[0] > t_unit and domain_scores(other[None], raw)[0] <= t_raw
    assert round(float(t_unit), 2) == 1.75  # regression value


def test_fit_refuses_too_few_samples() -> None:
    with pytest.raises(ValueError, match="N >= 3"):
        fit_domain(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="quantile"):
        dev_threshold([1.0, 2.0], 1.0)


def test_judge_in_domain_confident_label_and_generic() -> None:
    labels = ("coffee mug", "espresso", "American robin")
    policy = DomainPolicy(2.0, 0.5, labels)
    probs = np.array([0.7, 0.2, 0.1])
    inside = judge(1.5, probs, policy)
    assert inside.in_domain and inside.caption == "" and inside.label == "" and inside.label_prob == pytest.approx(0.7)
    assert inside.top_label == "coffee mug"  # reported, not named
    named = judge(3.0, probs, policy)
    assert not named.in_domain and named.caption == "a photo of a coffee mug" and named.label == "coffee mug"
    assert judge(3.0, np.array([0.1, 0.1, 0.8]), policy).caption == "a photo of an American robin"
    unsure = judge(3.0, np.array([0.4, 0.35, 0.25]), policy)  # below the 0.5 label threshold
    assert unsure.caption == GENERIC_CAPTION and unsure.label == "" and unsure.label_prob == pytest.approx(0.4)
    assert unsure.top_label == "coffee mug"
    no_classifier = judge(3.0, None, DomainPolicy(2.0))
    assert no_classifier.caption == GENERIC_CAPTION and no_classifier.label_prob == 0.0
    assert no_classifier.top_label == ""
    assert judge(2.0, None, DomainPolicy(2.0)).in_domain  # the threshold itself is in domain
    with pytest.raises(ValueError, match="2 class probabilities for 3 labels"):
        judge(3.0, np.array([0.5, 0.5]), policy)
    with pytest.raises(ValueError, match="domain score"):
        judge(float("nan"), probs, policy)


def test_policy_round_trip_and_validation() -> None:
    policy = DomainPolicy(1.3, 0.6, ("tench", "goldfish"))
    assert DomainPolicy.from_dict(policy.to_dict()) == policy
    with pytest.raises(ValueError, match="score_threshold"):
        DomainPolicy(0.0)
    with pytest.raises(ValueError, match="label_threshold"):
        DomainPolicy(1.0, 1.5)
    with pytest.raises(ValueError, match="lacks"):
        DomainPolicy.from_dict({"labels": []})
    assert with_article("ostrich") == "an ostrich" and with_article("tench") == "a tench"

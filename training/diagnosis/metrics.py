"""Classification metrics for the symptom checker: top-k accuracy, expected calibration error (ECE) with
its reliability diagram, and temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural
Networks": ECE, equation 3, with equal-width confidence bins; temperature scaling, section 4.2)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def topk_accuracy(scores: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Share of rows whose target is among the k highest scores (ties broken by index)."""
    if len(targets) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float((top == targets[:, None]).any(axis=1).mean())


def nll(logits: np.ndarray, targets: np.ndarray) -> float:
    return float(-log_softmax(logits)[np.arange(len(targets)), targets].mean())


@dataclass
class Reliability:
    ece: float
    bin_confidence: np.ndarray  # (bins,) mean top-1 confidence per bin (nan where empty)
    bin_accuracy: np.ndarray  # (bins,) top-1 accuracy per bin (nan where empty)
    bin_count: np.ndarray  # (bins,)


def reliability(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15) -> Reliability:
    """Top-1 confidence vs accuracy in equal-width bins; ECE = sum_b |B_b|/N * |acc_b - conf_b|."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == targets).astype(np.float64)
    idx = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
    ece = float(np.nansum(count / max(1, len(targets)) * np.abs(acc - mean_conf)))
    return Reliability(ece=ece, bin_confidence=mean_conf, bin_accuracy=acc, bin_count=count)


def fit_temperature(logits: np.ndarray, targets: np.ndarray, lo: float = 0.05, hi: float = 20.0,
                    iters: int = 60) -> float:
    """The T minimising NLL(logits / T) on held-out rows: golden-section search over log T (NLL is unimodal
    in T for fixed logits)."""
    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5) - 1) / 2

    def f(log_t: float) -> float:
        return nll(logits / np.exp(log_t), targets)

    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return float(np.exp((a + b) / 2))


def classification_metrics(logits: np.ndarray, targets: np.ndarray, n_positive: np.ndarray,
                           min_positive: int = 3) -> dict[str, float]:
    """top-1/top-5 overall and for rows with >= min_positive present findings, NLL and ECE (15 bins)."""
    probs = np.exp(log_softmax(logits))
    rich = n_positive >= min_positive
    return {"top1": topk_accuracy(logits, targets, 1), "top5": topk_accuracy(logits, targets, 5),
            f"top1_ge{min_positive}": topk_accuracy(logits[rich], targets[rich], 1),
            f"top5_ge{min_positive}": topk_accuracy(logits[rich], targets[rich], 5),
            f"share_ge{min_positive}": float(rich.mean()) if len(rich) else float("nan"),
            "nll": nll(logits, targets), "ece": reliability(probs, targets).ece, "n": float(len(targets))}


def plot_reliability(path: Path, curves: dict[str, Reliability], title: str) -> Path:
    """Reliability diagram (accuracy vs confidence per bin, one line per system) over a bin-count histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect calibration")
    n_bins = len(next(iter(curves.values())).bin_count)
    width = 1.0 / n_bins / (len(curves) + 1)
    for i, (name, r) in enumerate(curves.items()):
        ok = r.bin_count > 0
        top.plot(r.bin_confidence[ok], r.bin_accuracy[ok], marker="o", label=f"{name} (ECE {100 * r.ece:.1f}%)")
        centres = (np.arange(n_bins) + 0.5) / n_bins
        bottom.bar(centres + (i - len(curves) / 2 + 0.5) * width, r.bin_count, width=width, label=name)
    top.set_ylabel("top-1 accuracy")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.grid(alpha=0.3)
    top.legend(loc="upper left")
    top.set_title(title)
    bottom.set_xlabel("top-1 confidence")
    bottom.set_ylabel("patients")
    bottom.set_yscale("log")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""Scores of extracted (symptom id, present) pairs against expected ones, and the threshold sweep.

    scores = pair_scores(predicted, expected)   # micro precision / recall / F1 over all descriptions
    best = sweep(lambda t: predict_at(t), expected, thresholds)

A pair counts only with the right status: "no fever" read as fever present is one false positive
(fever, present) and one false negative (fever, absent). `term_*` ignore the status, so the gap between the
two is what negation handling costs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Pair = tuple[str, bool]


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "tp": float(tp), "fp": float(fp), "fn": float(fn)}


def pair_scores(predicted: Sequence[set[Pair]], expected: Sequence[set[Pair]]) -> dict[str, Any]:
    if len(predicted) != len(expected):
        raise ValueError(f"{len(predicted)} predictions for {len(expected)} descriptions")
    out: dict[str, Any] = {"descriptions": len(expected)}
    for name, keep in (("all", None), ("present", True), ("absent", False)):
        tp = fp = fn = 0
        for pred, gold in zip(predicted, expected, strict=True):
            p = {x for x in pred if keep is None or x[1] == keep}
            g = {x for x in gold if keep is None or x[1] == keep}
            tp, fp, fn = tp + len(p & g), fp + len(p - g), fn + len(g - p)
        out[name] = _prf(tp, fp, fn)
    tp = fp = fn = 0
    for pred, gold in zip(predicted, expected, strict=True):
        pt, gt = {x[0] for x in pred}, {x[0] for x in gold}
        tp, fp, fn = tp + len(pt & gt), fp + len(pt - gt), fn + len(gt - pt)
    out["term"] = _prf(tp, fp, fn)
    out["exact_descriptions"] = sum(p == g for p, g in zip(predicted, expected, strict=True)) / max(1, len(expected))
    return out


def sweep(predict_at: Callable[[float], Sequence[set[Pair]]], expected: Sequence[set[Pair]],
          thresholds: Sequence[float]) -> dict[str, Any]:
    """The threshold with the best F1 of (term, status) pairs (ties: the higher threshold) and the curve."""
    curve = []
    for t in thresholds:
        s = pair_scores(predict_at(t), expected)["all"]
        curve.append({"threshold": float(t), "precision": s["precision"], "recall": s["recall"], "f1": s["f1"]})
    best = max(curve, key=lambda c: (round(c["f1"], 6), c["threshold"]))
    return {"threshold": best["threshold"], "f1": best["f1"], "precision": best["precision"],
            "recall": best["recall"], "curve": curve}

"""Top-1/top-5 accuracy and calibration of a diagnosis checkpoint on held-out synthetic patients, against a
naive-Bayes baseline on the same knowledge-base table, in one run: a table on stdout, JSON, and a
reliability diagram (PNG).

    nui eval diagnosis --checkpoint runs/diagnosis_small --data data/diagnosis \
        --out docs/diagnosis_eval.json --plot docs/diagnosis_reliability.png

Naive Bayes scores disease d by log P(d) + sum over present s of log p(s|d) + sum over absent s of
log(1 - p(s|d)) + log P(sex|d) + log P(age bucket|d), with p(s|d) the table's probability clipped to
[eps, 1 - eps] (eps also stands in for symptoms the table does not list for d: noise), a uniform prior
(the patient splits are balanced over diseases), and the age-bucket distribution implied by d's age bands.
Both systems get the dev split for their calibration knobs: the model its temperature (fitted on dev at the
end of training, stored in the weights; the table also shows T = 1), naive Bayes its eps and a temperature,
both chosen here on dev.
The second table repeats the test with a share of each patient's findings hidden (seeded), as a dialog in
progress would see them.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.diagnosis import AGE_EDGES_YEARS, N_AGE_BUCKETS
from training.diagnosis.knowledge import KnowledgeBase
from training.diagnosis.metrics import (
    classification_metrics,
    fit_temperature,
    log_softmax,
    plot_reliability,
    reliability,
)
from training.diagnosis.model_io import load_model, predict_logits
from training.diagnosis.patients import Patients, hide_share
from training.diagnosis.train import load_split

logger = logging.getLogger(__name__)

EPS_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1)


def age_bucket_probabilities(kb: KnowledgeBase, smoothing: float = 0.01) -> np.ndarray:
    """(D, A) P(age bucket | d) from each disease's age bands (uniform over whole years inside a band)."""
    edges = np.array((0.0, *AGE_EDGES_YEARS, np.inf))
    out = np.zeros((kb.n_diseases, N_AGE_BUCKETS))
    for d, disease in enumerate(kb.diseases):
        total = sum(w for w, _, _ in disease.age_bands)
        for w, lo, hi in disease.age_bands:
            years = np.arange(lo, hi + 1)
            counts = np.histogram(years, bins=edges)[0]
            out[d] += w / total * counts / len(years)
    out = out + smoothing
    return out / out.sum(axis=1, keepdims=True)


class NaiveBayes:
    """The baseline of the module docstring, vectorised over patients."""

    def __init__(self, kb: KnowledgeBase, eps: float) -> None:
        p = np.clip(kb.probability_matrix().astype(np.float64), eps, 1.0 - eps)  # (D, S)
        self.eps = eps
        self.log_present = np.log(p).T  # (S, D)
        self.log_absent = np.log1p(-p).T
        female = np.clip(np.array([d.female_probability for d in kb.diseases]), 0.01, 0.99)
        self.log_sex = np.stack([np.log(female), np.log1p(-female)], axis=1)  # (D, 2) [female, male]
        self.log_age = np.log(age_bucket_probabilities(kb))  # (D, A)
        self.n_symptoms = kb.n_symptoms

    def logits(self, patients: Patients, batch_size: int = 2048) -> np.ndarray:
        out = []
        for start in range(0, len(patients), batch_size):
            rows = np.arange(start, min(start + batch_size, len(patients)))
            ev = patients.dense(rows, self.n_symptoms)
            scores = (ev > 0).astype(np.float64) @ self.log_present + (ev < 0).astype(np.float64) @ self.log_absent
            sex = patients.sex[rows]
            for code, col in ((1, 0), (2, 1)):
                scores[sex == code] += self.log_sex[:, col]
            age = patients.age_years[rows].astype(np.float64)
            bucket = np.searchsorted(np.array(AGE_EDGES_YEARS), age, side="right")
            known = age >= 0
            scores[known] += self.log_age[:, bucket[known]].T
            out.append(scores)
        return np.concatenate(out) if out else np.zeros((0, self.log_present.shape[1]))


def fit_naive_bayes(kb: KnowledgeBase, dev: Patients) -> tuple[NaiveBayes, float, list[dict[str, float]]]:
    """The eps with the lowest dev NLL (after its own temperature); returns (model, temperature, grid)."""
    targets = dev.disease.astype(np.int64)
    grid, best = [], None
    for eps in EPS_GRID:
        nb = NaiveBayes(kb, eps)
        logits = nb.logits(dev)
        t = fit_temperature(logits, targets, lo=0.1, hi=100.0)
        m = classification_metrics(logits / t, targets, dev.n_positive())
        grid.append({"eps": eps, "temperature": t, "dev_nll": m["nll"], "dev_top1": m["top1"]})
        if best is None or m["nll"] < best[0]:
            best = (m["nll"], nb, t)
    assert best is not None
    return best[1], best[2], grid


def _table(title: str, rows: list[dict[str, Any]]) -> str:
    lines = [title, f"{'system':<30} {'top-1 %':>8} {'top-5 %':>8} {'top-1 >=3 %':>12} {'top-5 >=3 %':>12} "
                    f"{'NLL':>7} {'ECE %':>7}"]
    for r in rows:
        lines.append(f"{r['system']:<30} {100 * r['top1']:8.2f} {100 * r['top5']:8.2f} {100 * r['top1_ge3']:12.2f} "
                     f"{100 * r['top5_ge3']:12.2f} {r['nll']:7.3f} {100 * r['ece']:7.2f}")
    return "\n".join(lines)


def evaluate(checkpoint: Path, data_dir: Path, split: str = "test", hidden_share: float = 0.5,
             seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """(results JSON, reliability curves) for a checkpoint on a split; see the module docstring."""
    kb = KnowledgeBase.load(data_dir)
    model, weights = load_model(checkpoint)
    if model.cfg.kb_fingerprint and model.cfg.kb_fingerprint != kb.fingerprint():
        raise ValueError(f"{weights} was trained on another knowledge base than {data_dir} "
                         f"(fingerprint {model.cfg.kb_fingerprint[:12]} vs {kb.fingerprint()[:12]})")
    test = load_split(data_dir, split, kb)
    dev = load_split(data_dir, "dev", kb)
    targets = test.disease.astype(np.int64)
    t0 = time.perf_counter()
    nb, nb_t, grid = fit_naive_bayes(kb, dev)
    nb_fit_s = time.perf_counter() - t0
    temperature = float(model.temperature)
    results: dict[str, Any] = {
        "checkpoint": str(weights), "data": str(data_dir), "split": split, "patients": len(test),
        "diseases": kb.n_diseases, "symptoms": kb.n_symptoms, "kb_fingerprint": kb.fingerprint(),
        "model_temperature": temperature, "naive_bayes": {"eps": nb.eps, "temperature": nb_t, "grid": grid,
                                                          "fit_seconds": nb_fit_s},
        "hidden_share": hidden_share, "tables": {}}
    curves = {}
    for name, pts in (("all findings", test), (f"{int(100 * hidden_share)}% of findings hidden",
                                               hide_share(test, hidden_share, seed))):
        n_pos = pts.n_positive()
        t1 = time.perf_counter()
        model_logits = predict_logits(model, pts)
        model_s = time.perf_counter() - t1
        t1 = time.perf_counter()
        nb_logits = nb.logits(pts) / nb_t
        nb_s = time.perf_counter() - t1
        rows = [{"system": f"MLP {model.cfg.hidden}x{model.cfg.n_blocks} (T={temperature:.2f})",
                 **classification_metrics(model_logits, targets, n_pos), "ms_per_patient": 1e3 * model_s / len(pts)}]
        if temperature != 1.0:
            rows.append({"system": "MLP, uncalibrated (T=1)",
                         **classification_metrics(model_logits * temperature, targets, n_pos)})
        rows.append({"system": f"naive Bayes (eps={nb.eps:g}, T={nb_t:.2f})",
                     **classification_metrics(nb_logits, targets, n_pos), "ms_per_patient": 1e3 * nb_s / len(pts)})
        results["tables"][name] = rows
        if name == "all findings":
            curves = {"MLP": reliability(np.exp(log_softmax(model_logits)), targets),
                      "naive Bayes": reliability(np.exp(log_softmax(nb_logits)), targets)}
    return results, curves


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nui eval diagnosis", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="run folder, checkpoint folder or .safetensors")
    p.add_argument("--data", type=Path, default=Path("data/diagnosis"), help="`nui data diagnosis --out` folder")
    p.add_argument("--split", default="test", choices=("test", "dev"))
    p.add_argument("--hidden-share", type=float, default=0.5, help="findings hidden in the partial-evidence table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write results JSON here")
    p.add_argument("--plot", type=Path, help="reliability diagram PNG (default: next to --out)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        results, curves = evaluate(args.checkpoint, args.data, args.split, args.hidden_share, args.seed)
    except (OSError, ValueError) as e:
        p.error(str(e))
    print(f"\n{results['patients']} held-out patients ({results['split']}), {results['diseases']} diseases, "
          f"{results['symptoms']} symptoms")
    for name, rows in results["tables"].items():
        print("\n" + _table(name, rows))
    plot = args.plot or (args.out.with_suffix(".png") if args.out else None)
    if plot is not None:
        plot_reliability(plot, curves, f"{results['split']} patients, all findings")
        results["plot"] = str(plot)
        print(f"\nreliability diagram -> {plot}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0

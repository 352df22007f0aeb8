"""`nui eval absent`: does a "no" answer lower the diseases that usually have that symptom? The exported
diagnosis engine against naive Bayes on its own knowledge tables (the answer model the dialog assumes).

    nui eval absent --repo model_repository --data data/diagnosis [--version N] [--split dev] \
        [--patients 1000] [--out docs/diagnosis/absent_dev.json]

Two checks. The README example: +Headache +Vomiting with fever unknown, then with "no fever": the
probability mass on the diseases with P(fever | d) >= 0.5 and the top diseases. The systematic one: each
of the first N patients of the split starts from 2 random present findings (seeded); then one "no" is
added for a symptom the patient lacks that naive Bayes' current top-1 usually has (P >= 0.5); the
figure is how much of the probability mass on the diseases that usually have the denied symptom remains
(median ratio after / before). Naive Bayes roughly halves it; a model that ignores "no" keeps it at ~1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engines.engine import load_engine
from models.diagnosis_dialog import DiagnosisTables, answer_model, kb_posterior
from training.diagnosis.patients import Patients

logger = logging.getLogger(__name__)

Posterior = Callable[[np.ndarray], np.ndarray]  # (B, S) evidence +1/-1/0 -> (B, D) probabilities
FEVER, HEADACHE, VOMITING = "HP:0001945", "HP:0002315", "HP:0002013"
FREQUENT = 0.5  # P(symptom | disease) at or above which a disease "usually has" the symptom


def denial_states(truth: np.ndarray, probabilities: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, denied) for patients `truth` (B, S): start = 2 random present findings per patient; denied
    (B,) = a symptom the patient lacks that naive Bayes' top-1 of `start` usually has, -1 where none."""
    rng = np.random.default_rng(seed)
    b, s = truth.shape
    start = np.zeros((b, s), dtype=np.float32)
    for i in range(b):
        present = np.flatnonzero(truth[i] > 0)
        if len(present):
            start[i, rng.choice(present, size=min(2, len(present)), replace=False)] = 1
    top1 = kb_posterior(start, answer_model(probabilities)).argmax(axis=1)
    denied = np.full(b, -1)
    for i in range(b):
        candidates = np.flatnonzero((probabilities[top1[i]] >= FREQUENT) & (truth[i] <= 0) & (start[i] == 0))
        if len(candidates):
            denied[i] = rng.choice(candidates)
    return start, denied


def denial_effect(posterior: Posterior, start: np.ndarray, denied: np.ndarray, probabilities: np.ndarray,
                  targets: np.ndarray) -> dict[str, float]:
    """How one "no" (to `denied`, rows where it is >= 0) moves `posterior`: the mass on the diseases that
    usually have the denied symptom before/after, its median ratio, P(true disease) and top-1 before/after."""
    ok = denied >= 0
    before = start[ok]
    after = before.copy()
    after[np.arange(len(after)), denied[ok]] = -1
    p0, p1 = posterior(before), posterior(after)
    usual = probabilities[:, denied[ok]].T >= FREQUENT  # (n, D)
    m0, m1 = (p0 * usual).sum(axis=1), (p1 * usual).sum(axis=1)
    t = targets[ok]
    rows = np.arange(len(t))
    return {"patients": float(ok.sum()), "mass_before": float(m0.mean()), "mass_after": float(m1.mean()),
            "median_mass_ratio": float(np.median(m1 / np.maximum(m0, 1e-12))),
            "p_true_before": float(p0[rows, t].mean()), "p_true_after": float(p1[rows, t].mean()),
            "top1_before": float((p0.argmax(axis=1) == t).mean()), "top1_after": float((p1.argmax(axis=1) == t).mean())}


def example(posterior: Posterior, tables: DiagnosisTables, top_k: int = 5) -> dict[str, Any]:
    """+Headache +Vomiting, fever unknown vs "no fever": fever-disease mass and the top diseases."""
    ids = {s.id: i for i, s in enumerate(tables.symptoms)}
    fever = ids[FEVER]
    evidence = np.zeros((2, len(tables.symptoms)), dtype=np.float32)
    evidence[:, [ids[HEADACHE], ids[VOMITING]]] = 1
    evidence[1, fever] = -1
    p = posterior(evidence)
    fever_diseases = tables.probabilities[:, fever] >= FREQUENT
    out = {}
    for row, label in enumerate(("fever unknown", "no fever")):
        top = np.argsort(-p[row])[:top_k]
        out[label] = {"fever_disease_mass": float(p[row, fever_diseases].sum()),
                      "top": [[tables.diseases[d].name, round(float(p[row, d]), 4)] for d in top]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nui eval absent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True)
    p.add_argument("--model-name", default="diagnosis")
    p.add_argument("--version", type=int, default=None, help="default: the highest version")
    p.add_argument("--data", type=Path, required=True, help="`nui data diagnosis` folder (patients)")
    p.add_argument("--split", default="dev", choices=["dev", "test"])
    p.add_argument("--patients", type=int, default=1000, help="first N patients of the split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the summary JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        engine = load_engine(args.repo, args.model_name, args.version, intra_op_threads=1)
        tables = DiagnosisTables.load(args.repo / args.model_name / str(engine.version))
        patients = Patients.load(args.data / f"patients_{args.split}.npz")
    except (OSError, ValueError) as e:
        print(f"nui eval absent: {e}", file=sys.stderr)
        return 1
    answers = answer_model(tables.probabilities)

    def model(evidence: np.ndarray) -> np.ndarray:
        n = len(evidence)
        probs: np.ndarray = engine.run({"evidence": evidence.astype(np.float32),
                                        "age_years": np.full(n, -1.0, dtype=np.float32),
                                        "sex": np.zeros(n, dtype=np.int64)})["probs"]
        return probs

    systems: dict[str, Posterior] = {f"{engine.name} v{engine.version}": model,
                                     "naive Bayes": lambda ev: kb_posterior(ev, answers)}
    rows = np.arange(min(args.patients, len(patients)))
    start, denied = denial_states(patients.dense(rows, len(tables.symptoms)), tables.probabilities, args.seed)
    targets = patients.disease[rows].astype(np.int64)
    summary: dict[str, Any] = {"split": args.split, "seed": args.seed, "example": {}, "one_no_answer": {}}
    for name, post in systems.items():
        summary["example"][name] = example(post, tables)
        summary["one_no_answer"][name] = denial_effect(post, start, denied, tables.probabilities, targets)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0

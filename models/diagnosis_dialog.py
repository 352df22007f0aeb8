"""Symptom-checker dialog: which question to ask next, and the knowledge-base tables serving reads.

Numpy only (no torch): the server imports this module. Shapes: D diseases, S symptoms, B batch.

Next question = the unknown symptom with the largest expected information gain (EIG) about the disease,
  EIG(s) = H(p) - [P(yes) H(p | yes) + P(no) H(p | no)],
where p (D,) is the model's posterior given the evidence so far, the answer model is the knowledge base's
P(symptom | disease) = q (floored at `floor` and capped at 1 - floor: unannotated symptoms still occur as
noise), P(yes) = sum_d p(d) q(d, s), and p(. | yes) is proportional to p(d) q(d, s) (Bayes' rule); the
identity EIG(s) = H(answer) - E_d H(answer | d) makes it two (D,) x (D, S) products. The model
itself is *not* re-run on the hypothetical answers (that would cost 2 S engine rows per request); the KB
update is the one-step look-ahead, the model re-scores the evidence once the real answer is known.

`DiagnosisTables` is what an exported diagnosis engine ships next to `model.onnx` (see
engines/export_diagnosis.py): disease and symptom metadata as JSON and P(symptom | disease) as a sparse CSV.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DISEASES_FILE = "diseases.json"
SYMPTOMS_FILE = "symptoms.json"
PROBABILITIES_FILE = "symptom_given_disease.csv"
DEFAULT_FLOOR = 0.01  # P(symptom | disease) of an unannotated pair (noise findings exist in real patients)
SEX_CODES = {"": 0, "female": 1, "male": 2}


@dataclass(frozen=True)
class DiseaseInfo:
    id: str  # "ICD10:E11.9", "ORPHA:558", "OMIM:154700"
    name: str
    icd10: str = ""
    xrefs: tuple[str, ...] = ()  # other ids of the same condition (OMIM/ORPHA/...)


@dataclass(frozen=True)
class SymptomInfo:
    id: str  # "HP:0002315"
    name: str
    lay_names: tuple[str, ...] = ()
    synonyms: tuple[str, ...] = ()
    sex: str = ""  # "female"/"male": only that sex can have it


@dataclass
class DiagnosisTables:
    """The knowledge base as serving sees it; indices match the model's input (S) and output (D) order."""

    diseases: list[DiseaseInfo]
    symptoms: list[SymptomInfo]
    probabilities: np.ndarray  # (D, S) float32: P(symptom present | disease), 0 where unannotated
    symptom_index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.probabilities.shape != (len(self.diseases), len(self.symptoms)):
            raise ValueError(f"probabilities shape {self.probabilities.shape} does not match "
                             f"{len(self.diseases)} diseases x {len(self.symptoms)} symptoms")
        self.symptom_index = {s.id: i for i, s in enumerate(self.symptoms)}

    @property
    def symptom_sex(self) -> np.ndarray:
        """(S,) int8: 0 any sex, 1 female only, 2 male only."""
        return np.array([SEX_CODES.get(s.sex, 0) for s in self.symptoms], dtype=np.int8)

    def save(self, folder: Path) -> list[Path]:
        """Write the three files; returns their paths."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / DISEASES_FILE, folder / SYMPTOMS_FILE, folder / PROBABILITIES_FILE]
        paths[0].write_text(json.dumps([_disease_dict(d) for d in self.diseases], ensure_ascii=False) + "\n",
                            encoding="utf-8")
        paths[1].write_text(json.dumps([_symptom_dict(s) for s in self.symptoms], ensure_ascii=False) + "\n",
                            encoding="utf-8")
        rows, cols = np.nonzero(self.probabilities)
        with open(paths[2], "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["disease_index", "symptom_index", "probability"])
            for d, s in zip(rows.tolist(), cols.tolist(), strict=True):
                w.writerow([d, s, f"{self.probabilities[d, s]:.4g}"])
        return paths

    @classmethod
    def load(cls, folder: Path) -> DiagnosisTables:
        try:
            diseases = [DiseaseInfo(id=d["id"], name=d["name"], icd10=d.get("icd10", ""),
                                    xrefs=tuple(d.get("xrefs", ())))
                        for d in json.loads((folder / DISEASES_FILE).read_text(encoding="utf-8"))]
            symptoms = [SymptomInfo(id=s["id"], name=s["name"], lay_names=tuple(s.get("lay_names", ())),
                                    synonyms=tuple(s.get("synonyms", ())), sex=s.get("sex", ""))
                        for s in json.loads((folder / SYMPTOMS_FILE).read_text(encoding="utf-8"))]
            probabilities = np.zeros((len(diseases), len(symptoms)), dtype=np.float32)
            with open(folder / PROBABILITIES_FILE, newline="", encoding="utf-8") as f:
                for r in csv.DictReader(f):
                    probabilities[int(r["disease_index"]), int(r["symptom_index"])] = float(r["probability"])
        except (OSError, KeyError, ValueError, IndexError, json.JSONDecodeError) as e:
            raise ValueError(f"{folder} does not hold valid diagnosis tables: {e}") from e
        return cls(diseases=diseases, symptoms=symptoms, probabilities=probabilities)


def _disease_dict(d: DiseaseInfo) -> dict[str, Any]:
    return {"id": d.id, "name": d.name, "icd10": d.icd10, "xrefs": list(d.xrefs)}


def _symptom_dict(s: SymptomInfo) -> dict[str, Any]:
    return {"id": s.id, "name": s.name, "lay_names": list(s.lay_names), "synonyms": list(s.synonyms),
            "sex": s.sex}


def entropy_bits(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in bits along `axis` (0 log 0 = 0)."""
    p = np.asarray(p, dtype=np.float64)
    return -(p * np.log2(np.where(p > 0, p, 1.0))).sum(axis=axis)


def binary_entropy_bits(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return entropy_bits(np.stack([x, 1.0 - x]), axis=0)


@dataclass(frozen=True)
class AnswerModel:
    """P(yes | disease) per symptom and its binary entropy, computed once per knowledge base."""

    q: np.ndarray  # (D, S) float64: the KB table clipped to [floor, 1 - floor]
    h: np.ndarray  # (D, S) float64: H(answer | disease) in bits


def answer_model(probabilities: np.ndarray, floor: float = DEFAULT_FLOOR) -> AnswerModel:
    """The answer model used to predict answers: the KB's P(symptom | disease) clipped to [floor, 1 - floor]."""
    if not 0.0 < floor < 0.5:
        raise ValueError(f"floor must be in (0, 0.5), got {floor}")
    q = np.clip(probabilities.astype(np.float64), floor, 1.0 - floor)
    return AnswerModel(q=q, h=binary_entropy_bits(q))


def expected_information_gain(posterior: np.ndarray, answers: AnswerModel) -> np.ndarray:
    """(S,) EIG in bits of asking each symptom, for a posterior (D,).

    EIG(s) = H(p) - E_answer[H(p | answer)] = I(disease; answer) = H(answer) - E_d[H(answer | d)], which
    needs two matrix-vector products instead of a (D, S) posterior per answer.
    """
    p = np.asarray(posterior, dtype=np.float64)
    p = p / p.sum()
    p_yes = p @ answers.q  # (S,)
    return np.maximum(binary_entropy_bits(p_yes) - p @ answers.h, 0.0)


def kb_posterior(evidence: np.ndarray, answers: AnswerModel) -> np.ndarray:
    """(B, D) naive-Bayes posterior of the answer model itself (uniform prior): the dialog's own yardstick.

    evidence (B, S): +1 present, -1 absent, 0 unknown.
    """
    present, absent = (evidence > 0).astype(np.float64), (evidence < 0).astype(np.float64)
    log_p = present @ np.log(answers.q).T + absent @ np.log1p(-answers.q).T  # (B, D)
    p = np.exp(log_p - log_p.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Question:
    symptom: int  # index into the symptom table
    information_gain_bits: float
    p_yes: float  # predicted probability of a "yes"


def next_question(posterior: np.ndarray, evidence: np.ndarray, answers: AnswerModel, *,
                  sex: int = 0, symptom_sex: np.ndarray | None = None,
                  min_gain_bits: float = 1e-4) -> Question | None:
    """The unknown symptom (evidence == 0) with the largest EIG; None when nothing is worth asking.

    evidence (S,): +1 present, -1 absent, 0 unknown. With a known sex (1 female, 2 male) symptoms only the
    other sex can have are not asked. Ties go to the lower symptom index (deterministic).
    """
    p = np.asarray(posterior, dtype=np.float64)
    gain = expected_information_gain(p, answers)
    askable = np.asarray(evidence) == 0
    if sex in (1, 2) and symptom_sex is not None:
        askable &= (symptom_sex == 0) | (symptom_sex == sex)
    gain = np.where(askable, gain, -1.0)
    best = int(np.argmax(gain))
    if gain[best] < min_gain_bits:
        return None
    p_yes = float((p / p.sum()) @ answers.q[:, best])
    return Question(symptom=best, information_gain_bits=float(gain[best]), p_yes=p_yes)


def lookahead_rows(evidence: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(2 C, S) evidence rows: the case with each candidate answered yes (first C rows), then no."""
    rows = np.repeat(np.asarray(evidence, dtype=np.float32)[None, :], 2 * len(candidates), axis=0)
    rows[np.arange(len(candidates)), candidates] = 1.0
    rows[len(candidates) + np.arange(len(candidates)), candidates] = -1.0
    return rows


def lookahead_gain(posterior: np.ndarray, candidates: np.ndarray, rescored: np.ndarray,
                   answers: AnswerModel) -> np.ndarray:
    """(C,) EIG of each candidate with the *model's* posteriors after a yes / a no (`rescored`, (2 C, D) from
    `lookahead_rows`) and the answer probabilities from the knowledge base: H(p) - E_answer H(model | answer)."""
    p = np.asarray(posterior, dtype=np.float64)
    p = p / p.sum()
    c = len(candidates)
    p_yes = p @ answers.q[:, candidates]  # (C,)
    h_after = p_yes * entropy_bits(rescored[:c]) + (1.0 - p_yes) * entropy_bits(rescored[c:])
    return np.asarray(entropy_bits(p) - h_after)


def question_text(symptom: SymptomInfo) -> str:
    """A plain-language yes/no question: the layperson name when HPO has one, else the term name."""
    name = symptom.lay_names[0] if symptom.lay_names else symptom.name
    if not name[:2].isupper():  # keep acronyms ("EEG abnormality") as written
        name = name[:1].lower() + name[1:]
    return f"Do you have this symptom: {name}?"


# ---- dialog simulation ----------------------------------------------------------------------------------

Posterior = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (evidence, age, sex) -> (B, D)


@dataclass
class SimulationResult:
    patients: int
    max_turns: int
    turns_to_top1: np.ndarray  # (N,) questions asked until the true disease ranked 1st; -1 = not within cap
    turns_to_top5: np.ndarray  # (N,) same for top-5
    initial_findings: np.ndarray  # (N,) present findings given before the first question

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"patients": self.patients, "max_turns": self.max_turns,
                               "initial_present_findings_mean": float(self.initial_findings.mean())}
        for k, turns in (("top1", self.turns_to_top1), ("top5", self.turns_to_top5)):
            reached = turns >= 0
            capped = np.where(reached, turns, self.max_turns)
            out[k] = {"reached_rate": float(reached.mean()),
                      "mean_turns_when_reached": float(turns[reached].mean()) if reached.any() else None,
                      "median_turns_when_reached": float(np.median(turns[reached])) if reached.any() else None,
                      "mean_turns_capped": float(capped.mean()),
                      "reached_at_start_rate": float((turns == 0).mean())}
        return out


def simulate(posterior_fn: Posterior, answers: AnswerModel, truth: np.ndarray, disease: np.ndarray,
             age_years: np.ndarray, sex: np.ndarray, *, max_turns: int = 20, start_findings: int = 2,
             seed: int = 0, symptom_sex: np.ndarray | None = None, lookahead: int = 0) -> SimulationResult:
    """Simulated interviews, all patients in lock step (one batched posterior call per turn).

    truth (N, S) int8: the patient's findings (+1 present; anything else is answered "no"). Each patient
    starts from 1..start_findings of its present findings (drawn with `seed`), then answers the proposed
    question from `truth` until the true disease is top-1 or `max_turns` questions were asked. With
    `lookahead` > 0 the best `lookahead` symptoms by KB EIG are re-scored by re-running `posterior_fn` on
    both hypothetical answers (`lookahead_gain`), and the best of those is asked.
    """
    n, s = truth.shape
    rng = np.random.default_rng(seed)
    evidence = np.zeros((n, s), dtype=np.float32)
    initial = np.zeros(n, dtype=np.int64)
    for i in range(n):
        present = np.flatnonzero(truth[i] > 0)
        k = min(len(present), int(rng.integers(1, start_findings + 1)))
        evidence[i, rng.choice(present, size=k, replace=False)] = 1.0
        initial[i] = k
    top1 = np.full(n, -1, dtype=np.int64)
    top5 = np.full(n, -1, dtype=np.int64)
    active = np.ones(n, dtype=bool)
    for turn in range(max_turns + 1):
        rows = np.flatnonzero(active)
        if not len(rows):
            break
        post = posterior_fn(evidence[rows], age_years[rows], sex[rows])  # (b, D)
        rank = (post > post[np.arange(len(rows)), disease[rows]][:, None]).sum(axis=1)
        top5[rows[(rank < 5) & (top5[rows] < 0)]] = turn
        done = rank == 0
        top1[rows[done]] = turn
        active[rows[done]] = False
        if turn == max_turns:
            break
        for j in np.flatnonzero(~done):
            i = rows[j]
            question = next_question(post[j], evidence[i], answers, sex=int(sex[i]), symptom_sex=symptom_sex)
            if question is None:
                active[i] = False
                continue
            symptom = question.symptom
            if lookahead > 0:
                gain = np.where(evidence[i] == 0, expected_information_gain(post[j], answers), -1.0)
                if sex[i] in (1, 2) and symptom_sex is not None:
                    gain = np.where((symptom_sex == 0) | (symptom_sex == sex[i]), gain, -1.0)
                candidates = np.argsort(-gain, kind="stable")[:lookahead]
                candidates = candidates[gain[candidates] >= 0]
                hypothetical = lookahead_rows(evidence[i], candidates)
                rescored = posterior_fn(hypothetical, np.repeat(age_years[i:i + 1], len(hypothetical)),
                                        np.repeat(sex[i:i + 1], len(hypothetical)))
                symptom = int(candidates[np.argmax(lookahead_gain(post[j], candidates, rescored, answers))])
            evidence[i, symptom] = 1.0 if truth[i, symptom] > 0 else -1.0
    return SimulationResult(patients=n, max_turns=max_turns, turns_to_top1=top1, turns_to_top5=top5,
                            initial_findings=initial)

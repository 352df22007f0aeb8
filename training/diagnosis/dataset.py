"""Batches of synthetic patients as model tensors, with the training-time hiding of findings.

Two kinds of hiding (recipe `masking`): random hiding of a patient's recorded findings (`hide_findings`),
and dialog states (`dialog_states`): a few present findings plus the answers to the questions a
symptom checker would ask next. A dialog asks about the symptoms of the diseases that are still likely
and the answers are mostly "no", so without such states the model sees few of the absent findings a
conversation produces and learns to ignore them (the first bundled model barely moved on "no" answers).

Every random choice is drawn from a generator seeded by (seed, epoch, batch, rank), so an epoch's batches
and masks are a pure function of the recipe: a resumed run sees exactly what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.diagnosis_dialog import answer_model, binary_entropy_bits
from training.diagnosis.patients import Patients
from training.diagnosis.recipe import MaskingSection


@dataclass
class Batch:
    evidence: torch.Tensor  # (B, S) float32: +1 present, -1 absent, 0 unknown
    age_years: torch.Tensor  # (B,) float32, -1 unknown
    sex: torch.Tensor  # (B,) int64, 0 unknown
    disease: torch.Tensor  # (B,) int64 target

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device) for t in (self.evidence, self.age_years, self.sex, self.disease)))


def hide_findings(evidence: np.ndarray, age: np.ndarray, sex: np.ndarray, m: MaskingSection,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hide random findings (set to 0) and demographics (-1 / 0) in place of a batch; see MaskingSection."""
    b, _ = evidence.shape
    keep_p = np.where(rng.random(b) < m.keep_all, 1.0, rng.uniform(m.min_keep, 1.0, size=b))
    keep = rng.random(evidence.shape) < keep_p[:, None]
    out = np.where(keep, evidence, 0).astype(np.int8)
    if m.min_present > 0:
        short = np.flatnonzero(((out > 0).sum(axis=1) < m.min_present) & ((evidence > 0).sum(axis=1) > 0))
        if len(short):
            # restore the min_present highest-scoring present findings (random scores = a random choice)
            scores = np.where(evidence[short] > 0, rng.random((len(short), evidence.shape[1])), -1.0)
            top = np.argsort(-scores, axis=1)[:, : m.min_present]
            rows = np.repeat(short, top.shape[1])
            cols = top.reshape(-1)
            ok = evidence[rows, cols] > 0
            out[rows[ok], cols[ok]] = evidence[rows[ok], cols[ok]]
    age = np.where(rng.random(b) < m.hide_age, -1, age)
    sex = np.where(rng.random(b) < m.hide_sex, 0, sex)
    return out, age, sex


@dataclass(frozen=True)
class QuestionTable:
    """The knowledge base's answer model in the layout `dialog_states` multiplies with (float32)."""

    log_yes: np.ndarray  # (S, D) log P(yes | disease), the serving dialog's floored table
    log_no: np.ndarray  # (S, D) log P(no | disease)
    q: np.ndarray  # (D, S) P(yes | disease)
    h: np.ndarray  # (D, S) H(answer | disease) in bits

    @classmethod
    def from_probabilities(cls, probabilities: np.ndarray) -> QuestionTable:
        """From the KB's P(symptom | disease) (D, S), floored exactly as the served dialog floors it."""
        a = answer_model(probabilities)
        return cls(log_yes=np.log(a.q).T.astype(np.float32), log_no=np.log1p(-a.q).T.astype(np.float32),
                   q=a.q.astype(np.float32), h=a.h.astype(np.float32))


def dialog_states(truth: np.ndarray, m: MaskingSection, questions: QuestionTable,
                  rng: np.random.Generator) -> np.ndarray:
    """(b, S) int8 evidence a symptom-checker conversation would have reached for patients `truth` (b, S).

    Each row starts from 1..m.dialog_start_present of its present findings; then n ~ U(0,
    m.dialog_max_questions) questions are asked in m.dialog_rounds rounds. A round draws its questions
    among the unknown symptoms with probability increasing in their expected information gain under the
    knowledge base's naive-Bayes posterior of the evidence so far (Gumbel top-k over log EIG: the served
    dialog takes the argmax, sampling covers the other paths a conversation takes), and answers them from
    the record: "yes" where the patient has the finding, "no" otherwise (recorded absent or never asked
    when the patients were drawn: the simulated dialog answers the same way).
    """
    b, s = truth.shape
    present = truth > 0
    out = np.zeros((b, s), dtype=np.int8)
    n_present = present.sum(axis=1)
    n_start = np.minimum(n_present, rng.integers(1, m.dialog_start_present + 1, size=b))
    start_scores = np.where(present, rng.random((b, s)), -1.0)
    order = np.argsort(-start_scores, axis=1)
    shown = np.arange(s)[None, :] < n_start[:, None]  # the first n_start of a random order of present ones
    rows = np.repeat(np.arange(b), s).reshape(b, s)
    out[rows[shown], order[shown]] = 1
    n_questions = rng.integers(0, m.dialog_max_questions + 1, size=b)
    asked = np.zeros(b, dtype=np.int64)
    for r in range(m.dialog_rounds):
        goal = (n_questions * (r + 1)) // m.dialog_rounds
        k = goal - asked  # (b,) questions this round
        if not k.any():
            continue
        log_p = (out > 0).astype(np.float32) @ questions.log_yes + (out < 0).astype(np.float32) @ questions.log_no
        post = np.exp(log_p - log_p.max(axis=1, keepdims=True))
        post /= post.sum(axis=1, keepdims=True)  # (b, D)
        gain = np.maximum(binary_entropy_bits(post @ questions.q) - post @ questions.h, 1e-9)  # (b, S)
        score = np.log(gain) + rng.gumbel(size=(b, s))
        score[out != 0] = -np.inf
        ranked = np.argsort(-score, axis=1)
        pick = np.arange(s)[None, :] < k[:, None]
        r_idx, c_idx = rows[pick], ranked[pick]
        out[r_idx, c_idx] = np.where(present[r_idx, c_idx], 1, -1)
        asked = goal
    return out


def make_batch(p: Patients, rows: np.ndarray, n_symptoms: int, masking: MaskingSection | None = None,
               rng: np.random.Generator | None = None, questions: QuestionTable | None = None) -> Batch:
    """Rows of a split as tensors; with `masking` (and `rng`), findings are hidden as in training, and
    with `questions` too, a `masking.dialog_share` of the rows become dialog states."""
    evidence = p.dense(rows, n_symptoms)
    age = p.age_years[rows].astype(np.float32)
    sex = p.sex[rows].astype(np.int64)
    if masking is not None:
        if rng is None:
            raise ValueError("masking needs a random generator")
        truth = evidence
        evidence, age, sex = hide_findings(evidence, age, sex, masking, rng)
        if questions is not None and masking.dialog_share > 0:
            dialog = np.flatnonzero(rng.random(len(rows)) < masking.dialog_share)
            if len(dialog):
                evidence[dialog] = dialog_states(truth[dialog], masking, questions, rng)
    return Batch(evidence=torch.from_numpy(evidence.astype(np.float32)), age_years=torch.from_numpy(age),
                 sex=torch.from_numpy(sex), disease=torch.from_numpy(p.disease[rows].astype(np.int64)))

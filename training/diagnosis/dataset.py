"""Batches of synthetic patients as model tensors, with the training-time hiding of findings.

Every random choice is drawn from a generator seeded by (seed, epoch, batch, rank), so an epoch's batches
and masks are a pure function of the recipe: a resumed run sees exactly what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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


def epoch_batches(n: int, batch_size: int, rank: int, world_size: int, seed: int, epoch: int) -> np.ndarray:
    """(steps, batch_size) patient indices of this rank: one seeded permutation per epoch, cut into
    world_size * batch_size global batches; the incomplete tail is dropped so every rank takes the same
    number of steps."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    steps = n // (batch_size * world_size)
    return perm[: steps * batch_size * world_size].reshape(steps, world_size, batch_size)[:, rank]


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


def make_batch(p: Patients, rows: np.ndarray, n_symptoms: int, masking: MaskingSection | None = None,
               rng: np.random.Generator | None = None) -> Batch:
    """Rows of a split as tensors; with `masking` (and `rng`), findings are hidden as in training."""
    evidence = p.dense(rows, n_symptoms)
    age = p.age_years[rows].astype(np.float32)
    sex = p.sex[rows].astype(np.int64)
    if masking is not None:
        if rng is None:
            raise ValueError("masking needs a random generator")
        evidence, age, sex = hide_findings(evidence, age, sex, masking, rng)
    return Batch(evidence=torch.from_numpy(evidence.astype(np.float32)), age_years=torch.from_numpy(age),
                 sex=torch.from_numpy(sex), disease=torch.from_numpy(p.disease[rows].astype(np.int64)))

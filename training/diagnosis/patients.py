"""Synthetic patients drawn from the knowledge base, DDXPlus-style (Fansi Tchango et al. 2022), stored as
sparse evidence in .npz files. Run by `nui data diagnosis` after the knowledge base, or alone:

    nui data diagnosis --out data/diagnosis --patients-only --train-patients 150000 --seed 0

One patient, given its disease d (each split cycles through all diseases, so classes are balanced):
1. Sex ~ Bernoulli(female_probability of d); age: a band of d by weight, then a whole year uniformly in it.
2. Present findings: each annotated symptom s of d independently with P(s | d) (the KB's probability,
   i.e. the HPO frequency class or FAKER_PROBABILITY), skipping symptoms the patient's sex cannot have and
   explicit exclusions. If none came up, one is drawn in proportion to P(s | d) (a patient reports at
   least one complaint). At most `max_present` are kept (a random subset): a person lists a handful.
3. Noise: Poisson(`noise_rate`) further symptoms reported present, drawn in proportion to how many KB
   diseases have them (background complaints such as fatigue or headache are the likeliest).
4. Absent findings (what a clinician would have asked about): the pool is d's other annotated symptoms,
   its explicit exclusions, and the symptoms of `confusers` other diseases that share a present symptom
   with d; Binomial(pool, `absent_rate`) of them, at most `max_absent`, are reported absent. Mixing in
   the confusers' symptoms keeps "no X" from pointing at the diseases that list X.
5. Sex and age are reported with probability `sex_known` / `age_known`, independently of d.

Splits (train / dev / test) are drawn from separate random streams seeded by (seed, split), so a patient
belongs to exactly one split, and the same seed and KB always give the same files.
Files: `<out>/patients_{train,dev,test}.npz` with disease (N,) int32, age_years (N,) int16 (-1 unknown),
sex (N,) int8 (0 unknown, 1 female, 2 male), indptr (N+1,) int64, symptom (nnz,) int32 and value (nnz,)
int8 (+1 present / -1 absent), plus `patients.json` (options, counts, KB fingerprint).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from training.diagnosis.knowledge import KnowledgeBase

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class PatientOptions:
    train: int = 150_000
    dev: int = 10_000
    test: int = 20_000
    seed: int = 0
    max_present: int = 12  # findings of the disease a patient reports at most
    noise_rate: float = 0.5  # mean number of unrelated symptoms reported present
    confusers: int = 3  # other diseases whose symptoms enter the absent-findings pool
    absent_rate: float = 0.25  # share of the pool reported absent
    max_absent: int = 12
    sex_known: float = 0.9
    age_known: float = 0.8

    def __post_init__(self) -> None:
        if min(self.train, self.dev, self.test) < 0 or self.max_present < 1:
            raise ValueError("patient counts must be >= 0 and max_present >= 1")
        for name in ("absent_rate", "sex_known", "age_known"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class Patients:
    """A split of synthetic patients in compressed sparse row form."""

    disease: np.ndarray  # (N,) int32
    age_years: np.ndarray  # (N,) int16, -1 = unknown
    sex: np.ndarray  # (N,) int8, 0 unknown / 1 female / 2 male
    indptr: np.ndarray  # (N + 1,) int64
    symptom: np.ndarray  # (nnz,) int32
    value: np.ndarray  # (nnz,) int8, +1 present / -1 absent

    def __len__(self) -> int:
        return len(self.disease)

    def dense(self, rows: np.ndarray, n_symptoms: int) -> np.ndarray:
        """(len(rows), n_symptoms) int8 evidence: +1 present, -1 absent, 0 unknown."""
        out = np.zeros((len(rows), n_symptoms), dtype=np.int8)
        starts, counts = self.indptr[rows], self.indptr[rows + 1] - self.indptr[rows]
        which = np.repeat(np.arange(len(rows)), counts)
        flat = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
        out[which, self.symptom[flat]] = self.value[flat]
        return out

    def n_positive(self) -> np.ndarray:
        """(N,) number of present findings per patient."""
        pos = (self.value > 0).astype(np.int64)
        return np.add.reduceat(np.append(pos, 0), self.indptr[:-1]) * (np.diff(self.indptr) > 0)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **asdict(self))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Patients:
        with np.load(path, allow_pickle=False) as z:
            return cls(**{k: z[k] for k in ("disease", "age_years", "sex", "indptr", "symptom", "value")})


def hide_share(p: Patients, share: float, seed: int) -> Patients:
    """A copy of the split with each finding hidden with probability `share`, keeping at least one present
    finding per patient that had one: evidence as a dialog in progress sees it (evaluation, calibration)."""
    rng = np.random.default_rng(seed)
    keep = rng.random(len(p.symptom)) >= share
    rows = np.repeat(np.arange(len(p)), np.diff(p.indptr))
    lost = np.flatnonzero(np.bincount(rows, weights=keep & (p.value > 0), minlength=len(p)) == 0)
    for i in lost:  # put one present finding back
        pos = np.flatnonzero(p.value[p.indptr[i]:p.indptr[i + 1]] > 0)
        if len(pos):
            keep[p.indptr[i] + rng.choice(pos)] = True
    counts = np.bincount(rows[keep], minlength=len(p))
    return Patients(disease=p.disease, age_years=p.age_years, sex=p.sex,
                    indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                    symptom=p.symptom[keep], value=p.value[keep])


class Generator:
    """Draws patients from a knowledge base (steps 1-5 of the module docstring)."""

    def __init__(self, kb: KnowledgeBase, opts: PatientOptions) -> None:
        self.kb, self.opts = kb, opts
        prob = kb.probability_matrix()
        excluded = kb.excluded_matrix()
        row_sex = kb.annotation_sex_matrix()
        sym_sex = kb.symptom_sex()
        self.symptoms: list[np.ndarray] = []  # per disease: annotated symptom ids (p > 0)
        self.probs: list[np.ndarray] = []
        self.sex_only: list[np.ndarray] = []  # per disease, per annotated symptom: 0 any, 1 female, 2 male
        self.excluded: list[np.ndarray] = []
        for d in range(kb.n_diseases):
            s = np.flatnonzero(prob[d] > 0)
            if len(s) == 0:
                raise ValueError(f"disease {kb.diseases[d].id} has no symptom with a probability above 0")
            self.symptoms.append(s)
            self.probs.append(prob[d, s].astype(np.float64))
            self.sex_only.append(np.maximum(row_sex[d, s], sym_sex[s]))
            self.excluded.append(np.flatnonzero(excluded[d]))
        self.sym_sex = sym_sex
        self.diseases_with = [np.flatnonzero(prob[:, s] > 0) for s in range(kb.n_symptoms)]
        background = (prob > 0).sum(axis=0).astype(np.float64) + 1.0  # every symptom stays possible
        self.background = background / background.sum()
        self.female = np.array([d.female_probability for d in kb.diseases])

    def _age(self, rng: np.random.Generator, d: int) -> int:
        bands = self.kb.diseases[d].age_bands
        w = np.array([b[0] for b in bands], dtype=np.float64)
        _, lo, hi = bands[int(rng.choice(len(bands), p=w / w.sum()))]
        return int(rng.integers(lo, hi + 1))

    def patient(self, rng: np.random.Generator, d: int) -> tuple[int, int, list[int], list[int]]:
        """(sex code, age in years or -1, present symptom ids, absent symptom ids) for one patient of d."""
        o = self.opts
        sex = 1 if rng.random() < self.female[d] else 2
        age = self._age(rng, d)
        syms, probs, only = self.symptoms[d], self.probs[d], self.sex_only[d]
        allowed = (only == 0) | (only == sex)
        hit = (rng.random(len(syms)) < probs) & allowed
        present = syms[hit]
        if len(present) == 0:
            w = probs * allowed
            present = syms[[int(rng.choice(len(syms), p=w / w.sum()))]] if w.sum() > 0 else syms[:1]
        if len(present) > o.max_present:
            present = rng.choice(present, size=o.max_present, replace=False)
        present_set = set(present.tolist())
        for s in rng.choice(len(self.background), size=rng.poisson(o.noise_rate), p=self.background):
            if self.sym_sex[s] in (0, sex) and s not in self.excluded[d]:
                present_set.add(int(s))
        pool = set(syms[allowed].tolist()) | set(self.excluded[d].tolist())
        anchor = int(rng.choice(present))
        others = self.diseases_with[anchor]
        others = others[others != d]
        if len(others):
            for c in rng.choice(others, size=min(o.confusers, len(others)), replace=False):
                pool.update(s for s, only_c in zip(self.symptoms[c].tolist(), self.sex_only[c].tolist(), strict=True)
                            if only_c in (0, sex))
        pool -= present_set
        absent: list[int] = []
        if pool:
            n_absent = min(int(rng.binomial(len(pool), o.absent_rate)), o.max_absent)
            absent = sorted(rng.choice(sorted(pool), size=n_absent, replace=False).tolist())
        reported_sex = sex if rng.random() < o.sex_known else 0
        reported_age = age if rng.random() < o.age_known else -1
        return reported_sex, reported_age, sorted(present_set), absent

    def split(self, name: str, n: int) -> Patients:
        rng = np.random.default_rng([self.opts.seed, SPLITS.index(name)])
        diseases = rng.permutation(np.arange(n) % self.kb.n_diseases).astype(np.int32)
        sexes = np.zeros(n, dtype=np.int8)
        ages = np.full(n, -1, dtype=np.int16)
        indptr = np.zeros(n + 1, dtype=np.int64)
        symptoms: list[int] = []
        values: list[int] = []
        for i, d in enumerate(tqdm(diseases.tolist(), desc=f"{name} patients", mininterval=2.0, leave=False)):
            sexes[i], ages[i], present, absent = self.patient(rng, d)
            symptoms += present + absent
            values += [1] * len(present) + [-1] * len(absent)
            indptr[i + 1] = len(symptoms)
        return Patients(disease=diseases, age_years=ages, sex=sexes, indptr=indptr,
                        symptom=np.array(symptoms, dtype=np.int32), value=np.array(values, dtype=np.int8))


def _stats(p: Patients) -> dict[str, Any]:
    pos = p.n_positive()
    n_findings = np.diff(p.indptr)
    return {"patients": len(p), "present_mean": float(pos.mean()) if len(p) else 0.0,
            "absent_mean": float((n_findings - pos).mean()) if len(p) else 0.0,
            "with_3_or_more_present": float((pos >= 3).mean()) if len(p) else 0.0,
            "sex_known": float((p.sex > 0).mean()) if len(p) else 0.0,
            "age_known": float((p.age_years >= 0).mean()) if len(p) else 0.0}


def _row_keys(p: Patients) -> list[bytes]:
    return [p.disease[i].tobytes() + p.symptom[p.indptr[i]:p.indptr[i + 1]].tobytes()
            + p.value[p.indptr[i]:p.indptr[i + 1]].tobytes() for i in range(len(p))]


def generate(kb: KnowledgeBase, out: Path, opts: PatientOptions) -> dict[str, Any]:
    """Write the three splits and patients.json; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    gen = Generator(kb, opts)
    summary: dict[str, Any] = {"options": asdict(opts), "kb_fingerprint": kb.fingerprint(),
                               "symptoms": kb.n_symptoms, "diseases": kb.n_diseases, "splits": {}}
    splits = {}
    for name in SPLITS:
        t0 = time.perf_counter()
        splits[name] = gen.split(name, getattr(opts, name))
        splits[name].save(out / f"patients_{name}.npz")
        summary["splits"][name] = {**_stats(splits[name]), "seconds": round(time.perf_counter() - t0, 1)}
        logger.info("%s: %s", name, summary["splits"][name])
    # Identical (disease, findings) records also drawn for training: not a leak (patients are independent
    # draws), but it says how much of the test set a lookup table could answer.
    train_keys = set(_row_keys(splits["train"]))
    test_keys = [k in train_keys for k in _row_keys(splits["test"])]
    summary["test_records_also_in_train"] = float(np.mean(test_keys)) if test_keys else 0.0
    (out / "patients.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = PatientOptions()
    p.add_argument("--train-patients", type=int, default=d.train)
    p.add_argument("--dev-patients", type=int, default=d.dev)
    p.add_argument("--test-patients", type=int, default=d.test)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--noise-rate", type=float, default=d.noise_rate)
    p.add_argument("--absent-rate", type=float, default=d.absent_rate)


def options_from_args(args: argparse.Namespace) -> PatientOptions:
    return PatientOptions(train=args.train_patients, dev=args.dev_patients, test=args.test_patients,
                          seed=args.seed, noise_rate=args.noise_rate, absent_rate=args.absent_rate)


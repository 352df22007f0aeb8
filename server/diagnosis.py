"""Diagnosis pre/post-processing: validated findings -> engine rows -> ranked diseases + next question.

No gRPC here: `DiagnosisServingModel.prepare` checks a request's plain values (raising RequestError that
names the field), `run_batch` runs one engine batch for many requests and returns one result (or one
exception) per request, as the DynamicBatcher expects. The next question comes from
models/diagnosis_dialog.py (expected information gain with the knowledge base's P(symptom | disease)).

Empty evidence is answered, not refused: the model's prior over diseases and the first question.
Nothing here logs findings (health data); only counts and request ids.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.engine import Engine
from models.diagnosis_dialog import DiagnosisTables, answer_model, next_question, question_text
from server.errors import invalid_argument

logger = logging.getLogger(__name__)

TASK = "diagnosis"
DEFAULT_MODEL = "diagnosis"
DEFAULT_TOP_K = 5
MAX_TOP_K = 50
MAX_FINDINGS = 512  # evidence + history entries per request
MAX_AGE_YEARS = 130.0
SEX_NAMES = {0: "SEX_UNSPECIFIED", 1: "FEMALE", 2: "MALE"}
NOTICE = (
    "This is not medical advice and not a diagnosis: it is an automated ranking of conditions from a "
    "knowledge base and a statistical model, and it can be wrong. Talk to a doctor or pharmacist about "
    "your symptoms. Call your local emergency number (112 in Europe, 911 in the US) now if you have chest "
    "pain, trouble breathing, signs of a stroke (face drooping, arm weakness, slurred speech), severe "
    "bleeding, a seizure, fainting, sudden severe pain, or thoughts of harming yourself. See a doctor soon "
    "if symptoms are severe, getting worse, last more than a few days, or you are pregnant, very young, "
    "elderly or have a long-term illness."
)


@dataclass(frozen=True)
class FindingIn:
    symptom_id: str
    present: bool


@dataclass(frozen=True)
class Case:
    """One validated request, ready for the engine."""

    evidence: np.ndarray  # (S,) float32: +1 present, -1 absent, 0 unknown
    age_years: float  # -1 unknown
    sex: int  # 0 unknown, 1 female, 2 male
    top_k: int
    findings: tuple[tuple[int, bool], ...]  # (symptom index, present) in request order, duplicates removed
    request_id: str


@dataclass(frozen=True)
class RankedDisease:
    id: str
    name: str
    probability: float
    icd10: str
    xrefs: tuple[str, ...]


@dataclass(frozen=True)
class UsedFinding:
    symptom_id: str
    name: str
    present: bool


@dataclass(frozen=True)
class SuggestedQuestion:
    symptom_id: str
    symptom_name: str
    text: str
    information_gain_bits: float


@dataclass(frozen=True)
class DiagnosisResult:
    diseases: list[RankedDisease]
    findings: list[UsedFinding]
    question: SuggestedQuestion | None
    notice: str = NOTICE


class DiagnosisServingModel:
    """An engine of task "diagnosis" with its knowledge tables (read from the same version folder)."""

    def __init__(self, engine: Engine, tables: DiagnosisTables) -> None:
        inputs = {t.name: t.shape for t in engine.manifest.inputs}
        outputs = {t.name: t.shape for t in engine.manifest.outputs}
        if inputs.get("evidence", [None, None])[1] != len(tables.symptoms) or \
                outputs.get("probs", [None, None])[1] != len(tables.diseases):
            raise ValueError(f"{engine.name} v{engine.version}: engine shapes {inputs} -> {outputs} do not match "
                             f"its tables ({len(tables.symptoms)} symptoms, {len(tables.diseases)} diseases)")
        self.engine = engine
        self.tables = tables
        self.answers = answer_model(tables.probabilities)
        self._symptom_sex = tables.symptom_sex

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def version(self) -> int:
        return self.engine.version

    @property
    def n_diseases(self) -> int:
        return len(self.tables.diseases)

    def prepare(self, evidence: Sequence[FindingIn], history: Sequence[FindingIn], age_years: float | None,
                sex: int, top_k: int, request_id: str) -> Case:
        """Validate and merge; RequestError (INVALID_ARGUMENT) names the offending field."""
        if len(evidence) + len(history) > MAX_FINDINGS:
            raise invalid_argument(f"evidence + history hold {len(evidence) + len(history)} findings; at most "
                                   f"{MAX_FINDINGS} are allowed")
        max_k = min(MAX_TOP_K, self.n_diseases)
        k = DEFAULT_TOP_K if top_k == 0 else top_k
        if not 1 <= k <= max_k:
            raise invalid_argument(f"top_k is {top_k}; allowed: 1..{max_k} (0 means {DEFAULT_TOP_K})")
        k = min(k, self.n_diseases)
        if sex not in SEX_NAMES:
            raise invalid_argument(f"sex is {sex}; allowed: {', '.join(f'{v} ({n})' for v, n in SEX_NAMES.items())}")
        if age_years is not None and not (math.isfinite(age_years) and 0.0 <= age_years <= MAX_AGE_YEARS):
            raise invalid_argument(f"age_years is {age_years}; allowed: 0..{MAX_AGE_YEARS:g} years, or unset")
        vector = np.zeros(len(self.tables.symptoms), dtype=np.float32)
        where: dict[int, str] = {}  # symptom index -> the field that set it, for contradiction messages
        findings: list[tuple[int, bool]] = []
        for field_name, items in (("history", history), ("evidence", evidence)):
            for i, f in enumerate(items):
                label = f"{field_name}[{i}].symptom_id"
                index = self.tables.symptom_index.get(f.symptom_id)
                if index is None:
                    shown = f.symptom_id if len(f.symptom_id) <= 40 else f.symptom_id[:40] + "..."
                    raise invalid_argument(f"{label} {shown!r} is not a known symptom id; ids are HPO terms "
                                           f"(e.g. 'HP:0001945') or 'NUI:...' ids of this model's "
                                           f"{len(self.tables.symptoms)} symptoms")
                value = 1.0 if f.present else -1.0
                if vector[index] == 0:
                    vector[index] = value
                    where[index] = label
                    findings.append((index, f.present))
                elif vector[index] != value:
                    raise invalid_argument(f"{label} {f.symptom_id!r} is {'present' if f.present else 'absent'} "
                                           f"but {where[index]} says the opposite (contradictory evidence)")
        return Case(evidence=vector, age_years=-1.0 if age_years is None else float(age_years), sex=sex,
                    top_k=k, findings=tuple(findings), request_id=request_id)

    def run_batch(self, cases: list[Case]) -> list[DiagnosisResult | Exception]:
        """One engine run for all cases; then ranking and the next question per case."""
        probs = self.engine.run({
            "evidence": np.stack([c.evidence for c in cases]),
            "age_years": np.array([c.age_years for c in cases], dtype=np.float32),
            "sex": np.array([c.sex for c in cases], dtype=np.int64),
        })["probs"]  # (B, D)
        out: list[DiagnosisResult | Exception] = []
        for case, p in zip(cases, probs, strict=True):
            try:
                out.append(self._result(case, p))
            except Exception as e:  # one bad case never fails its batch-mates
                out.append(e)
        return out

    def _result(self, case: Case, p: np.ndarray) -> DiagnosisResult:
        top = np.argsort(-p, kind="stable")[: case.top_k]
        diseases = [RankedDisease(id=d.id, name=d.name, probability=float(p[i]), icd10=d.icd10, xrefs=d.xrefs)
                    for i in top.tolist() for d in (self.tables.diseases[i],)]
        findings = [UsedFinding(self.tables.symptoms[i].id, self.tables.symptoms[i].name, present)
                    for i, present in case.findings]
        q = next_question(p, case.evidence, self.answers, sex=case.sex, symptom_sex=self._symptom_sex)
        question = None
        if q is not None:
            s = self.tables.symptoms[q.symptom]
            question = SuggestedQuestion(s.id, s.name, question_text(s), q.information_gain_bits)
        return DiagnosisResult(diseases=diseases, findings=findings, question=question)


def load_diagnosis_model(engine: Engine, folder: Path) -> DiagnosisServingModel:
    """The serving model of an engine whose version folder also holds the knowledge tables."""
    return DiagnosisServingModel(engine, DiagnosisTables.load(folder))

"""Diagnosis pre/post-processing: validated findings -> engine rows -> ranked diseases + next question.

No gRPC here: `DiagnosisServingModel.prepare` checks a request's plain values (raising RequestError that
names the field), `run_batch` runs one engine batch for many requests and returns one result (or one
exception) per request, as the DynamicBatcher expects. The next question comes from
models/diagnosis_dialog.py (expected information gain with the knowledge base's P(symptom | disease)).

Free text (server/symptom_text.py, when the repository holds a symptom_text model of the same knowledge
base): the texts of a batch are understood together (models/symptom_text.py: chunks, negation, MiniLM
matching), their findings join each case's structured evidence, then one engine run ranks every case. A
structured finding (evidence or history) wins over what the text says about the same symptom: it is an
explicit answer, the text an interpretation; the overruled text finding is returned with used=False.

Empty evidence is answered, not refused: the model's prior over diseases and the first question.
Nothing here logs findings or text (health data); only counts and request ids.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from engines.engine import Engine
from models.diagnosis_dialog import DiagnosisTables, answer_model, next_question, question_text
from models.symptom_text import TextUnderstanding, words_of
from server.errors import RequestError, invalid_argument
from server.symptom_text import MAX_TEXT_CHARS, SymptomTextModel, text_model_for

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
    text: str | None = None  # free text of this turn, validated
    text_threshold: float = 0.0  # minimum match confidence for this request's text


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
class UnderstoodSymptom:
    """A symptom read from the text; `used` is False where structured evidence said the opposite."""

    symptom_id: str
    name: str
    present: bool
    confidence: float
    start: int  # characters [start, end) of the request text
    end: int
    phrase: str  # the table phrase it matched
    used: bool


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
    understood: list[UnderstoodSymptom] = field(default_factory=list)
    not_understood: list[tuple[int, int]] = field(default_factory=list)  # character spans of the text


class DiagnosisServingModel:
    """An engine of task "diagnosis" with its knowledge tables (read from the same version folder)."""

    def __init__(self, engine: Engine, tables: DiagnosisTables, text: SymptomTextModel | None = None) -> None:
        inputs = {t.name: t.shape for t in engine.manifest.inputs}
        outputs = {t.name: t.shape for t in engine.manifest.outputs}
        if inputs.get("evidence", [None, None])[1] != len(tables.symptoms) or \
                outputs.get("probs", [None, None])[1] != len(tables.diseases):
            raise ValueError(f"{engine.name} v{engine.version}: engine shapes {inputs} -> {outputs} do not match "
                             f"its tables ({len(tables.symptoms)} symptoms, {len(tables.diseases)} diseases)")
        self.engine = engine
        self.tables = tables
        self.text = text
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
                sex: int, top_k: int, request_id: str, text: str | None = None,
                min_text_confidence: float = 0.0) -> Case:
        """Validate and merge; RequestError (INVALID_ARGUMENT) names the offending field."""
        threshold = self._check_text(text, min_text_confidence)
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
                    top_k=k, findings=tuple(findings), request_id=request_id, text=text, text_threshold=threshold)

    def _check_text(self, text: str | None, min_text_confidence: float) -> float:
        """The match threshold for a request's text (0 when there is none); RequestError when invalid."""
        if not (math.isfinite(min_text_confidence) and 0.0 <= min_text_confidence <= 1.0):
            raise invalid_argument(f"min_text_confidence is {min_text_confidence}; allowed: 0..1 (0 means the "
                                   "model's tuned threshold)")
        if text is None:
            return 0.0
        if len(text) > MAX_TEXT_CHARS:
            raise invalid_argument(f"text is {len(text)} characters; at most {MAX_TEXT_CHARS} are allowed")
        if not words_of(text):
            raise invalid_argument("text is empty or holds no word; describe the symptoms, or leave text unset")
        if self.text is None:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"{self.name} v{self.version} has no free-text model loaded (a symptom_text model "
                               "of the same knowledge base); send structured evidence instead of text")
        return min_text_confidence or self.text.threshold

    def run_batch(self, cases: list[Case]) -> list[DiagnosisResult | Exception]:
        """Texts of all cases understood together, then one engine run for all cases; then ranking and the
        next question per case."""
        understood = self._understand(cases)
        rows: list[tuple[np.ndarray, tuple[tuple[int, bool], ...], list[UnderstoodSymptom]]] = []
        out: list[DiagnosisResult | Exception | None] = [None] * len(cases)
        ok: list[int] = []
        for i, (case, u) in enumerate(zip(cases, understood, strict=True)):
            if isinstance(u, Exception):
                out[i] = u
            else:
                rows.append(self._merge(case, u))
                ok.append(i)
        if ok:
            probs = self.engine.run({
                "evidence": np.stack([r[0] for r in rows]),
                "age_years": np.array([cases[i].age_years for i in ok], dtype=np.float32),
                "sex": np.array([cases[i].sex for i in ok], dtype=np.int64),
            })["probs"]  # (B, D)
            for i, (vector, findings, symptoms), p in zip(ok, rows, probs, strict=True):
                u = understood[i]
                try:
                    out[i] = self._result(cases[i], p, vector, findings, symptoms,
                                          u.not_understood if isinstance(u, TextUnderstanding) else [])
                except Exception as e:  # one bad case never fails its batch-mates
                    out[i] = e
        return [r if r is not None else RuntimeError("no result") for r in out]

    def _understand(self, cases: list[Case]) -> list[TextUnderstanding | Exception | None]:
        """Per case: what its text says (None without text); an exception for the cases whose text failed."""
        out: list[TextUnderstanding | Exception | None] = [None] * len(cases)
        with_text = [i for i, c in enumerate(cases) if c.text is not None]
        if not with_text or self.text is None:
            return out
        try:
            results = self.text.understand([cases[i].text or "" for i in with_text],
                                           [cases[i].text_threshold for i in with_text])
        except Exception as e:  # the structured-only cases of the batch still run
            logger.error("free-text understanding failed for %d requests", len(with_text), exc_info=e)
            for i in with_text:
                out[i] = e
            return out
        for i, r in zip(with_text, results, strict=True):
            out[i] = r
        return out

    def _merge(self, case: Case, u: TextUnderstanding | None
               ) -> tuple[np.ndarray, tuple[tuple[int, bool], ...], list[UnderstoodSymptom]]:
        """The case's evidence with the text's findings added (structured findings win)."""
        if u is None:
            return case.evidence, case.findings, []
        vector = case.evidence.copy()
        findings = list(case.findings)
        symptoms = []
        for f in u.findings:
            value = 1.0 if f.present else -1.0
            used = vector[f.symptom_index] in (0.0, value)
            if vector[f.symptom_index] == 0.0:
                vector[f.symptom_index] = value
                findings.append((f.symptom_index, f.present))
            symptoms.append(UnderstoodSymptom(f.symptom_id, f.name, f.present, f.confidence, f.start, f.end,
                                              f.phrase, used))
        return vector, tuple(findings), symptoms

    def _result(self, case: Case, p: np.ndarray, evidence: np.ndarray, used: tuple[tuple[int, bool], ...],
                understood: list[UnderstoodSymptom], not_understood: list[tuple[int, int]]) -> DiagnosisResult:
        top = np.argsort(-p, kind="stable")[: case.top_k]
        diseases = [RankedDisease(id=d.id, name=d.name, probability=float(p[i]), icd10=d.icd10, xrefs=d.xrefs)
                    for i in top.tolist() for d in (self.tables.diseases[i],)]
        findings = [UsedFinding(self.tables.symptoms[i].id, self.tables.symptoms[i].name, present)
                    for i, present in used]
        q = next_question(p, evidence, self.answers, sex=case.sex, symptom_sex=self._symptom_sex)
        question = None
        if q is not None:
            s = self.tables.symptoms[q.symptom]
            question = SuggestedQuestion(s.id, s.name, question_text(s), q.information_gain_bits)
        return DiagnosisResult(diseases=diseases, findings=findings, question=question, understood=understood,
                               not_understood=list(not_understood))


def load_diagnosis_model(engine: Engine, folder: Path, intra_op_threads: int | None = None,
                         provider: str = "cpu") -> DiagnosisServingModel:
    """The serving model of an engine whose version folder also holds the knowledge tables, with the
    repository's symptom_text model of the same knowledge base when there is one (loaded with the same
    threads and execution provider)."""
    tables = DiagnosisTables.load(folder)
    text = text_model_for(folder.parent.parent, str(engine.manifest.extras.get("kb_fingerprint", "")),
                          [s.id for s in tables.symptoms], intra_op_threads, provider)
    return DiagnosisServingModel(engine, tables, text)

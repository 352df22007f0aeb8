"""The `nui.v1.Diagnosis` gRPC servicer: validate → enqueue on the model's batcher → respond.

Translation only: `request_values` turns the proto into plain values, `DiagnosisServingModel.prepare`
validates them before the queue, `run_batch` runs inside the batcher, `to_response` builds the reply.
Logs carry counts, codes and request ids, never findings (health data).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from proto import diagnosis_pb2, diagnosis_pb2_grpc
from server.batcher import DynamicBatcher
from server.diagnosis import DEFAULT_MODEL, Case, DiagnosisResult, DiagnosisServingModel, FindingIn
from server.errors import checked_request_id, status_of
from server.repository import resolve

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedDiagnosisModel:
    model: DiagnosisServingModel
    batcher: DynamicBatcher[Case, DiagnosisResult]


def request_id_of(request: diagnosis_pb2.DiagnoseRequest) -> str:
    return checked_request_id(request.request_id)


def findings_of(items: object) -> list[FindingIn]:
    return [FindingIn(f.symptom_id, f.present) for f in items]  # type: ignore[attr-defined]


def prepare(model: DiagnosisServingModel, request: diagnosis_pb2.DiagnoseRequest, request_id: str) -> Case:
    age = request.age_years if request.HasField("age_years") else None
    text = request.text if request.HasField("text") else None
    return model.prepare(findings_of(request.evidence), findings_of(request.history), age, int(request.sex),
                         request.top_k, request_id, text=text, min_text_confidence=request.min_text_confidence)


def to_response(result: DiagnosisResult, model: str, version: int, request_id: str, text: str = ""
                ) -> diagnosis_pb2.DiagnoseResponse:
    """The reply; `text` is the request's text, for the spans' text."""

    def span(start: int, end: int) -> diagnosis_pb2.TextSpan:
        return diagnosis_pb2.TextSpan(start=start, end=end, text=text[start:end])

    response = diagnosis_pb2.DiagnoseResponse(
        diseases=[diagnosis_pb2.DiseaseScore(disease_id=d.id, name=d.name, probability=d.probability,
                                             icd10=d.icd10, xrefs=list(d.xrefs)) for d in result.diseases],
        findings=[diagnosis_pb2.UsedFinding(symptom_id=f.symptom_id, name=f.name, present=f.present)
                  for f in result.findings],
        notice=result.notice, model=model, model_version=version, request_id=request_id,
        understood=[diagnosis_pb2.UnderstoodSymptom(
            symptom_id=u.symptom_id, name=u.name, present=u.present, confidence=u.confidence,
            span=span(u.start, u.end), matched_phrase=u.phrase, used=u.used) for u in result.understood],
        not_understood=[span(a, z) for a, z in result.not_understood])
    if result.question is not None:
        q = result.question
        response.next_question.CopyFrom(diagnosis_pb2.Question(
            symptom_id=q.symptom_id, symptom_name=q.symptom_name, text=q.text,
            expected_information_gain_bits=q.information_gain_bits))
    return response


class DiagnosisServicer(diagnosis_pb2_grpc.DiagnosisServicer):
    """`Diagnose` over the loaded models, {name: {version: ServedDiagnosisModel}}."""

    def __init__(self, served: Mapping[str, Mapping[int, ServedDiagnosisModel]]) -> None:
        self._served = served

    async def Diagnose(self, request: diagnosis_pb2.DiagnoseRequest,
                       context: grpc.aio.ServicerContext) -> diagnosis_pb2.DiagnoseResponse:
        started = time.monotonic()
        request_id = "-"
        n_findings = len(request.evidence) + len(request.history)
        try:
            request_id = request_id_of(request)
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            served = resolve(self._served, request.config.model or DEFAULT_MODEL, request.config.model_version)
            case = prepare(served.model, request, request_id)
            result = await served.batcher.submit(case, deadline=deadline)
            response = to_response(result, served.model.name, served.model.version, request_id, request.text)
        except Exception as e:  # every failure becomes a status below; abort() must run outside this block
            code, message = status_of(e, request_id)
        else:
            logger.debug("request %s: OK, %d findings, %.1f ms", request_id, n_findings,
                         1e3 * (time.monotonic() - started))
            return response
        logger.info("request %s: %s, %d findings, %.1f ms", request_id, code.name, n_findings,
                    1e3 * (time.monotonic() - started))
        await context.abort(code, message)
        raise AssertionError("context.abort returned")  # abort always raises

"""`nui diagnose`: rank diseases for free text and/or structured findings, in-process or through a server.

    nui diagnose "my head is pounding and I can't keep food down, no fever though"
    nui diagnose "my head is pounding" --absent HP:0001945 --server 127.0.0.1:50051
    nui diagnose --symptom HP:0001945 --symptom HP:0002315                 # in-process, bundled repository
    nui diagnose --symptom HP:0001945 --absent HP:0002315 --age 34 --sex female --top-k 5 --repo REPO
    nui diagnose --symptom HP:0001945 --server 127.0.0.1:50051             # over gRPC (`Diagnose`)

Prints the notice, what it understood from the text (present/absent, confidence, the words) and what it
did not, the top-k diseases with probabilities and ids, the findings used and the suggested next question.
In-process runs use the server's own `DiagnosisServingModel.prepare` and `run_batch`.
Exit status 0 on success, 1 on a bad request or an unreachable server/repository (one `error:` line).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

import grpc

from proto import diagnosis_pb2, diagnosis_pb2_grpc
from server.diagnosis import DEFAULT_MODEL, DEFAULT_TOP_K, FindingIn
from server.diagnosis_service import to_response
from server.errors import RequestError
from server.repository import default_repo, load_models, resolve

PROG = "nui diagnose"
SEXES = {"unknown": diagnosis_pb2.SEX_UNSPECIFIED, "female": diagnosis_pb2.FEMALE, "male": diagnosis_pb2.MALE}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Rank diseases for symptom findings (not medical advice).")
    p.add_argument("text", nargs="?", default=None, help="what you would tell a doctor, in your own words")
    p.add_argument("--min-text-confidence", type=float, default=0.0, help="0: the model's tuned threshold")
    p.add_argument("--symptom", action="append", default=[], metavar="ID", help="a present symptom (HPO id)")
    p.add_argument("--absent", action="append", default=[], metavar="ID", help="an absent symptom (HPO id)")
    p.add_argument("--age", type=float, default=None, help="age in years")
    p.add_argument("--sex", choices=sorted(SEXES), default="unknown")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    p.add_argument("--server", default=None, metavar="HOST:PORT", help="use a running `nui serve`")
    p.add_argument("--repo", type=Path, default=None, help="model repository for in-process runs")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--version", type=int, default=0, help="model version (0: latest)")
    p.add_argument("--timeout-s", type=float, default=30.0)
    return p


def request_of(args: argparse.Namespace) -> diagnosis_pb2.DiagnoseRequest:
    request = diagnosis_pb2.DiagnoseRequest(
        config=diagnosis_pb2.DiagnoseConfig(model=args.model, model_version=args.version),
        evidence=[diagnosis_pb2.Finding(symptom_id=s, present=True) for s in args.symptom]
        + [diagnosis_pb2.Finding(symptom_id=s, present=False) for s in args.absent],
        sex=SEXES[args.sex], top_k=args.top_k, request_id=uuid.uuid4().hex[:16],
        min_text_confidence=args.min_text_confidence)
    if args.age is not None:
        request.age_years = args.age
    if args.text is not None:
        request.text = args.text
    return request


def in_process(request: diagnosis_pb2.DiagnoseRequest, repo: Path) -> diagnosis_pb2.DiagnoseResponse:
    _, models = load_models(repo, tasks=("diagnosis",))
    model = resolve(models, request.config.model or DEFAULT_MODEL, request.config.model_version)
    findings = [[FindingIn(f.symptom_id, f.present) for f in items] for items in (request.evidence, request.history)]
    case = model.prepare(findings[0], findings[1], request.age_years if request.HasField("age_years") else None,
                         int(request.sex), request.top_k, request.request_id,
                         text=request.text if request.HasField("text") else None,
                         min_text_confidence=request.min_text_confidence)
    [result] = model.run_batch([case])
    if isinstance(result, Exception):
        raise result
    return to_response(result, model.name, model.version, request.request_id, request.text)


def render(response: diagnosis_pb2.DiagnoseResponse) -> str:
    lines = [f"NOTICE: {response.notice}", ""]
    for u in response.understood:
        note = "" if u.used else " (overruled by --symptom/--absent)"
        lines.append(f"understood: {'+' if u.present else '-'}{u.name} ({u.symptom_id}) from "
                     f"{u.span.text!r}, confidence {u.confidence:.2f}{note}")
    for span in response.not_understood:
        lines.append(f"not understood: {span.text!r}")
    lines.append(f"{response.model} v{response.model_version}:")
    for rank, d in enumerate(response.diseases, 1):
        lines.append(f"  {rank}. {d.probability:6.1%}  {d.name}  [{d.disease_id}]")
    used = ", ".join(f"{'+' if f.present else '-'}{f.name} ({f.symptom_id})" for f in response.findings)
    lines.append(f"findings used: {used or 'none'}")
    if response.HasField("next_question"):
        q = response.next_question
        lines.append(f"next question: {q.text}  [{q.symptom_id}, {q.expected_information_gain_bits:.2f} bits]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    request = request_of(args)
    try:
        if args.server:
            with grpc.insecure_channel(args.server) as channel:
                response = diagnosis_pb2_grpc.DiagnosisStub(channel).Diagnose(request, timeout=args.timeout_s)
        else:
            response = in_process(request, args.repo if args.repo is not None else default_repo())
    except RequestError as e:
        print(f"{PROG}: error: {e.code.name}: {e.message}", file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(f"{PROG}: error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except ValueError as e:  # missing or broken repository
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    print(render(response))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`nui.v1.Diagnosis` over a real grpc.aio server (port 0) with a tiny exported diagnosis model."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from proto import diagnosis_pb2, diagnosis_pb2_grpc
from server.app import ServerConfig, SpeechServer, start_server
from server.diagnose import main as diagnose_main
from server.diagnosis import NOTICE, DiagnosisServingModel
from server.repository import load_models, load_speech_models
from tests.diagnosis_tiny import symptom_id, tiny_tables

DiagnosisModels = dict[str, dict[int, DiagnosisServingModel]]
StartServer = Callable[..., Awaitable[SpeechServer]]


@pytest.fixture(scope="session")
def diagnosis_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    from engines.export_diagnosis import export_diagnosis
    from models.diagnosis import build, get_preset

    torch.manual_seed(0)
    model = build(get_preset("tiny"))
    with torch.no_grad():
        assert model.wide is not None
        model.wide.weight.normal_(0, 1.0)
    repo = tmp_path_factory.mktemp("diagnosis_repository")
    export_diagnosis(model.eval(), tiny_tables(), repo, "diagnosis", 1, weights_dtype="float32")
    return repo


@pytest.fixture
def diagnosis_models(diagnosis_repo: Path) -> DiagnosisModels:
    speech, diagnosis = load_models(diagnosis_repo, intra_op_threads=1)
    assert speech == {}
    return diagnosis


@pytest.fixture
async def start(diagnosis_repo: Path, diagnosis_models: DiagnosisModels) -> AsyncIterator[StartServer]:
    """`await start(from_repo=False, **ServerConfig overrides)`: a server on 127.0.0.1, port 0, serving the
    already loaded tiny diagnosis model (or loading `diagnosis_repo` itself); stopped at teardown."""
    started: list[SpeechServer] = []

    async def _start(from_repo: bool = False, **overrides: object) -> SpeechServer:
        settings: dict[str, object] = {"repo": diagnosis_repo, "port": 0, "max_queue_delay_ms": 20.0,
                                       "intra_op_threads": 1, **overrides}
        config = ServerConfig(**settings)  # type: ignore[arg-type]
        server = await (start_server(config) if from_repo else start_server(config, {}, diagnosis_models))
        started.append(server)
        return server

    yield _start
    for server in started:
        await server.stop(0)


def finding(i: int, present: bool = True) -> diagnosis_pb2.Finding:
    return diagnosis_pb2.Finding(symptom_id=symptom_id(i), present=present)


def request(evidence: list[diagnosis_pb2.Finding], **kw: object) -> diagnosis_pb2.DiagnoseRequest:
    return diagnosis_pb2.DiagnoseRequest(evidence=evidence, **kw)  # type: ignore[arg-type]


async def test_diagnose_shapes_notice_and_question(start: StartServer, diagnosis_models: DiagnosisModels,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = await start()
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = diagnosis_pb2_grpc.DiagnosisStub(channel)
        reply = await stub.Diagnose(request([finding(3), finding(7, False)], history=[finding(11), finding(3)],
                                            top_k=3, age_years=41.0, sex=diagnosis_pb2.FEMALE,
                                            request_id="r-1"), timeout=10)
        assert reply.notice == NOTICE and "not medical advice" in reply.notice
        assert len(reply.diseases) == 3 and reply.request_id == "r-1"
        assert (reply.model, reply.model_version) == ("diagnosis", 1)
        probs = [d.probability for d in reply.diseases]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
        ids = {d.id for d in tiny_tables().diseases}
        assert all(d.disease_id in ids and d.name.startswith("Disease ") for d in reply.diseases)
        assert [(f.symptom_id, f.present) for f in reply.findings] == \
            [(symptom_id(11), True), (symptom_id(3), True), (symptom_id(7), False)]  # history first, deduped
        assert reply.HasField("next_question")
        q = reply.next_question
        assert q.symptom_id not in {symptom_id(i) for i in (3, 7, 11)} and q.text.startswith("Do you have")
        assert q.expected_information_gain_bits > 0
        # empty evidence: the prior and a first question, with the notice and the default top_k
        empty = await stub.Diagnose(diagnosis_pb2.DiagnoseRequest(), timeout=10)
        assert empty.notice == NOTICE and len(empty.diseases) == 5 and not empty.findings
        assert empty.HasField("next_question")
    assert "HP:" not in caplog.text and "Symptom" not in caplog.text  # no health data in the logs


@pytest.mark.parametrize(("req", "code", "field"), [
    (request([finding(1), diagnosis_pb2.Finding(symptom_id="HP:0000000", present=True)]),
     grpc.StatusCode.INVALID_ARGUMENT, "evidence[1].symptom_id 'HP:0000000' is not a known symptom id"),
    (request([finding(2, False)], history=[finding(2)]), grpc.StatusCode.INVALID_ARGUMENT,
     "evidence[0].symptom_id"),
    (request([finding(2), finding(2, False)]), grpc.StatusCode.INVALID_ARGUMENT, "contradictory"),
    (request([finding(1)], top_k=9), grpc.StatusCode.INVALID_ARGUMENT, "top_k is 9; allowed: 1..8"),
    (request([finding(1)], top_k=-1), grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
    (request([finding(1)], sex=7), grpc.StatusCode.INVALID_ARGUMENT, "sex is 7"),
    (request([finding(1)], age_years=-2.0), grpc.StatusCode.INVALID_ARGUMENT, "age_years"),
    (request([finding(1)], config=diagnosis_pb2.DiagnoseConfig(model="nope")), grpc.StatusCode.NOT_FOUND,
     "config.model"),
])
async def test_bad_requests_get_the_right_code_naming_the_field(
        start: StartServer, diagnosis_models: DiagnosisModels, req: diagnosis_pb2.DiagnoseRequest,
        code: grpc.StatusCode, field: str) -> None:
    server = await start()
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await diagnosis_pb2_grpc.DiagnosisStub(channel).Diagnose(req, timeout=10)
    assert info.value.code() == code and field in (info.value.details() or "")


async def test_concurrent_calls_are_batched_and_match_unbatched(start: StartServer,
                                                                diagnosis_models: DiagnosisModels) -> None:
    server = await start(max_queue_delay_ms=50.0)
    rng = np.random.default_rng(0)
    requests = [request([finding(int(s), bool(rng.random() < 0.7)) for s in rng.choice(30, 3, replace=False)],
                        top_k=8) for _ in range(12)]
    requests.append(request([diagnosis_pb2.Finding(symptom_id="HP:bad", present=True)]))  # a bad batch-mate
    stats = server.diagnosis["diagnosis"][1].batcher.stats
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = diagnosis_pb2_grpc.DiagnosisStub(channel)
        alone = [await stub.Diagnose(r, timeout=10) for r in requests[:-1]]
        runs_before = stats.runs
        together = await asyncio.gather(*(stub.Diagnose(r, timeout=10) for r in requests),
                                        return_exceptions=True)
    assert stats.runs - runs_before < len(requests) - 1
    assert isinstance(together[-1], grpc.aio.AioRpcError)
    assert together[-1].code() == grpc.StatusCode.INVALID_ARGUMENT
    for a, b in zip(alone, together[:-1], strict=True):
        assert isinstance(b, diagnosis_pb2.DiagnoseResponse)
        assert [d.disease_id for d in a.diseases] == [d.disease_id for d in b.diseases]
        np.testing.assert_allclose([d.probability for d in a.diseases], [d.probability for d in b.diseases],
                                   atol=1e-6)
        assert a.next_question.symptom_id == b.next_question.symptom_id


async def test_health_and_reflection_list_diagnosis(start: StartServer, diagnosis_repo: Path) -> None:
    server = await start(from_repo=True)  # loaded from the repository: diagnosis only
    async with grpc.aio.insecure_channel(server.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="nui.v1.Diagnosis"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = [s.name async for r in call for s in r.list_services_response.service]
    assert "nui.v1.Diagnosis" in names


async def test_diagnose_cli_in_process_and_via_server(start: StartServer, diagnosis_models: DiagnosisModels,
                                                      diagnosis_repo: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--symptom", symptom_id(3), "--absent", symptom_id(7), "--top-k", "2", "--age", "30"]
    assert await asyncio.to_thread(diagnose_main, [*args, "--repo", str(diagnosis_repo)]) == 0
    local = capsys.readouterr().out
    server = await start()
    assert await asyncio.to_thread(diagnose_main, [*args, "--server", server.address]) == 0
    remote = capsys.readouterr().out
    assert local == remote and local.startswith("NOTICE: This is not medical advice")
    assert local.count("[ORPHA:") == 2 and "next question:" in local
    assert await asyncio.to_thread(diagnose_main, ["--symptom", "HP:x", "--server", server.address]) == 1
    assert "INVALID_ARGUMENT: evidence[0].symptom_id" in capsys.readouterr().err


async def test_a_mixed_repository_serves_speech_and_diagnosis(tiny_repo: Path, diagnosis_repo: Path,
                                                              tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo / "speech_ctc", repo / "speech_ctc")
    shutil.copytree(diagnosis_repo / "diagnosis", repo / "diagnosis")
    speech, diagnosis = load_models(repo, intra_op_threads=1)
    assert list(speech) == ["speech_ctc"] and list(diagnosis) == ["diagnosis"]
    assert list(load_speech_models(repo, 1)) == ["speech_ctc"]  # the speech-only loader skips diagnosis
    server = await start_server(ServerConfig(repo=repo, port=0, intra_op_threads=1))
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            for service in ("", "nui.v1.Speech", "nui.v1.Diagnosis"):
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            reply = await diagnosis_pb2_grpc.DiagnosisStub(channel).Diagnose(request([finding(1)]), timeout=10)
            assert reply.notice == NOTICE
    finally:
        await server.stop(0)

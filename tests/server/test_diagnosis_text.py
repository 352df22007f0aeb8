"""`Diagnose` with free text over a real grpc.aio server (port 0): a tiny exported diagnosis model whose
free-text model uses the deterministic fake encoder (tests/symptom_text_fake.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from proto import diagnosis_pb2, diagnosis_pb2_grpc
from server.app import ServerConfig, SpeechServer, start_server
from server.diagnose import main as diagnose_main
from server.diagnosis import NOTICE, DiagnosisServingModel
from server.errors import RequestError
from server.repository import load_models
from server.symptom_text import MAX_TEXT_CHARS, SymptomTextModel
from tests.diagnosis_tiny import N_SYMPTOMS, tiny_tables
from tests.symptom_text_fake import fake_encode, fake_table

HEADACHE, FEVER, VOMITING, RUNNY_NOSE = "HP:9000000", "HP:9000001", "HP:9000002", "HP:9000003"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    from engines.export_diagnosis import export_diagnosis
    from models.diagnosis import build, get_preset

    torch.manual_seed(0)
    model = build(get_preset("tiny"))
    with torch.no_grad():
        assert model.wide is not None
        model.wide.weight.normal_(0, 1.0)
    repo = tmp_path_factory.mktemp("diagnosis_text_repository")
    export_diagnosis(model.eval(), tiny_tables(), repo, "diagnosis", 1, weights_dtype="float32")
    return repo


@pytest.fixture
async def server(repo: Path) -> AsyncIterator[SpeechServer]:
    _, loaded = load_models(repo, intra_op_threads=1)
    plain = loaded["diagnosis"][1]
    text = SymptomTextModel(name="symptom_text", version=1, encoder=fake_encode, table=fake_table(N_SYMPTOMS),
                            threshold=0.9)
    models = {"diagnosis": {1: DiagnosisServingModel(plain.engine, plain.tables, text)}}
    config = ServerConfig(repo=repo, port=0, max_queue_delay_ms=20.0, intra_op_threads=1)
    s = await start_server(config, {}, models)
    yield s
    await s.stop(0)


def stub(server: SpeechServer) -> tuple[grpc.aio.Channel, diagnosis_pb2_grpc.DiagnosisStub]:
    channel = grpc.aio.insecure_channel(server.address)
    return channel, diagnosis_pb2_grpc.DiagnosisStub(channel)


async def test_text_is_understood_and_used(server: SpeechServer) -> None:
    text = "I have a headache and a runny nose, no fever. I work night shifts"
    channel, client = stub(server)
    async with channel:
        r = await client.Diagnose(diagnosis_pb2.DiagnoseRequest(text=text))
        plain = await client.Diagnose(diagnosis_pb2.DiagnoseRequest())
    assert r.notice == NOTICE
    assert [(u.symptom_id, u.present, u.used) for u in r.understood] == [
        (HEADACHE, True, True), (RUNNY_NOSE, True, True), (FEVER, False, True)]
    assert r.understood[1].span.text == "runny nose" and r.understood[1].matched_phrase == "runny nose"
    assert all(u.confidence >= 0.9 for u in r.understood)
    assert [s.text for s in r.not_understood] == ["work night shifts"]
    assert [(f.symptom_id, f.present) for f in r.findings] == [(HEADACHE, True), (RUNNY_NOSE, True), (FEVER, False)]
    assert [d.disease_id for d in r.diseases] != [d.disease_id for d in plain.diseases]  # the findings count


async def test_structured_evidence_wins_over_text(server: SpeechServer) -> None:
    channel, client = stub(server)
    async with channel:
        r = await client.Diagnose(diagnosis_pb2.DiagnoseRequest(
            text="no fever but throwing up", history=[diagnosis_pb2.Finding(symptom_id=FEVER, present=True)]))
    assert [(u.symptom_id, u.present, u.used) for u in r.understood] == [(FEVER, False, False), (VOMITING, True, True)]
    assert [(f.symptom_id, f.present) for f in r.findings] == [(FEVER, True), (VOMITING, True)]


@pytest.mark.parametrize(("fields", "code", "words"), [
    ({"text": ""}, grpc.StatusCode.INVALID_ARGUMENT, "text is empty"),
    ({"text": " ?! "}, grpc.StatusCode.INVALID_ARGUMENT, "text is empty"),
    ({"text": "a" * (MAX_TEXT_CHARS + 1)}, grpc.StatusCode.INVALID_ARGUMENT,
     f"text is {MAX_TEXT_CHARS + 1} characters"),
    ({"text": "headache", "min_text_confidence": 1.5}, grpc.StatusCode.INVALID_ARGUMENT, "min_text_confidence"),
])
async def test_bad_text_is_refused_alone(server: SpeechServer, fields: dict[str, object], code: grpc.StatusCode,
                                         words: str) -> None:
    channel, client = stub(server)
    async with channel:
        good = [client.Diagnose(diagnosis_pb2.DiagnoseRequest(text=f"headache {i}")) for i in range(3)]
        bad = client.Diagnose(diagnosis_pb2.DiagnoseRequest(**fields))  # type: ignore[arg-type]
        results = await asyncio.gather(*good, bad, return_exceptions=True)
    for r in results[:3]:
        assert isinstance(r, diagnosis_pb2.DiagnoseResponse) and r.understood[0].symptom_id == HEADACHE
    error = results[3]
    assert isinstance(error, grpc.aio.AioRpcError) and error.code() == code and words in (error.details() or "")


def test_text_without_a_text_model_is_a_failed_precondition(repo: Path) -> None:
    _, loaded = load_models(repo, intra_op_threads=1)
    plain = loaded["diagnosis"][1]  # the tiny repository holds no symptom_text model
    assert plain.text is None
    plain.prepare([], [], None, 0, 5, "r1")  # structured-only requests still work
    with pytest.raises(RequestError, match="no free-text model") as e:
        plain.prepare([], [], None, 0, 5, "r2", text="headache")
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_cli_sends_text(server: SpeechServer, capsys: pytest.CaptureFixture[str]) -> None:
    rc = await asyncio.to_thread(diagnose_main, ["can't keep food down, no fever", "--server", server.address])
    out = capsys.readouterr().out
    assert rc == 0
    assert "understood: +Vomiting (HP:9000002) from \"can't keep food down\"" in out
    assert "understood: -Fever (HP:9000001) from 'fever'" in out

"""Symptom checking end to end, through the commands a user runs: a tiny knowledge base and its synthetic
patients -> 2-process DDP training -> export with the parity gate -> `nui serve` -> `Diagnose` and
`nui diagnose`.

The served probabilities of held-out patients must be the torch checkpoint's (within the FP16-weight
export's tolerance), the notice must always be there, and a bad finding fails alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from tests.diagnosis_kb_tiny import COMMON, TINY_OPTIONS, write_hpo_fixture
from tests.nui_commands import nui, serving
from training.diagnosis.knowledge import KnowledgeBase, build
from training.diagnosis.model_io import load_model
from training.diagnosis.patients import PatientOptions, Patients, generate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data, run, repository) after building the data, training on 2 processes and exporting."""
    work = tmp_path_factory.mktemp("diagnosis_e2e")
    data = work / "data"
    kb = build(COMMON, write_hpo_fixture(work / "hpo"), TINY_OPTIONS)
    kb.save(data)
    generate(kb, data, PatientOptions(train=512, dev=128, test=128, seed=5))
    nui("train", "diagnosis", "--nproc", "2", "--recipe", "training/diagnosis/recipes/tiny.yaml",
        f"data.dir={data}", f"run.out_dir={work / 'run'}")
    assert "published" in nui("export", "diagnosis", "--checkpoint", str(work / "run"), "--data", str(data),
                              "--repo", str(work / "repo")).stdout
    return data, work / "run", work / "repo"


@pytest.fixture(scope="module")
def server_address(published: tuple[Path, Path, Path]) -> Iterator[str]:
    with serving(published[2]) as address:
        yield address


def test_served_probabilities_are_the_checkpoints(published: tuple[Path, Path, Path], server_address: str) -> None:
    from proto import diagnosis_pb2, diagnosis_pb2_grpc

    data, run, repo = published
    kb = KnowledgeBase.load(data)
    patients = Patients.load(data / "patients_test.npz")
    rows = np.arange(8)
    dense = patients.dense(rows, kb.n_symptoms)
    model, _ = load_model(run)
    with torch.no_grad():  # unknown age and sex, as the requests below leave them unset
        want = torch.softmax(model(torch.from_numpy(dense.astype(np.float32)), torch.full((len(rows),), -1.0),
                                   torch.zeros(len(rows), dtype=torch.int64)), -1).numpy()
    manifest = json.loads((repo / "diagnosis" / "1" / "manifest.json").read_text())
    assert manifest["parity"]["passed"] and manifest["parity"]["dev_data"]
    with grpc.insecure_channel(server_address) as channel:
        stub = diagnosis_pb2_grpc.DiagnosisStub(channel)
        futures = []
        for row in range(len(rows)):
            findings = [diagnosis_pb2.Finding(symptom_id=kb.symptoms[s].id, present=bool(dense[row, s] > 0))
                        for s in np.flatnonzero(dense[row])]
            futures.append(stub.Diagnose.future(diagnosis_pb2.DiagnoseRequest(evidence=findings, top_k=5), timeout=30))
        bad = stub.Diagnose.future(diagnosis_pb2.DiagnoseRequest(evidence=[diagnosis_pb2.Finding(
            symptom_id="HP:9999999", present=True)]), timeout=30)
        replies = [f.result() for f in futures]
        with pytest.raises(grpc.RpcError) as info:
            bad.result()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "evidence[0].symptom_id" in info.value.details()
    index = {d.id: i for i, d in enumerate(kb.diseases)}
    for row, reply in enumerate(replies):
        assert reply.notice and reply.HasField("next_question")
        got = [(index[d.disease_id], d.probability) for d in reply.diseases]
        assert [i for i, _ in got] == list(np.argsort(-want[row], kind="stable")[:5]) or \
            np.allclose(sorted(want[row])[-5:], sorted(p for _, p in got), atol=2e-3)  # near ties may swap
        for i, p in got:
            assert p == pytest.approx(want[row, i], abs=2e-3)


def test_nui_diagnose_in_process_and_against_the_server_agree(published: tuple[Path, Path, Path],
                                                              server_address: str) -> None:
    data, _, repo = published
    kb = KnowledgeBase.load(data)
    args = ["--symptom", kb.symptoms[0].id, "--symptom", kb.symptoms[1].id, "--absent", kb.symptoms[2].id]
    local = nui("diagnose", *args, "--repo", str(repo)).stdout
    remote = nui("diagnose", *args, "--server", server_address).stdout
    assert local == remote and "not medical advice" in local.lower()

"""Diagnosis export: parity-gated ONNX with dynamic batch, tables published and checksummed, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engines import export_diagnosis
from engines.engine import load_engine
from engines.export_diagnosis import ParityError, random_evidence
from engines.export_diagnosis import export_diagnosis as export
from engines.manifest import model_versions, read_manifest
from models.diagnosis import DiagnosisModel
from models.diagnosis_dialog import DiagnosisTables
from tests.diagnosis_tiny import tiny_model, tiny_tables


@pytest.mark.parametrize("weights_dtype", ["float32", "float16"])
def test_publishes_engine_and_tables_with_parity(tmp_path: Path, weights_dtype: str) -> None:
    model, tables = tiny_model(0), tiny_tables()
    path, manifest = export(model, tables, tmp_path / "repo", weights_dtype=weights_dtype)
    assert path == tmp_path / "repo" / "diagnosis" / "1"
    assert manifest.task == "diagnosis" and manifest.parity["passed"] and manifest.parity["rows"] == 256
    assert manifest.parity["max_abs_diff"] <= manifest.parity["atol"] == export_diagnosis.DEFAULT_ATOL[weights_dtype]
    assert manifest.parity["top5_equal"] + manifest.parity["tie_swaps"] == 256
    assert set(read_manifest(path).files) == {"model.onnx", "diseases.json", "symptoms.json",
                                              "symptom_given_disease.csv"}
    assert manifest.precision == ("fp16-weights" if weights_dtype == "float16" else "fp32")
    assert manifest.extras["size_bytes"] == sum(p.stat().st_size for p in path.iterdir() if p.name != "manifest.json")
    assert DiagnosisTables.load(path).diseases == tables.diseases
    if weights_dtype == "float16":
        session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].type == "tensor(float)"  # FP16 storage only; FP32 in and out
    # dynamic batch: 1 and 5 rows; each row of a batch equals that row alone
    engine = load_engine(tmp_path / "repo", "diagnosis")
    evidence, age, sex = random_evidence(5, 32, seed=3)
    batch = engine.run({"evidence": evidence, "age_years": age, "sex": sex})["probs"]
    assert batch.shape == (5, 8) and np.allclose(batch.sum(axis=1), 1.0, atol=1e-5)
    one = engine.run({"evidence": evidence[2:3], "age_years": age[2:3], "sex": sex[2:3]})["probs"]
    np.testing.assert_allclose(one[0], batch[2], atol=1e-6)
    with torch.no_grad():
        expected = torch.softmax(model(*map(torch.from_numpy, (evidence, age, sex))), -1).numpy()
    np.testing.assert_allclose(batch, expected, atol=export_diagnosis.DEFAULT_ATOL[weights_dtype])


def test_gate_refuses_an_engine_that_disagrees_with_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_export = export_diagnosis.export_onnx

    def export_a_different_model(model: DiagnosisModel, path: Path, weights_dtype: str = "float16",
                                 opset: int = export_diagnosis.OPSET) -> None:
        real_export(tiny_model(1), path, weights_dtype, opset)

    monkeypatch.setattr(export_diagnosis, "export_onnx", export_a_different_model)
    with pytest.raises(ParityError, match="parity gate failed"):
        export(tiny_model(0), tiny_tables(), tmp_path / "repo")
    assert model_versions(tmp_path / "repo", "diagnosis") == []
    assert list((tmp_path / "repo" / "diagnosis").iterdir()) == []  # the temporary folder is gone too


def test_refuses_tables_of_another_size_and_existing_versions(tmp_path: Path) -> None:
    tables = tiny_tables()
    smaller = DiagnosisTables(tables.diseases[:7], tables.symptoms, tables.probabilities[:7])
    with pytest.raises(ValueError, match="tables hold 32 symptoms x 7 diseases"):
        export(tiny_model(0), smaller, tmp_path / "repo")
    export(tiny_model(0), tables, tmp_path / "repo", version=3, weights_dtype="float32")
    with pytest.raises(FileExistsError):
        export(tiny_model(0), tables, tmp_path / "repo", version=3)
    with pytest.raises(ValueError, match="weights_dtype"):
        export(tiny_model(0), tables, tmp_path / "repo", weights_dtype="int8")
    manifest = json.loads((tmp_path / "repo" / "diagnosis" / "3" / "manifest.json").read_text())
    assert manifest["inputs"][0] == {"name": "evidence", "dtype": "float32", "shape": ["batch", 32]}

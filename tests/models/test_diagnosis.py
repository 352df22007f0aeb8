"""The symptom-checker model: config validation, shapes, unknown evidence, demographics, temperature, batch
independence, ONNX parity and one regression value."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch

from models.diagnosis import (
    PRESETS,
    DiagnosisConfig,
    age_bucket_one_hot,
    build,
    get_preset,
    sex_one_hot,
)


def _model(seed: int = 0, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build(dataclasses.replace(get_preset("tiny"), **overrides)).eval()  # type: ignore[arg-type]


def _inputs(b: int = 4, s: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    evidence = torch.randint(-1, 2, (b, s), generator=g).float()
    age = torch.tensor([-1.0, 0.0, 35.0, 70.0] * (b // 4 + 1))[:b]
    sex = torch.tensor([0, 1, 2, 1] * (b // 4 + 1))[:b]
    return evidence, age, sex


def test_config_validation_and_presets() -> None:
    with pytest.raises(ValueError, match="hidden"):
        DiagnosisConfig(hidden=0)
    with pytest.raises(ValueError, match="dropout"):
        DiagnosisConfig(dropout=1.0)
    with pytest.raises(ValueError, match="unknown diagnosis preset"):
        get_preset("huge")
    for name, cfg in PRESETS.items():
        assert DiagnosisConfig.from_dict(cfg.to_dict()) == cfg, name


def test_shapes_dtype_and_regression_value() -> None:
    model = _model()
    logits = model(*_inputs())
    assert logits.shape == (4, 8) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    # one regression value (seed 0, tiny preset): a change to the architecture or its initialisation shows
    assert float(logits[2].sum()) == pytest.approx(2.5028076, abs=1e-4)


def test_unknown_evidence_contributes_nothing_and_rows_are_independent() -> None:
    model = _model()
    evidence, age, sex = _inputs(8)
    batched = model(evidence, age, sex)
    for i in range(8):
        alone = model(evidence[i:i + 1], age[i:i + 1], sex[i:i + 1])
        assert torch.allclose(alone[0], batched[i], atol=1e-6)
    empty = model(torch.zeros(3, 32), torch.full((3,), -1.0), torch.zeros(3, dtype=torch.long))
    assert torch.allclose(empty[0], empty[1]) and torch.allclose(empty[1], empty[2])
    present, absent = torch.zeros(1, 32), torch.zeros(1, 32)
    present[0, 5], absent[0, 5] = 1.0, -1.0
    unknown = (torch.full((1,), -1.0), torch.zeros(1, dtype=torch.long))
    assert not torch.allclose(model(present, *unknown), model(absent, *unknown)), "two channels, not +-x"
    assert not torch.allclose(model(present, *unknown), empty[:1])


def test_demographic_encodings() -> None:
    ages = torch.tensor([-1.0, 0.0, 0.9, 1.0, 5.9, 6.0, 15.0, 16.0, 39.0, 40.0, 59.0, 60.0, 99.0])
    one_hot = age_bucket_one_hot(ages)
    assert one_hot[0].sum() == 0, "unknown age is all zeros"
    assert one_hot[1:].argmax(dim=1).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert sex_one_hot(torch.tensor([0, 1, 2]), torch.float32).tolist() == [[0, 0], [1, 0], [0, 1]]
    model = _model()
    evidence = torch.zeros(2, 32)
    evidence[:, 0] = 1
    out = model(evidence, torch.tensor([30.0, 30.0]), torch.tensor([1, 2]))
    assert not torch.allclose(out[0], out[1]), "sex is used"
    blind = _model(use_demographics=False)
    out = blind(evidence, torch.tensor([30.0, 3.0]), torch.tensor([1, 2]))
    assert torch.allclose(out[0], out[1])


def test_temperature_divides_the_logits() -> None:
    model = _model()
    inputs = _inputs()
    base = model(*inputs)
    model.temperature.fill_(2.0)
    assert torch.allclose(model(*inputs), base / 2.0)
    assert "temperature" in model.state_dict(), "the fitted temperature travels with the weights"


def test_onnx_export_matches_torch() -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = _model()
    model.temperature.fill_(1.7)
    evidence, age, sex = _inputs(5)
    buf = io.BytesIO()
    torch.onnx.export(model, (evidence, age, sex), buf, input_names=["evidence", "age_years", "sex"],
                      output_names=["logits"], dynamic_axes={"evidence": {0: "B"}, "age_years": {0: "B"},
                                                             "sex": {0: "B"}, "logits": {0: "B"}},
                      opset_version=17, dynamo=False)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"evidence": evidence.numpy(), "age_years": age.numpy(), "sex": sex.numpy()})
    np.testing.assert_allclose(out, model(evidence, age, sex).detach().numpy(), atol=1e-5)

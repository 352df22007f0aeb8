"""Export the diagnosis model to ONNX, gate it on parity with torch, publish it with its knowledge tables.

    nui export diagnosis --checkpoint runs/diagnosis_small --data data/diagnosis --repo model_repository

The engine takes `evidence` float32 [batch, S] (+1 present, -1 absent, 0 unknown), `age_years` float32
[batch] (negative = unknown) and `sex` int64 [batch] (0 unknown, 1 female, 2 male) and returns `probs`
float32 [batch, D], the calibrated softmax over diseases. With `weights_dtype="float16"` (the default)
the weight matrices are stored as FP16 and cast to FP32 inside the graph: half the file, FP32 arithmetic.

Parity gate (nothing is published when it fails): on the evidence rows given (dev patients) or seeded
random evidence, ONNX Runtime's probabilities are within `atol` of torch's FP32 model everywhere, and the
top-5 disease lists are identical, except where only diseases whose torch probabilities are within
`2 * atol` of each other changed places (a near tie that rounding may legitimately swap; counted apart).
The knowledge tables the server needs (models/diagnosis_dialog.py `DiagnosisTables`) are written next to
the engine and checksummed in `manifest.json` like every other file.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from engines.manifest import Manifest, TensorSpec, file_digests, staged_version, write_manifest
from engines.onnx_weights import weights_to_fp16
from models.diagnosis import DiagnosisModel
from models.diagnosis_dialog import DiagnosisTables

logger = logging.getLogger(__name__)

TASK = "diagnosis"
OPSET = 17
DEFAULT_ATOL = {"float32": 1e-5, "float16": 2e-3}  # on probabilities; measured on the small model: ~1e-7 / 3.5e-4
TOP_K = 5


def tensor_specs(n_symptoms: int, n_diseases: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inputs = [TensorSpec("evidence", "float32", ["batch", n_symptoms]),
              TensorSpec("age_years", "float32", ["batch"]), TensorSpec("sex", "int64", ["batch"])]
    return inputs, [TensorSpec("probs", "float32", ["batch", n_diseases])]


class ParityError(RuntimeError):
    """The exported engine disagrees with the torch model; it was not published."""


class WithSoftmax(nn.Module):
    """Export wrapper applied from outside: logits -> probabilities."""

    def __init__(self, model: DiagnosisModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, evidence: torch.Tensor, age_years: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(evidence, age_years, sex), dim=-1)


@dataclass
class ParityReport:
    rows: int
    max_abs_diff: float
    atol: float
    top5_equal: int
    tie_swaps: int  # rows whose top-5 differ only by diseases whose torch probabilities are within 2 * atol
    mismatches: list[int] = field(default_factory=list)  # row numbers with different top-5 lists

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol and not self.mismatches

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "max_abs_diff": self.max_abs_diff, "atol": self.atol,
                "top5_equal": self.top5_equal, "tie_swaps": self.tie_swaps, "passed": self.passed}


def _example_inputs(n_symptoms: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    evidence = torch.zeros(2, n_symptoms)
    evidence[0, : min(3, n_symptoms)] = 1.0
    evidence[1, -1] = -1.0
    return evidence, torch.tensor([30.0, -1.0]), torch.tensor([1, 0])


def export_onnx(model: DiagnosisModel, path: Path, weights_dtype: str = "float16", opset: int = OPSET) -> None:
    """Trace-export the calibrated probabilities with a dynamic batch axis."""
    if weights_dtype not in DEFAULT_ATOL:
        raise ValueError(f"weights_dtype must be one of {sorted(DEFAULT_ATOL)}, got {weights_dtype!r}")
    wrapper = WithSoftmax(model.eval().float().cpu()).eval()
    inputs, outputs = tensor_specs(model.cfg.n_symptoms, model.cfg.n_diseases)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, _example_inputs(model.cfg.n_symptoms), str(path), opset_version=opset, dynamo=False,
            input_names=[t.name for t in inputs], output_names=[t.name for t in outputs],
            dynamic_axes={"evidence": {0: "batch"}, "age_years": {0: "batch"}, "sex": {0: "batch"},
                          "probs": {0: "batch"}},
        )
    if weights_dtype == "float16":
        weights_to_fp16(path)


def random_evidence(n: int, n_symptoms: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded rows of sparse evidence (1-8 present, 0-4 absent findings) with random age and sex."""
    rng = np.random.default_rng(seed)
    evidence = np.zeros((n, n_symptoms), dtype=np.float32)
    for i in range(n):
        idx = rng.choice(n_symptoms, size=min(n_symptoms, int(rng.integers(1, 13))), replace=False)
        n_present = min(len(idx), int(rng.integers(1, 9)))
        evidence[i, idx[:n_present]] = 1.0
        evidence[i, idx[n_present:]] = -1.0
    age = np.where(rng.random(n) < 0.3, -1.0, rng.uniform(0, 90, n)).astype(np.float32)
    return evidence, age, rng.integers(0, 3, n).astype(np.int64)


def check_parity(model: DiagnosisModel, onnx_path: Path, evidence: np.ndarray, age_years: np.ndarray,
                 sex: np.ndarray, atol: float, batch_size: int = 256) -> ParityReport:
    model = model.eval().float().cpu()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    report = ParityReport(rows=0, max_abs_diff=0.0, atol=atol, top5_equal=0, tie_swaps=0)
    k = min(TOP_K, model.cfg.n_diseases)
    for start in range(0, len(evidence), batch_size):
        e, a, s = (x[start:start + batch_size] for x in (evidence, age_years, sex))
        with torch.no_grad():
            t = torch.softmax(model(torch.from_numpy(e), torch.from_numpy(a), torch.from_numpy(s)), -1).numpy()
        (o,) = session.run(None, {"evidence": e, "age_years": a, "sex": s})
        report.max_abs_diff = max(report.max_abs_diff, float(np.abs(t - o).max()))
        for i in range(len(e)):
            top_t = np.argsort(-t[i], kind="stable")[:k]
            top_o = np.argsort(-o[i], kind="stable")[:k]
            if np.array_equal(top_t, top_o):
                report.top5_equal += 1
            elif np.abs(t[i, top_t] - t[i, top_o]).max() <= 2 * atol:
                report.tie_swaps += 1  # only near-equal diseases changed places
            else:
                report.mismatches.append(start + i)
        report.rows += len(e)
    return report


def export_diagnosis(model: DiagnosisModel, tables: DiagnosisTables, repo: Path, model_name: str = "diagnosis",
                     version: int | None = None, *, dev_inputs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                     weights_dtype: str = "float16", atol: float | None = None,
                     source_checkpoint_sha256: str = "", extras: dict[str, Any] | None = None
                     ) -> tuple[Path, Manifest]:
    """Export, gate and publish `model` + `tables` as `<repo>/<model_name>/<version>/` (default: next).

    dev_inputs: (evidence (N, S) float32, age_years (N,) float32, sex (N,) int64) for the parity gate;
    seeded random evidence when None. Raises ParityError (publishing nothing) when the gate fails and
    ValueError when the tables do not match the model's input/output sizes.
    """
    cfg = model.cfg
    if (len(tables.symptoms), len(tables.diseases)) != (cfg.n_symptoms, cfg.n_diseases):
        raise ValueError(f"tables hold {len(tables.symptoms)} symptoms x {len(tables.diseases)} diseases, the "
                         f"model takes {cfg.n_symptoms} x {cfg.n_diseases}")
    atol = atol if atol is not None else DEFAULT_ATOL.get(weights_dtype, 0.0)
    with staged_version(repo, model_name, version) as (tmp, final):
        export_onnx(model, tmp / "model.onnx", weights_dtype)
        inputs = dev_inputs if dev_inputs is not None else random_evidence(256, cfg.n_symptoms)
        report = check_parity(model, tmp / "model.onnx", *inputs, atol=atol)
        logger.info("parity: %d rows, max |diff| %.2e (atol %.0e), top-5 equal %d, near-tie swaps %d",
                    report.rows, report.max_abs_diff, atol, report.top5_equal, report.tie_swaps)
        if not report.passed:
            raise ParityError(f"parity gate failed: max |diff| {report.max_abs_diff:.3e} (atol {atol:.0e}), "
                              f"{len(report.mismatches)} rows with a different top-5, e.g. rows "
                              f"{report.mismatches[:5]}")
        tables.save(tmp)
        ins, outs = tensor_specs(cfg.n_symptoms, cfg.n_diseases)
        manifest = Manifest(
            model=model_name, task=TASK, config=cfg.to_dict(), inputs=ins, outputs=outs, files=file_digests(tmp),
            engine="onnxruntime", precision="fp16-weights" if weights_dtype == "float16" else "fp32",
            opset=OPSET, source_checkpoint_sha256=source_checkpoint_sha256,
            parity={**report.to_dict(), "dev_data": dev_inputs is not None},
            extras={"size_bytes": sum(p.stat().st_size for p in tmp.iterdir() if p.is_file()), **(extras or {})},
        )
        write_manifest(tmp, manifest)
    return final, manifest

"""Export the free-text symptom matcher: all-MiniLM-L6-v2 to int8 ONNX, gated on parity with torch, plus
its tokenizer, the symptom phrase table and the tuned threshold.

    nui export symptom-text --data data/diagnosis --repo model_repository   (glue: nui/symptom_text.py)

Engine: `input_ids`, `attention_mask` int64 [batch, sequence] -> `embeddings` float32 [batch, 384]; the
BERT encoder, mean pooling over real tokens and L2 normalisation are all inside the graph (what
sentence-transformers' Transformer -> Pooling(mean) -> Normalize does). Weights (MatMul and the token
embedding Gather) are quantized to int8 with ONNX Runtime's dynamic quantization (one FFN projection kept in
FP32, see KEEP_FP32): ~25 MB instead of 90.

Parity gate (nothing is published when it fails): on the sentences given, cosine(torch, int8 ONNX) >=
`min_cosine` for every sentence, and the best-matching symptom of each evaluation phrase is the same when
queries and table are embedded by torch as by the int8 engine, except near ties (the torch scores of the
two symptoms within `tie_margin`), which are counted apart.

Version folder: model.onnx, tokenizer.json, phrases.json + phrase_embeddings.safetensors (int8 with a scale
per row: the table embedded by the int8 engine itself, so queries and table share one space), manifest.json (extras: the
threshold, tuning figures, knowledge-base fingerprint, sources).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engines.engine import OnnxRuntimeEngine
from engines.manifest import Manifest, TensorSpec, file_digests, staged_version, write_manifest
from engines.text_encoder import TOKENIZER_FILE, TextEncoder
from models.symptom_text import PhraseTable

logger = logging.getLogger(__name__)

TASK = "symptom_text"
OPSET = 17
EMBEDDING_DIM = 384


def tensor_specs() -> tuple[list[TensorSpec], list[TensorSpec]]:
    return ([TensorSpec("input_ids", "int64", ["batch", "sequence"]),
             TensorSpec("attention_mask", "int64", ["batch", "sequence"])],
            [TensorSpec("embeddings", "float32", ["batch", EMBEDDING_DIM])])


class ParityError(RuntimeError):
    """The exported encoder disagrees with the torch model; nothing was published."""


class MeanPooledEncoder(nn.Module):
    """Export wrapper applied from outside: BERT -> masked mean over tokens -> L2 normalisation."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=torch.zeros_like(input_ids)).last_hidden_state  # (B, T, E)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(mean, p=2.0, dim=1)


def export_onnx(bert: nn.Module, path: Path, opset: int = OPSET) -> None:
    wrapper = MeanPooledEncoder(bert.eval().float().cpu()).eval()
    ids = torch.tensor([[101, 2026, 2132, 102, 0], [101, 2053, 9016, 2074, 102]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    inputs, outputs = tensor_specs()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (ids, mask), str(path), opset_version=opset, dynamo=False,
                          input_names=[t.name for t in inputs], output_names=[t.name for t in outputs],
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                        "attention_mask": {0: "batch", 1: "sequence"},
                                        "embeddings": {0: "batch"}})


# MatMuls left in FP32. Measured on the 300 tuning + evaluation descriptions (min cosine to torch): all
# quantized 0.978; keeping one FFN output projection in FP32 (+1.8 MB): layer 0 0.980, layer 1 0.984,
# layers 2-4 0.979-0.980; all six 0.991 but +10 MB. Layer 1's FFN output carries the activation outliers
# that per-tensor int8 activations clip most.
KEEP_FP32 = ("/bert/encoder/layer.1/output/dense/MatMul",)


def quantize_int8(src: Path, dst: Path, keep_fp32: tuple[str, ...] = KEEP_FP32) -> None:
    """Dynamic int8 quantization (weights per output channel ahead of time, activations per tensor at run
    time) of MatMul and the embedding Gather, except the `keep_fp32` nodes (per-tensor weights: cosine to
    FP32 ~0.95; per channel ~0.99 on short phrases)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantizer logs every tensor at INFO on the root logger
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gather"], nodes_to_exclude=list(keep_fp32))
    finally:
        root.setLevel(level)


@dataclass
class ParityReport:
    sentences: int
    min_cosine: float
    min_cosine_required: float
    phrases: int
    same_top1: int
    tie_swaps: int
    mismatches: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.min_cosine >= self.min_cosine_required and not self.mismatches

    def to_dict(self) -> dict[str, Any]:
        return {"sentences": self.sentences, "min_cosine": self.min_cosine,
                "min_cosine_required": self.min_cosine_required, "eval_phrases": self.phrases,
                "same_top1": self.same_top1, "tie_swaps": self.tie_swaps, "passed": self.passed}


def _top_symptom(queries: np.ndarray, table: np.ndarray, owner: np.ndarray, n_symptoms: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(N,) best symptom and (N, S) best cosine per symptom."""
    sims = queries @ table.T  # (N, P)
    per_symptom = np.full((len(queries), n_symptoms), -2.0, dtype=np.float32)
    np.maximum.at(per_symptom.T, owner, sims.T)
    return per_symptom.argmax(axis=1), per_symptom


def check_parity(torch_encode: Callable[[list[str]], np.ndarray], onnx_encode: Callable[[list[str]], np.ndarray],
                 sentences: list[str], phrases: list[str], table_phrases: list[str], owner: np.ndarray,
                 n_symptoms: int, min_cosine: float, tie_margin: float) -> ParityReport:
    a, b = torch_encode(sentences), onnx_encode(sentences)
    cos = (a * b).sum(axis=1)
    report = ParityReport(sentences=len(sentences), min_cosine=float(cos.min()) if len(cos) else 1.0,
                          min_cosine_required=min_cosine, phrases=len(phrases), same_top1=0, tie_swaps=0)
    top_t, score_t = _top_symptom(torch_encode(phrases), torch_encode(table_phrases), owner, n_symptoms)
    top_o, _ = _top_symptom(onnx_encode(phrases), onnx_encode(table_phrases), owner, n_symptoms)
    for i, (t, o) in enumerate(zip(top_t.tolist(), top_o.tolist(), strict=True)):
        if t == o:
            report.same_top1 += 1
        elif score_t[i, t] - score_t[i, o] <= tie_margin:
            report.tie_swaps += 1
        else:
            report.mismatches.append(phrases[i])
    return report


def export_symptom_text(sentence_model: Any, tokenizer_json: Path, table: PhraseTable, repo: Path,
                        tune: Callable[[TextEncoder, PhraseTable], dict[str, Any]], *, parity_sentences: list[str],
                        parity_phrases: list[str], model_name: str = "symptom_text", version: int | None = None,
                        max_tokens: int = 256, min_cosine: float = 0.98, tie_margin: float = 0.02,
                        extras: dict[str, Any] | None = None) -> tuple[Path, Manifest]:
    """Export, gate and publish `<repo>/<model_name>/<version>/`.

    sentence_model: a sentence-transformers all-MiniLM-L6-v2 (Transformer -> mean Pooling -> Normalize).
    table: phrases and owners; its embeddings are (re)computed here with the int8 engine.
    tune(encoder, table) -> {"threshold": float, ...}: picks the threshold on the tuning set with the
    exported encoder; the result goes into the manifest.
    """
    bert = sentence_model[0].auto_model

    @torch.no_grad()
    def torch_encode(texts: list[str]) -> np.ndarray:
        return np.asarray(sentence_model.encode(texts, batch_size=64, normalize_embeddings=True,
                                                convert_to_numpy=True), dtype=np.float32)

    inputs, outputs = tensor_specs()
    config = {"base_model": "sentence-transformers/all-MiniLM-L6-v2", "pooling": "mean", "normalize": True,
              "max_tokens": max_tokens, "embedding_dim": EMBEDDING_DIM,
              "quantization": "dynamic int8, weights per channel (MatMul, Gather)", "fp32_nodes": list(KEEP_FP32)}
    with staged_version(repo, model_name, version) as (tmp, final), tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch) / "1"  # the runtime engine wants a version-numbered folder
        work.mkdir()
        export_onnx(bert, work / "fp32.onnx")
        quantize_int8(work / "fp32.onnx", tmp / "model.onnx")
        shutil.copyfile(tokenizer_json, tmp / TOKENIZER_FILE)
        for name in ("model.onnx", TOKENIZER_FILE):
            shutil.copyfile(tmp / name, work / name)
        (work / "fp32.onnx").unlink()
        # a provisional manifest lets the runtime engine load the graph for the gate and the table
        write_manifest(work, Manifest(model=model_name, task=TASK, config=config, inputs=inputs, outputs=outputs,
                                      files=file_digests(work), precision="int8-dynamic", opset=OPSET))
        encoder = TextEncoder(OnnxRuntimeEngine(work, verify=False), work / TOKENIZER_FILE, max_tokens)
        report = check_parity(torch_encode, encoder, parity_sentences, parity_phrases, table.phrases, table.symptom,
                              len(table.symptom_ids), min_cosine, tie_margin)
        logger.info("parity: %s", report.to_dict())
        if not report.passed:
            raise ParityError(f"parity gate failed: min cosine {report.min_cosine:.4f} (need {min_cosine}), "
                              f"{len(report.mismatches)} phrases with another top-1 symptom, e.g. "
                              f"{report.mismatches[:3]}")
        table.embeddings = encoder(table.phrases)
        table.save(tmp)
        table = PhraseTable.load(tmp)  # tune on the table exactly as stored (int8 rows) and served
        tuning = tune(encoder, table)
        manifest = Manifest(
            model=model_name, task=TASK, config=config, inputs=inputs, outputs=outputs, files=file_digests(tmp),
            engine="onnxruntime", precision="int8-dynamic", opset=OPSET, parity=report.to_dict(),
            extras={"threshold": float(tuning["threshold"]), "tuning": tuning, "phrases": len(table.phrases),
                    "symptoms": len(table.symptom_ids),
                    "size_bytes": sum(p.stat().st_size for p in tmp.iterdir() if p.is_file()), **(extras or {})})
        write_manifest(tmp, manifest)
    return final, manifest

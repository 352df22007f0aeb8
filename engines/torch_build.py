"""Publish a `torch` engine version (engines/torch_engine.py) next to the ONNX export it was gated with.

    nui export speech --checkpoint runs/speech_small --repo repo --engine torch --precision fp16

The caller exports and gates the ONNX engine as usual (into a staging repository), then
`publish_torch(onnx_dir, model, repo, ...)` writes the model's state dict as `model.safetensors`
(FP32: the FP32 master weights autocast reads; FP16 storage would round differently from the ONNX
export, which folds batch norms into convolutions before rounding), copies the other files (LM, tables,
tokenizer; no ONNX), and gates the torch engine against the FP32 ONNX engine: the rebuilt modules, run
by `TorchEngine` on the CPU, must give its outputs on the caller's example feeds within
`atol + rtol * |ONNX|`. Nothing is published when they do not (a config/weights mismatch, or a wrapper
that drifted from what was exported). --precision fp16 marks the version for FP16 autocast on CUDA.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from engines.engine import OnnxRuntimeEngine
from engines.manifest import Manifest, file_digests, read_manifest, staged_version, write_manifest
from engines.torch_engine import ENGINE_TYPE, EXTRA_PREFIX, WEIGHTS_FILE, TorchEngine
from models.speech_batch import pad_batch

PRECISIONS = ("fp32", "fp16")  # fp16: FP16 autocast on CUDA (FP32 on CPU); the weights are stored FP32


class TorchParityError(ValueError):
    """The torch engine's outputs differ from the ONNX engine's; nothing was published."""


def _compare(onnx_dir: Path, torch_dir: Path, graph: str | None, feeds: list[dict[str, np.ndarray]],
             atol: float, rtol: float) -> float:
    reference = OnnxRuntimeEngine(onnx_dir, graph=graph, verify=False)
    candidate = TorchEngine(torch_dir, graph=graph, verify=False, device="cpu", staged=True)
    worst = 0.0
    for feed in feeds:
        want, got = reference.run(feed), candidate.run(feed)
        for name, ref in want.items():
            if got[name].shape != ref.shape:
                raise TorchParityError(f"graph {graph or 'model'} output {name!r}: torch shape {got[name].shape}, "
                                       f"ONNX {ref.shape}")
            excess = np.abs(got[name].astype(np.float64) - ref) - rtol * np.abs(ref.astype(np.float64))
            worst = max(worst, float(np.max(excess, initial=0.0)))
    if worst > atol:
        raise TorchParityError(f"graph {graph or 'model'}: torch engine differs from the ONNX engine by {worst:.3g} "
                               f"beyond rtol {rtol:g} (atol {atol:g}); not published")
    return worst


def publish_torch(onnx_dir: Path, model: nn.Module, repo: Path, model_name: str, version: int | None = None, *,
                  precision: str = "fp16", feeds: Mapping[str | None, list[dict[str, np.ndarray]]],
                  extra_tensors: Mapping[str, torch.Tensor] | None = None,
                  atol: float = 1e-3, rtol: float = 1e-3) -> tuple[Path, Manifest]:
    """Publish `model` (the one exported to `onnx_dir` with FP32 weights) as a torch engine version; `feeds`
    maps each graph (None for single-graph models) to example inputs for the parity gate; `extra_tensors` are what the
    task's graphs need besides the weights (the captioner's domain check: `domain_tensors`), stored as-is
    under the "extra." prefix. Returns (folder, manifest)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    src = read_manifest(onnx_dir)
    if src.precision != "fp32":
        raise ValueError(f"{onnx_dir}: the torch engine is gated against an FP32 ONNX export, this one is "
                         f"{src.precision!r}")
    graphs: list[str | None] = sorted(src.extras["graphs"]) if "graphs" in src.extras else [None]
    missing = [g for g in graphs if not feeds.get(g)]
    if missing:
        raise ValueError(f"publish_torch needs example feeds for graphs {missing}")
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    state.update({EXTRA_PREFIX + k: v.detach().cpu().contiguous() for k, v in (extra_tensors or {}).items()})
    with staged_version(repo, model_name, version) as (tmp, final):
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"model": model_name, "task": src.task})
        for name in src.files:
            if not name.endswith(".onnx"):
                shutil.copyfile(onnx_dir / name, tmp / name)
        extras = dict(src.extras)
        if "size_bytes" in extras:
            extras["size_bytes"] = sum(f.stat().st_size for f in tmp.iterdir())
        staged = replace(src, model=model_name, engine=ENGINE_TYPE, files=file_digests(tmp), precision=precision,
                         extras=extras)
        write_manifest(tmp, staged)
        report: dict[str, Any] = {"atol": atol, "rtol": rtol, "graphs": {}}
        for graph in graphs:
            report["graphs"][graph or "model"] = _compare(onnx_dir, tmp, graph, list(feeds[graph]), atol, rtol)
        report["passed"] = True
        manifest = replace(staged, parity={**src.parity, "torch": report})
        write_manifest(tmp, manifest)
    return final, manifest


def speech_feeds(clips: list[np.ndarray], batch_size: int = 8) -> list[dict[str, np.ndarray]]:
    """Padded batches of clips (mixed lengths, so padding is gated too) for a speech model's gate."""
    feeds: list[dict[str, np.ndarray]] = []
    for i in range(0, len(clips), batch_size):
        audio, lengths = pad_batch(clips[i: i + batch_size])
        feeds.append({"audio": audio, "audio_lengths": lengths})
    return feeds


def captioner_feeds(onnx_dir: Path, images: np.ndarray,
                    first_tokens: np.ndarray) -> dict[str | None, list[dict[str, np.ndarray]]]:
    """Encoder feed = the images; decoder-step feed = `first_tokens` over the ONNX encoder's outputs."""
    encoded = OnnxRuntimeEngine(onnx_dir, graph="encoder", verify=False).run({"images": images})
    step = {"tokens": first_tokens.astype(np.int64), "state": encoded["state"], "memory": encoded["memory"],
            "keys": encoded["keys"]}
    return {"encoder": [{"images": images}], "decoder_step": [step]}

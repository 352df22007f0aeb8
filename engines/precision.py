"""FP16 range report of an exported FP32 graph: weight and activation magnitudes against FP16's limits.

    nui precision --repo model_repository --model speech_ctc --version 1 --data data/speech/dev.jsonl \
        --limit 100 --out docs/speech_ctc/precision

Works on the ONNX graph (any task, no torch): weights are its float initializers; activations are every
float tensor the graph computes, captured by listing them as extra graph outputs and running the dev
inputs through ONNX Runtime. Magnitudes go into log2 buckets (Deep Speech 2's slide-48 histogram) and
are counted against FP16's range: below the smallest subnormal (2^-24: flushed to zero), subnormal
(2^-24 .. 2^-14: fewer mantissa bits), normal, and above the largest finite value (65504: overflow).
Activations are split by where engines/fp16.py's plan computes them: in FP16, or in an FP32 island
(those may leave FP16's range; that is why they are islands). Exact zeros (padding, ReLU) are counted
apart: FP16 holds them exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from tqdm import tqdm

from engines.fp16 import Fp16Plan

FP16_MIN_SUBNORMAL = 2.0 ** -24  # 5.96e-8
FP16_MIN_NORMAL = 2.0 ** -14  # 6.10e-5
FP16_MAX = 65504.0
LOG2_RANGE = (-40, 20)  # bucket edges 2^-40 .. 2^20; anything outside lands in the end buckets


@dataclass
class MagnitudeCounts:
    """log2-bucketed |x| counts and FP16 range shares of one population (weights, FP16 activations, ...)."""

    buckets: np.ndarray = field(default_factory=lambda: np.zeros(LOG2_RANGE[1] - LOG2_RANGE[0], dtype=np.int64))
    zeros: int = 0
    below_subnormal: int = 0  # 0 < |x| < 2^-24: becomes 0 in FP16
    subnormal: int = 0  # 2^-24 <= |x| < 2^-14: kept with fewer significant bits
    overflow: int = 0  # |x| > 65504: becomes inf in FP16
    nonfinite: int = 0
    total: int = 0

    def add(self, x: np.ndarray) -> None:
        a = np.abs(np.asarray(x, dtype=np.float64).ravel())
        finite = np.isfinite(a)
        self.nonfinite += int((~finite).sum())
        a = a[finite]
        self.total += int(a.size) + int((~finite).sum())
        nz = a[a > 0]
        self.zeros += int(a.size - nz.size)
        self.below_subnormal += int((nz < FP16_MIN_SUBNORMAL).sum())
        self.subnormal += int(((nz >= FP16_MIN_SUBNORMAL) & (nz < FP16_MIN_NORMAL)).sum())
        self.overflow += int((nz > FP16_MAX).sum())
        idx = np.clip(np.floor(np.log2(nz)).astype(np.int64) - LOG2_RANGE[0], 0, len(self.buckets) - 1)
        self.buckets += np.bincount(idx, minlength=len(self.buckets))

    def to_dict(self) -> dict[str, Any]:
        share = (lambda n: n / self.total) if self.total else (lambda n: 0.0)
        return {"total": self.total, "zeros": self.zeros,
                "share_below_fp16_subnormal": share(self.below_subnormal),
                "share_fp16_subnormal": share(self.subnormal), "share_above_fp16_max": share(self.overflow),
                "share_nonfinite": share(self.nonfinite),
                "log2_buckets": {str(LOG2_RANGE[0] + i): int(c) for i, c in enumerate(self.buckets) if c}}


def weight_counts(model: onnx.ModelProto, min_elements: int = 2) -> MagnitudeCounts:
    """Float initializers (and Constant tensors) with at least `min_elements` elements: the learned weights
    and the fixed bases (the featurizer's DFT and mel matrices); scalars are left out."""
    counts = MagnitudeCounts()
    tensors = [numpy_helper.to_array(t) for t in model.graph.initializer]
    tensors += [numpy_helper.to_array(a.t) for n in model.graph.node if n.op_type == "Constant"
                for a in n.attribute if a.name == "value"]
    for arr in tensors:
        if arr.dtype in (np.float32, np.float16, np.float64) and arr.size >= min_elements:
            counts.add(arr)
    return counts


def _island_tensors(model: onnx.ModelProto, plan: Fp16Plan) -> set[str]:
    return {o for n in model.graph.node
            if n.op_type in plan.island_ops or (plan.island_scopes and n.name.startswith(plan.island_scopes))
            for o in n.output}


def activation_counts(model_path: Path, feeds: Iterable[dict[str, np.ndarray]], plan: Fp16Plan,
                      n_batches: int | None = None) -> dict[str, MagnitudeCounts]:
    """{"fp16": ..., "fp32_islands": ...}: every float tensor the graph computes over all `feeds`."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
    # Tensors computed from weights alone (an FP16-stored weight's Cast to FP32) are weights, not activations.
    constant = {i.name for i in model.graph.initializer}
    for n in model.graph.node:
        if all(i in constant for i in n.input if i):
            constant.update(n.output)
    float_vi = [v for v in model.graph.value_info
                if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and v.name not in constant]
    islands = _island_tensors(model, plan)
    model.graph.output.extend(float_vi)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    # No fusion: the tensors measured are the exported graph's, one per op, as the FP16 converter sees them.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [v.name for v in float_vi]
    out = {"fp16": MagnitudeCounts(), "fp32_islands": MagnitudeCounts()}
    for feed in tqdm(feeds, total=n_batches, desc="activations", unit="batch"):
        for name, value in zip(names, session.run(names, feed), strict=True):
            out["fp32_islands" if name in islands else "fp16"].add(value)
    return out


def plot_histograms(populations: dict[str, MagnitudeCounts], path: Path, title: str) -> None:
    """One panel per population: share of values per log2 bucket, FP16's limits marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(populations), 1, figsize=(10, 2.8 * len(populations)), sharex=True)
    axes = np.atleast_1d(axes)
    x = np.arange(LOG2_RANGE[0], LOG2_RANGE[1])
    for ax, (name, c) in zip(axes, populations.items(), strict=True):
        nonzero = max(1, int(c.buckets.sum()))
        ax.bar(x + 0.5, c.buckets / nonzero, width=1.0, color="tab:blue", edgecolor="none")
        for value, label, color in ((FP16_MIN_SUBNORMAL, "FP16 min subnormal 2^-24", "tab:red"),
                                    (FP16_MIN_NORMAL, "FP16 min normal 2^-14", "tab:orange"),
                                    (FP16_MAX, "FP16 max 65504", "tab:red")):
            ax.axvline(np.log2(value), color=color, linestyle="--", linewidth=1, label=label)
        ax.set_ylabel("share of non-zero")
        ax.set_title(f"{name}: {c.total:,} values, {c.zeros:,} zeros; below subnormal "
                     f"{c.below_subnormal / max(1, c.total):.2%}, subnormal {c.subnormal / max(1, c.total):.2%}, "
                     f"overflow {c.overflow / max(1, c.total):.2%}", fontsize=9)
    axes[0].legend(fontsize=8, loc="upper left")
    axes[-1].set_xlabel("log2 |value|")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)

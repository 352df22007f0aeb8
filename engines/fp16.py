"""FP16 engines: convert an exported FP32 version to FP16 with FP32 islands, gate it, publish it.

    nui export speech --checkpoint runs/speech_small --repo model_repository --precision fp16 \
        --dev-manifest data/speech/dev.jsonl

The FP32 engine is exported and gated against torch first (engines/export_*.py); this module converts
each of its ONNX graphs with ONNX Runtime's own converter (`onnxruntime.transformers.float16`): every
float tensor becomes FP16 except the *islands* kept in FP32, with Casts at their borders, and the graph's
inputs and outputs stay FP32 (the serving code and the manifest do not change). Islands are where FP16
breaks: softmax / log-softmax (exp overflows), normalisation and reductions (sums of squares overflow
65504), and per-task node scopes: the speech log-mel featurizer and utterance normalisation, where the
power spectrum of quiet audio underflows FP16 (|X|^2 ~ 1e-8 at -90 dBFS, FP16's smallest subnormal is
6e-8) and the log-mel of near-silence, rounded to FP16 (steps of 0.008 at -13.8), is then divided by
its tiny standard deviation.

Why ONNX Runtime's converter and not onnxconverter-common's: the latter leaves a `Cast(to=FLOAT)` node's
`to` attribute alone while retyping its output to FP16, which ONNX Runtime then refuses ("Type
(tensor(float16)) of output arg (/feature_norm/Cast_output_0) ... does not match expected type
(tensor(float))"; microsoft/onnxconverter-common#320, fix proposed in #328, unmerged). ONNX Runtime's copy
of the converter retargets those Casts to FP16.

One graph serves both targets. On a GPU (TensorRT strongly typed network, ORT CUDA) every non-island
op runs in FP16. ONNX Runtime's CPU provider has FP16 kernels only for data movement (Transpose, Concat,
Gather, Reshape, ...); for Conv, MatMul, GRU, Add, Mul it inserts Casts and runs them in FP32 on
FP16-rounded weights and activations. So on CPU the parity gate measures FP16 *storage* (weights and
every tensor between ops rounded to FP16) with FP32 arithmetic, which is what tensor cores do inside a
GEMM (FP16 inputs, FP32 accumulation); `cpu_kernel_precision` records which ops ran in which type, and
the manifest keeps that list next to the islands.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

from engines.manifest import Manifest, file_digests, read_manifest, staged_version, write_manifest

logger = logging.getLogger(__name__)

PRECISION = "fp16"
# Engines with FP32 arithmetic an FP16 engine is converted from and gated against. "fp16-weights" graphs
# (engines/onnx_weights.py) hold FP16 initializers behind Casts to FP32; the converter retargets those
# Casts to FP16, and their weights are already FP16-rounded, so nothing else changes.
SOURCE_PRECISIONS = ("fp32", "fp16-weights")
# Ops FP16 breaks in every model: exponentials and sums whose range or accumulated rounding FP16 cannot hold.
FP32_OPS = ("Softmax", "LogSoftmax", "LayerNormalization", "BatchNormalization", "InstanceNormalization",
            "GroupNormalization", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp",
            "Pow", "Sqrt", "Exp", "Log")


class Fp16GateError(RuntimeError):
    """The FP16 engine disagrees with the FP32 engine beyond the model's tolerances; nothing was published."""


@dataclass(frozen=True)
class Fp16Plan:
    """What stays FP32 in one model's graphs."""

    island_scopes: tuple[str, ...] = ()  # node-name prefixes kept FP32 whole (the exporter's module scopes)
    island_ops: tuple[str, ...] = FP32_OPS
    island_outputs: tuple[str, ...] = ()  # graph outputs whose own nodes (those no other output needs) stay FP32

    def to_dict(self) -> dict[str, Any]:
        return {"island_scopes": list(self.island_scopes), "island_ops": list(self.island_ops),
                "island_outputs": list(self.island_outputs)}


# Per task. The speech featurizer's |STFT|^2 underflows FP16 on quiet audio and the utterance normalisation
# divides by the standard deviation of the (then FP16-rounded) log-mel: both stay FP32 whole.
PLANS: dict[str, Fp16Plan] = {
    "speech_ctc": Fp16Plan(island_scopes=("/featurizer/", "/feature_norm/")),
    "diagnosis": Fp16Plan(),
    # The out-of-domain check (engines/export_captioner.py) measures a distance as a sum of 1,280 squared
    # differences of unit-length features against FP32 statistics: in FP16 it is off by tens of units.
    "captioner": Fp16Plan(island_outputs=("domain_score", "label_probs")),
}


@dataclass
class GraphConversion:
    file: str
    fp16_nodes: int  # nodes computing on FP16 tensors (on a GPU)
    fp32_islands: dict[str, int]  # op type -> nodes kept FP32 (float-valued compute only)
    cpu_kernels: dict[str, dict[str, int]]  # op type -> {"fp16": n, "fp32": n} as ORT's CPU provider ran them

    def to_dict(self) -> dict[str, Any]:
        cpu16 = sorted(op for op, c in self.cpu_kernels.items() if c.get("fp16"))
        cpu32 = sorted(op for op, c in self.cpu_kernels.items() if c.get("fp32"))
        return {"file": self.file, "fp16_nodes": self.fp16_nodes, "fp32_islands": self.fp32_islands,
                "cpu_fp16_ops": cpu16, "cpu_fp32_ops": cpu32}


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor the graph knows (inputs, outputs, value_info, initializers)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]}
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    return types


def convert_graph(src: Path, dst: Path, plan: Fp16Plan) -> tuple[int, dict[str, int]]:
    """Write `src` converted to FP16 (FP32 inputs/outputs and islands) to `dst`; returns (FP16 node count,
    FP32 island node count by op type)."""
    model = onnx.load(str(src))
    types = _elem_types(model)
    scoped = [n.name for n in model.graph.node if n.name.startswith(plan.island_scopes)] if plan.island_scopes else []
    scoped += [n.name for n in output_owned_nodes(model.graph, plan.island_outputs) if n.name not in scoped]
    block_ops = sorted({*DEFAULT_OP_BLOCK_LIST, *plan.island_ops})
    islands: collections.Counter[str] = collections.Counter()
    fp16_nodes = 0
    for n in model.graph.node:
        is_float = any(types.get(i) == onnx.TensorProto.FLOAT for i in [*n.input, *n.output] if i)
        if not is_float or n.op_type in ("Constant", "Shape"):
            continue
        if n.op_type in block_ops or n.name in scoped:
            islands[n.op_type] += 1
        else:
            fp16_nodes += 1
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=block_ops,
                                         node_block_list=scoped)
    _drop_round_trips(converted)
    # The converter appends its Casts at the end of the node list; ONNX requires topological order.
    OnnxModel(converted).topological_sort()
    onnx.checker.check_model(converted)
    onnx.save(converted, str(dst))
    return fp16_nodes, dict(sorted(islands.items()))


def output_owned_nodes(graph: onnx.GraphProto, outputs: Sequence[str]) -> list[onnx.NodeProto]:
    """The nodes that compute `outputs` (those present in the graph) and nothing any other output needs."""
    present = {o.name for o in graph.output} & set(outputs)
    if not present:
        return []
    producer = {o: n for n in graph.node for o in n.output}

    def cone(names: Iterable[str]) -> set[int]:
        seen: set[int] = set()
        stack = [producer[t] for t in names if t in producer]
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            stack += [producer[i] for i in n.input if i in producer]
        return seen

    own = cone(present) - cone(o.name for o in graph.output if o.name not in present)
    unnamed = [n.op_type for n in graph.node if id(n) in own and not n.name]
    if unnamed:
        raise ValueError(f"cannot keep unnamed nodes FP32 (node_block_list works by name): {unnamed}")
    return [n for n in graph.node if id(n) in own]


def _drop_round_trips(model: onnx.ModelProto) -> int:
    """Remove Cast(FP32->FP16) -> Cast(FP16->FP32) round trips; returns how many Cast nodes were removed.

    The converter casts every blocked node's output to FP16 and back in front of the next blocked node,
    so without this pass an "island" would still round each intermediate (x - mean, the variance, ...)
    to FP16: the utterance normalisation of quiet audio then amplifies that rounding into garbage
    (measured on the bundled speech model, noise at -90 dBFS peak: max |prob diff| vs FP32 0.83 with the
    round trips, 0.0016 without; 0.031 with no featurizer island at all).
    """
    graph = model.graph
    types = _elem_types(model)
    outputs = {o.name for o in graph.output}
    consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)

    def cast_to(n: onnx.NodeProto) -> int | None:
        return next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" else None

    rename: dict[str, str] = {}
    dead: list[onnx.NodeProto] = []
    for n in graph.node:
        if cast_to(n) != onnx.TensorProto.FLOAT16 or types.get(n.input[0]) != onnx.TensorProto.FLOAT:
            continue
        users = consumers[n.output[0]]
        back = [u for u in users if cast_to(u) == onnx.TensorProto.FLOAT and u.output[0] not in outputs]
        for u in back:  # FP32 consumers read the FP32 source; FP16 ones keep the Cast
            rename[u.output[0]] = n.input[0]
        dead += back
        if len(back) == len(users) and n.output[0] not in outputs:
            dead.append(n)
    for n in graph.node:
        for k, i in enumerate(n.input):
            if i in rename:
                n.input[k] = rename[i]
    for n in dead:
        graph.node.remove(n)
    return len(dead)


def cpu_kernel_precision(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, dict[str, int]]:
    """Run `path` once on ONNX Runtime's CPU provider with profiling: op type -> {"fp16": n, "fp32": n}
    kernels by the float type of their inputs (after ORT inserted Casts around ops with no FP16 kernel)."""
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    out: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"fp16": 0, "fp32": 0})
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        types = {next(iter(d)) for d in e["args"].get("input_type_shape", [])}
        if "float16" in types:
            out[e["args"]["op_name"]]["fp16"] += 1
        elif "float" in types:
            out[e["args"]["op_name"]]["fp32"] += 1
    return dict(sorted(out.items()))


def onnx_files(manifest: Manifest) -> list[str]:
    return sorted(f for f in manifest.files if f.endswith(".onnx"))


@contextlib.contextmanager
def fp32_staging() -> Iterator[Path]:
    """A throw-away model repository for the FP32 export the FP16 engine is converted from and gated on."""
    tmp = Path(tempfile.mkdtemp(prefix="nui-fp32-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# gate(fp32 version folder, fp16 version folder) -> report with a "passed" bool and the measured figures.
Gate = Callable[[Path, Path], dict[str, Any]]
# example_feeds(fp32 version folder, graph file) -> one feed of that graph, for the CPU kernel census
ExampleFeeds = Callable[[Path, str], dict[str, np.ndarray]]


def publish_fp16(src_dir: Path, repo: Path, model_name: str, version: int | None, gate: Gate,
                 example_feeds: ExampleFeeds, plan: Fp16Plan | None = None,
                 extras: dict[str, Any] | None = None) -> tuple[Path, Manifest]:
    """Convert the FP32 version in `src_dir` to FP16, run `gate` against it, publish `<repo>/<model_name>/<version>`.

    Raises Fp16GateError (publishing nothing) when the gate fails, ValueError when `src_dir` is not an
    engine with FP32 arithmetic (SOURCE_PRECISIONS).
    """
    src = read_manifest(src_dir)
    if src.precision not in SOURCE_PRECISIONS:
        raise ValueError(f"{src_dir}: FP16 conversion starts from an engine with FP32 arithmetic "
                         f"{SOURCE_PRECISIONS}, this one is {src.precision!r}")
    plan = plan or PLANS.get(src.task, Fp16Plan())
    with staged_version(repo, model_name, version) as (tmp, final):
        graphs = []
        for name in src.files:
            if name.endswith(".onnx"):
                fp16_nodes, islands = convert_graph(src_dir / name, tmp / name, plan)
                graphs.append(GraphConversion(name, fp16_nodes, islands,
                                              cpu_kernel_precision(tmp / name, example_feeds(src_dir, name))))
            else:
                shutil.copyfile(src_dir / name, tmp / name)
        report = gate(src_dir, tmp)
        logger.info("fp16 gate: %s", report)
        if not report.get("passed"):
            raise Fp16GateError(f"FP16 gate failed against the FP32 engine: {report}")
        size = {"fp32": sum((src_dir / f).stat().st_size for f in onnx_files(src)),
                "fp16": sum((tmp / f).stat().st_size for f in onnx_files(src))}
        new_extras = {**src.extras, **(extras or {}),
                      "fp16": {**plan.to_dict(), "graphs": [g.to_dict() for g in graphs], "onnx_size_bytes": size}}
        if "size_bytes" in new_extras:
            new_extras["size_bytes"] = sum(p.stat().st_size for p in tmp.iterdir() if p.is_file())
        manifest = replace(src, model=model_name, files=file_digests(tmp), precision=PRECISION,
                           parity={"fp32_vs_torch": src.parity, "fp16_vs_fp32": report}, extras=new_extras)
        write_manifest(tmp, manifest)
    return final, manifest


def island_summary(manifest: Manifest) -> list[str]:
    """One line per graph: what runs FP16, what stays FP32 (for logs and the CLI)."""
    fp16 = manifest.extras.get("fp16", {})
    return [f"{g['file']}: {g['fp16_nodes']} FP16 nodes, FP32 islands {g['fp32_islands']}; ORT CPU ran FP16 "
            f"kernels for {g['cpu_fp16_ops']}" for g in fp16.get("graphs", [])]

"""Runtime engines: one `Engine` Protocol, an ONNX Runtime backend (CPU, or the CUDA / TensorRT execution
providers of an onnxruntime-gpu build), and loading from a repository (TensorRT plans: tensorrt_engine.py).

An engine runs one exported model version: `run({"audio": ..., "audio_lengths": ...})` returns its
named outputs as numpy arrays. The serving path imports only this module (no torch).

    from engines.engine import load_engine
    engine = load_engine(Path("model_repository"), "speech_ctc")  # highest version
    engine = load_engine(Path("model_repository"), "speech_ctc", provider="cuda")  # onnxruntime-gpu
    outputs = engine.run({"audio": audio, "audio_lengths": lengths})
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from engines.manifest import Manifest, TensorSpec, read_manifest, version_dir

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"

# ONNX Runtime's element type strings for the numpy dtype names manifests use.
_ORT_TYPES = {
    "float32": "tensor(float)",
    "float16": "tensor(float16)",
    "float64": "tensor(double)",
    "int64": "tensor(int64)",
    "int32": "tensor(int32)",
}


# `--provider` names -> ONNX Runtime execution providers, in the order ORT assigns nodes (what the first
# cannot run falls to the next). The TensorRT EP runs the FP16 graph as typed (engines/fp16.py) and caches
# its plans; CUDA backs it up for nodes TensorRT does not take.
PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def resolve_providers(provider: str, available: list[str] | None = None) -> list[str]:
    """ORT providers for a `--provider` name; ValueError naming what this onnxruntime build has when the
    requested one is missing (a CPU-only `onnxruntime` wheel has no CUDA/TensorRT providers)."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown execution provider {provider!r}; choose from {sorted(PROVIDERS)}")
    have = ort.get_available_providers() if available is None else available
    wanted = PROVIDERS[provider]
    missing = [p for p in wanted[:-1] if p not in have]  # CPU is always there
    if missing:
        raise ValueError(f"execution provider {provider!r} needs {missing}, which this onnxruntime build does not "
                         f"have (available: {have}); install onnxruntime-gpu (pip install '.[gpu]') on a CUDA "
                         "machine, or serve with --provider cpu")
    return wanted


class Engine(Protocol):
    """A loaded model version. `run` is thread-safe and may be called from a worker thread."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def manifest(self) -> Manifest: ...

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def default_intra_op_threads() -> int:
    """Threads for one engine run: all cores, at most 4 (small models stop scaling beyond that)."""
    return max(1, min(4, os.cpu_count() or 1))


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one batch at a time uses the threads
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    # Idle ORT threads otherwise spin for a while after each run, stealing the few cores from the
    # event loop, audio decoding and other processes.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only
    return opts


def _check_specs(kind: str, expected: list[TensorSpec], actual: list[ort.NodeArg], where: Path) -> None:
    """Names and element types of the session's inputs/outputs must match the manifest's."""
    want = {t.name: t.dtype for t in expected}
    have = {a.name: a.type for a in actual}
    if set(want) != set(have):
        raise ValueError(f"{where}: the ONNX model's {kind} {sorted(have)} do not match the manifest's "
                         f"{sorted(want)}")
    for name, dtype in want.items():
        ort_type = _ORT_TYPES.get(dtype)
        if ort_type is None:
            raise ValueError(f"{where}: manifest {kind[:-1]} {name!r} has unsupported dtype {dtype!r}")
        if have[name] != ort_type:
            raise ValueError(f"{where}: ONNX {kind[:-1]} {name!r} is {have[name]}, the manifest says {dtype}")


def graph_specs(manifest: Manifest, graph: str | None) -> tuple[str, list[TensorSpec], list[TensorSpec]]:
    """(ONNX file, inputs, outputs) of one graph of a version: the manifest's own `model.onnx`, inputs and
    outputs when `graph` is None; else `extras["graphs"][graph]` = {"file", "inputs", "outputs"}, for
    models exported as several graphs (the captioner's encoder and decoder step)."""
    if graph is None:
        return ONNX_FILE, manifest.inputs, manifest.outputs
    graphs = manifest.extras.get("graphs")
    if not isinstance(graphs, dict) or graph not in graphs:
        known = sorted(graphs) if isinstance(graphs, dict) else []
        raise ValueError(f"{manifest.model}: manifest has no graph {graph!r} (graphs: {known})")
    try:
        spec = graphs[graph]
        return (str(spec["file"]), [TensorSpec(**t) for t in spec["inputs"]],
                [TensorSpec(**t) for t in spec["outputs"]])
    except (KeyError, TypeError) as e:
        raise ValueError(f"{manifest.model}: manifest graph {graph!r} is malformed: {e}") from e


class VersionEngine:
    """What every backend shares: the version folder's manifest (verified, its `engine` must be `kind`), the
    graph's file and tensor specs, the version number from the folder name (0 for an export's staging
    folder, `staged=True`), the `Engine` properties and the check of a run's input names."""

    def __init__(self, version_dir: Path, kind: str, *, verify: bool = True, graph: str | None = None,
                 staged: bool = False) -> None:
        self._dir = Path(version_dir)
        self._manifest = read_manifest(self._dir, verify=verify)
        if self._manifest.engine != kind:
            raise ValueError(f"{self._dir}: manifest engine is {self._manifest.engine!r}, not {kind!r}")
        self._graph_file, self._inputs, self._outputs = graph_specs(self._manifest, graph)
        if not (staged or self._dir.name.isdigit()):
            raise ValueError(f"{self._dir}: a version folder must be named by a positive integer")
        self._version = 0 if staged else int(self._dir.name)

    @property
    def name(self) -> str:
        return self._manifest.model

    @property
    def version(self) -> int:
        return self._version

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def _check_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        expected = {t.name for t in self._inputs}
        if set(inputs) != expected:
            raise ValueError(f"{self.name} v{self.version} takes inputs {sorted(expected)}, got {sorted(inputs)}")


class OnnxRuntimeEngine(VersionEngine):
    """An ONNX Runtime session on the CPU for `<repo>/<model>/<version>/` (manifest + model.onnx, or the
    named `graph` of a multi-graph export)."""

    def __init__(self, version_dir: Path, intra_op_threads: int | None = None, *,
                 verify: bool = True, graph: str | None = None, provider: str = "cpu") -> None:
        super().__init__(version_dir, "onnxruntime", verify=verify, graph=graph)
        onnx_file, outputs = self._graph_file, self._outputs
        if onnx_file not in self._manifest.files:
            raise ValueError(f"{self._dir}: manifest does not list {onnx_file}")
        threads = intra_op_threads if intra_op_threads is not None else default_intra_op_threads()
        providers = resolve_providers(provider)
        try:
            self._session = ort.InferenceSession(str(self._dir / onnx_file), session_options(threads),
                                                 providers=providers)
        except Exception as e:  # ORT raises its own untyped errors (InvalidGraph, Fail, ...)
            raise ValueError(f"{self._dir / onnx_file}: ONNX Runtime cannot load it: {e}") from e
        if self._session.get_providers()[0] != providers[0]:  # ORT falls back silently when CUDA libs fail
            raise ValueError(f"{self._dir / onnx_file}: ONNX Runtime could not start {providers[0]} (session runs "
                             f"on {self._session.get_providers()}); check the CUDA/cuDNN/TensorRT libraries")
        _check_specs("inputs", self._inputs, self._session.get_inputs(), self._dir)
        _check_specs("outputs", outputs, self._session.get_outputs(), self._dir)
        self._output_names = [o.name for o in outputs]
        logger.info("loaded %s version %d%s (%s, %d intra-op threads)", self.name, self._version,
                    f" graph {graph}" if graph else "", self._manifest.precision, threads)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_inputs(inputs)
        outputs = self._session.run(self._output_names, inputs)
        return {name: np.asarray(out) for name, out in zip(self._output_names, outputs, strict=True)}


def load_engine(repo: Path, model: str, version: int | None = None,
                intra_op_threads: int | None = None, *, graph: str | None = None, verify: bool = True,
                provider: str = "cpu") -> Engine:
    """Load `<repo>/<model>/<version>` (default: the highest version), verifying every file's sha256
    (unless `verify` is False: a further graph of a version already verified).

    The manifest's `engine` picks the backend: "onnxruntime" (on the execution `provider`: cpu, cuda or
    tensorrt, see PROVIDERS), "tensorrt" (a TensorRT plan, engines/tensorrt_engine.py) or "torch" (PyTorch
    on the GPU with `provider` cuda, on the CPU with cpu; engines/torch_engine.py).
    Raises ValueError with the folder and the mismatch when the repository, manifest or model is wrong, or
    when a TensorRT plan was built for another TensorRT version or GPU (EngineMismatch).
    """
    folder = version_dir(Path(repo), model, version)
    engine: Engine
    kind = read_manifest(folder, verify=False).engine
    if kind == "tensorrt":
        # imported only here: needs tensorrt + cuda-python, and refuses a plan built for another TensorRT/GPU
        from engines.tensorrt_engine import TensorRTEngine

        engine = TensorRTEngine(folder, graph=graph, verify=verify)
    elif kind == "torch":
        engine = _torch_engine(folder, graph, verify, provider)
    else:
        engine = OnnxRuntimeEngine(folder, intra_op_threads, graph=graph, verify=verify, provider=provider)
    if engine.name != model:
        raise ValueError(f"{folder}: manifest model is {engine.name!r} but the folder says {model!r}")
    return engine


def _torch_engine(folder: Path, graph: str | None, verify: bool, provider: str) -> Engine:
    """A `torch` version on the device `provider` names; a clear error where torch is not installed (the
    serving-only install) instead of an ImportError deep in start-up."""
    if provider not in ("cpu", "cuda"):
        raise ValueError(f"{folder}: a torch engine runs with --provider cuda or cpu, not {provider!r}")
    try:
        from engines.torch_engine import TorchEngine
    except ImportError as e:
        raise ValueError(f"{folder}: a torch engine needs PyTorch, which this install lacks ({e}); install the "
                         "train extra or serve an ONNX version") from e
    return TorchEngine(folder, graph=graph, verify=verify, device=provider)

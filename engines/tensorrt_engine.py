"""TensorRT runtime backend behind the `Engine` Protocol, and the start-up check that a plan fits this machine.

    engine = load_engine(Path("model_repository"), "speech_ctc", 4)  # manifest engine "tensorrt" -> this class

A TensorRT plan runs only under the TensorRT version that built it and on GPUs of the compute capability
it was built for (without the version- / hardware-compatibility build modes, which cost speed). The
manifest records both (engines/tensorrt_build.py); `check_compatible` compares them with what is installed
and raises `EngineMismatch` naming both sides and the rebuild command, so a server refuses a wrong plan at
start-up instead of failing on the first request. Device memory and copies use cuda-python (no torch on
the serving path). Needs `tensorrt` and `cuda-python` (the `gpu` extra) and a CUDA GPU.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from engines.engine import VersionEngine
from engines.manifest import Manifest

logger = logging.getLogger(__name__)

ENGINE_TYPE = "tensorrt"
PLAN_SUFFIX = ".plan"


class EngineMismatch(ValueError):
    """The plan was built by another TensorRT version or for another GPU architecture."""


def check_compatible(manifest: Manifest, trt_version: str, compute_capability: str, where: Path | str = "") -> None:
    """Raise EngineMismatch unless this machine's TensorRT version and GPU compute capability are the plan's."""
    built = manifest.extras.get("tensorrt")
    if not isinstance(built, dict) or "version" not in built or "compute_capability" not in built:
        raise EngineMismatch(f"{where}: a tensorrt engine's manifest must record extras['tensorrt'] version and "
                             "compute_capability; rebuild it with nui export ... --engine tensorrt")
    problems = []
    if built["version"] != trt_version:
        problems.append(f"TensorRT {built['version']} built it, this machine has TensorRT {trt_version}")
    if built["compute_capability"] != compute_capability:
        problems.append(f"it was built for GPUs of compute capability {built['compute_capability']}, this GPU is "
                        f"{compute_capability}")
    if problems:
        raise EngineMismatch(f"{where}: cannot load this TensorRT plan: {'; '.join(problems)}. Rebuild it on this "
                             f"machine: nui export {manifest.task} ... --precision fp16 --engine tensorrt")


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ValueError("TensorRT is not installed here (pip install '.[gpu]' on a CUDA machine)") from e
    return trt


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise ValueError("TensorRT engines need cuda-python (pip install '.[gpu]')") from e
    return cudart


def _check(result: tuple[Any, ...]) -> Any:
    """cuda-python calls return (error, *values)."""
    err, *values = result
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


def installed_tensorrt(device: int = 0) -> tuple[str, str]:
    """(TensorRT version, compute capability "major.minor" of GPU `device`) on this machine."""
    trt, cudart = import_tensorrt(), _cudart()
    major = _check(cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor, device))
    minor = _check(cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor, device))
    return str(trt.__version__), f"{major}.{minor}"


class TensorRTEngine(VersionEngine):
    """A deserialized TensorRT plan of `<repo>/<model>/<version>/` (or the named `graph` of a multi-graph
    version), one execution context, runs serialized by a lock (one CUDA stream)."""

    def __init__(self, version_dir: Path, *, verify: bool = True, graph: str | None = None) -> None:
        super().__init__(version_dir, ENGINE_TYPE, verify=verify, graph=graph)
        check_compatible(self._manifest, *installed_tensorrt(), where=self._dir)
        onnx_file = self._graph_file
        plan = self._manifest.extras["tensorrt"]["plans"].get(onnx_file)
        if plan is None or plan not in self._manifest.files:
            raise ValueError(f"{self._dir}: manifest lists no TensorRT plan for {onnx_file}")
        trt, self._cudart = import_tensorrt(), _cudart()
        self._trt = trt
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine((self._dir / plan).read_bytes())
        if self._engine is None:
            raise ValueError(f"{self._dir / plan}: TensorRT could not deserialize the plan")
        names = {self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)}
        want = {t.name for t in [*self._inputs, *self._outputs]}
        if names != want:
            raise ValueError(f"{self._dir / plan}: plan tensors {sorted(names)} do not match the manifest's "
                             f"{sorted(want)}")
        self._context = self._engine.create_execution_context()
        self._stream = _check(self._cudart.cudaStreamCreate())
        self._lock = threading.Lock()
        logger.info("loaded %s version %d%s (TensorRT plan %s)", self.name, self._version,
                    f" graph {graph}" if graph else "", plan)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_inputs(inputs)
        cudart, kind = self._cudart, self._cudart.cudaMemcpyKind
        with self._lock:
            buffers: list[int] = []
            try:
                for spec in self._inputs:
                    host = np.ascontiguousarray(inputs[spec.name], dtype=spec.dtype)
                    if not self._context.set_input_shape(spec.name, host.shape):
                        raise ValueError(f"{self.name}: input {spec.name!r} shape {host.shape} is outside the "
                                         "engine's optimization profile")
                    ptr = _check(cudart.cudaMalloc(max(1, host.nbytes)))
                    buffers.append(ptr)
                    _check(cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes,
                                                  kind.cudaMemcpyHostToDevice, self._stream))
                    self._context.set_tensor_address(spec.name, ptr)
                outputs: dict[str, np.ndarray] = {}
                for spec in self._outputs:
                    shape = tuple(self._context.get_tensor_shape(spec.name))
                    if any(d < 0 for d in shape):
                        raise ValueError(f"{self.name}: output {spec.name!r} has a data-dependent shape {shape}")
                    dtype = self._trt.nptype(self._engine.get_tensor_dtype(spec.name))
                    outputs[spec.name] = np.empty(shape, dtype=dtype)
                    ptr = _check(cudart.cudaMalloc(max(1, outputs[spec.name].nbytes)))
                    buffers.append(ptr)
                    self._context.set_tensor_address(spec.name, ptr)
                if not self._context.execute_async_v3(self._stream):
                    raise RuntimeError(f"{self.name}: TensorRT execution failed")
                for spec, ptr in zip(self._outputs, buffers[len(self._inputs):], strict=True):
                    out = outputs[spec.name]
                    _check(cudart.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes, kind.cudaMemcpyDeviceToHost,
                                                  self._stream))
                _check(cudart.cudaStreamSynchronize(self._stream))
            finally:
                for ptr in buffers:
                    cudart.cudaFree(ptr)
        return outputs

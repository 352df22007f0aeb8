"""TensorRT engines: an FP16 ONNX version -> serialized TensorRT plans with optimization profiles.

    nui export speech --checkpoint runs/speech_small --repo model_repository --precision fp16 --engine tensorrt

The FP16 graph (engines/fp16.py: FP16 everywhere except the FP32 islands, FP32 inputs/outputs) is parsed
into a *strongly typed* network: TensorRT keeps every tensor in the type the graph gives it, so the
islands stay FP32 and no builder precision flag is involved. TensorRT 10 takes
`NetworkDefinitionCreationFlag.STRONGLY_TYPED`; TensorRT 11 removed the FP16/INT8 builder flags and is
always strongly typed (the flag is deprecated and ignored), so it is passed only before 11.

One optimization profile per graph: each input's min/opt/max shape substitutes the manifest's named
dynamic axes ("batch", "samples") with `extras["shape_ranges"]` (axis -> [min, opt, max]), or the task
defaults below. A timing cache file is reused and updated across builds (same GPU + TensorRT only), and
`refit=True` builds refittable plans (new weights without a rebuild). The published manifest records
`engine: "tensorrt"`, the TensorRT version and the GPU's compute capability; engines/tensorrt_engine.py
refuses a plan built by another TensorRT or for another GPU at start-up.

Only the shape-profile logic runs without TensorRT; building needs `tensorrt` and a CUDA GPU.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from engines.engine import graph_specs
from engines.manifest import Manifest, TensorSpec, file_digests, read_manifest, staged_version, write_manifest
from engines.tensorrt_engine import ENGINE_TYPE, PLAN_SUFFIX, import_tensorrt, installed_tensorrt

logger = logging.getLogger(__name__)

# axis name -> (min, opt, max), per task; a manifest's extras["shape_ranges"] overrides them.
DEFAULT_SHAPE_RANGES: dict[str, dict[str, tuple[int, int, int]]] = {
    # 0.1 s .. 30 s of 16 kHz audio, tuned for ~5 s utterances in batches of 8 (the server's batcher).
    "speech_ctc": {"batch": (1, 8, 32), "samples": (1_600, 80_000, 480_000)},
    "diagnosis": {"batch": (1, 64, 512)},
    # the decoder step runs every live beam of every image in one batch: up to 32 images x 4 beams
    "captioner": {"batch": (1, 16, 128)},
}
DEFAULT_WORKSPACE_BYTES = 4 << 30


Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def shape_ranges(manifest: Manifest) -> dict[str, tuple[int, int, int]]:
    """Axis name -> (min, opt, max): the manifest's `extras["shape_ranges"]` over the task defaults."""
    ranges = dict(DEFAULT_SHAPE_RANGES.get(manifest.task, {}))
    for axis, value in manifest.extras.get("shape_ranges", {}).items():
        lo, opt, hi = (int(v) for v in value)
        ranges[axis] = (lo, opt, hi)
    for axis, (lo, opt, hi) in ranges.items():
        if not 1 <= lo <= opt <= hi:
            raise ValueError(f"{manifest.model}: shape range of axis {axis!r} must be 1 <= min <= opt <= max, "
                             f"got {(lo, opt, hi)}")
    return ranges


def input_profile(inputs: list[TensorSpec], ranges: Mapping[str, tuple[int, int, int]]) -> Profile:
    """Input name -> (min, opt, max) shapes: fixed axes as they are, named axes from `ranges`."""
    profile: Profile = {}
    for spec in inputs:
        shapes: list[list[int]] = [[], [], []]
        for axis in spec.shape:
            if isinstance(axis, int):
                for s in shapes:
                    s.append(axis)
            elif axis in ranges:
                for s, v in zip(shapes, ranges[axis], strict=True):
                    s.append(v)
            else:
                raise ValueError(f"input {spec.name!r} has dynamic axis {axis!r} with no min/opt/max; add it to "
                                 f"the manifest's extras['shape_ranges'] (known: {sorted(ranges)})")
        profile[spec.name] = (tuple(shapes[0]), tuple(shapes[1]), tuple(shapes[2]))
    return profile


def build_plan(onnx_path: Path, plan_path: Path, profile: Profile, *, timing_cache: Path | None = None,
               refit: bool = False, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> None:
    """Parse `onnx_path` into a strongly typed network, build it with one optimization profile, write the plan."""
    trt = import_tensorrt()  # ValueError when TensorRT is not installed
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    major = int(trt.__version__.split(".")[0])
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if major < 11 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if refit:
        config.set_flag(trt.BuilderFlag.REFIT)
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ValueError(f"{onnx_path}: TensorRT could not build an engine (see the TensorRT log above)")
    plan_path.write_bytes(bytes(serialized))
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))


def publish_tensorrt(src_dir: Path, repo: Path, model_name: str, version: int | None = None, *,
                     timing_cache: Path | None = None, refit: bool = False) -> tuple[Path, Manifest]:
    """Build a TensorRT plan for every ONNX graph of the FP16 version in `src_dir`; publish it with the
    other files (LM, tables, tokenizer) and a manifest naming TensorRT's version and the GPU."""
    src = read_manifest(src_dir)
    if src.precision != "fp16":
        raise ValueError(f"{src_dir}: TensorRT plans are built from an fp16 engine (nui export ... --precision "
                         f"fp16), this one is {src.precision!r}")
    trt_version, capability = installed_tensorrt()
    ranges = shape_ranges(src)
    graphs: list[str | None] = sorted(src.extras["graphs"]) if "graphs" in src.extras else [None]
    with staged_version(repo, model_name, version) as (tmp, final):
        plans: dict[str, str] = {}  # ONNX file -> plan file; the runtime maps graph files through it
        for graph in graphs:
            onnx_file, inputs, _ = graph_specs(src, graph)
            plan = Path(onnx_file).with_suffix(PLAN_SUFFIX).name
            build_plan(src_dir / onnx_file, tmp / plan, input_profile(inputs, ranges), timing_cache=timing_cache,
                       refit=refit)
            plans[onnx_file] = plan
        for name in src.files:
            if not name.endswith(".onnx"):
                shutil.copyfile(src_dir / name, tmp / name)
        extras: dict[str, Any] = {**src.extras, "shape_ranges": {k: list(v) for k, v in ranges.items()},
                                  "tensorrt": {"version": trt_version, "compute_capability": capability,
                                               "plans": plans, "refit": refit}}
        manifest = replace(src, model=model_name, engine=ENGINE_TYPE, files=file_digests(tmp), extras=extras)
        write_manifest(tmp, manifest)
    return final, manifest

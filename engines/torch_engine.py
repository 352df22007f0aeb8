"""CUDA PyTorch backend behind the `Engine` Protocol: FP16 by autocast, CUDA graphs for fixed-shape graphs.

    nui export captioner --checkpoint runs/captioner_small --repo repo --engine torch --precision fp16
    nui serve --repo repo --provider cuda         # manifest engine "torch" -> this class, on the GPU
    engine = TorchEngine(Path("repo/captioner/1"), graph="decoder_step", device="cuda")

A version published with engine "torch" (engines/torch_build.py) holds the model's state dict
(`model.safetensors`, never pickle) and the config; this backend rebuilds the very modules the ONNX
graphs were traced from (the export wrappers in engines/export_*.py), so inputs, outputs and manifest
are the ONNX engine's and the server cannot tell the backends apart.

Precision "fp16" runs under `torch.autocast(float16)`: matmuls, convolutions and GRUs in FP16 while
autocast keeps softmax / log-softmax, normalisation and reductions in FP32 (the FP32 islands), weights
stay FP32 masters, inputs and outputs FP32. On a CPU device the same version runs in FP32 (CPU FP16
kernels are slow or missing); that is how the backend is tested where no GPU exists.

CUDA graphs: a graph whose inputs are all fixed-shape except the batch axis (the captioner's decoder
step, run once per generated token) is captured once per batch bucket (powers of two up to
`MAX_GRAPH_BATCH`) and replayed, removing the per-kernel launch cost that dominates small steps; a batch
is padded up to its bucket (rows are independent) and the outputs cut back. Graphs with a dynamic
time axis (speech) run eagerly. Needs torch (the `train` extra), so the serving install without torch
cannot load these versions and says so.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from engines.engine import VersionEngine
from engines.manifest import Manifest, TensorSpec

logger = logging.getLogger(__name__)

ENGINE_TYPE = "torch"
WEIGHTS_FILE = "model.safetensors"
MAX_GRAPH_BATCH = 128  # largest captured batch bucket; bigger batches run eagerly
_DTYPES = {"float32": torch.float32, "int64": torch.int64, "int32": torch.int32, "float16": torch.float16}


Modules = tuple[nn.Module, dict[str | None, nn.Module]]
EXTRA_PREFIX = "extra."  # saved tensors that are not the model's state dict (e.g. the captioner's domain check)


def _speech(config: dict[str, Any], extra: dict[str, torch.Tensor], extras: dict[str, Any]) -> Modules:
    from models.speech_ctc import SpeechCTC, SpeechCTCConfig

    model = SpeechCTC(SpeechCTCConfig.from_dict(config))
    return model, {None: model}


def _diagnosis(config: dict[str, Any], extra: dict[str, torch.Tensor], extras: dict[str, Any]) -> Modules:
    from engines.export_diagnosis import WithSoftmax
    from models.diagnosis import DiagnosisConfig, DiagnosisModel

    model = DiagnosisModel(DiagnosisConfig.from_dict(config))
    return model, {None: WithSoftmax(model)}


def _captioner(config: dict[str, Any], extra: dict[str, torch.Tensor], extras: dict[str, Any]) -> Modules:
    from engines.export_captioner import _DecoderStep as DecoderStep
    from engines.export_captioner import _Encoder as EncoderGraph
    from models.captioner import Captioner, CaptionerConfig

    model = Captioner(CaptionerConfig.from_dict(config))
    encoder = EncoderGraph(model, domain_from_tensors(extra, extras))
    return model, {"encoder": encoder, "decoder_step": DecoderStep(model)}


def domain_tensors(domain: Any) -> dict[str, torch.Tensor]:
    """A captioner's out-of-domain check (engines.export_captioner.DomainHead) as named tensors, stored in a
    torch version next to the weights so the encoder graph is rebuilt with it."""
    st = domain.stats
    out = {"domain.mean": torch.from_numpy(st.mean), "domain.components": torch.from_numpy(st.components),
           "domain.variances": torch.from_numpy(st.variances),
           "domain.residual_variance": torch.tensor(st.residual_variance, dtype=torch.float64),
           "domain.l2_normalize": torch.tensor(st.l2_normalize)}
    if domain.classifier is not None:
        out["domain.classifier_weight"], out["domain.classifier_bias"] = domain.classifier
    return out


def domain_from_tensors(extra: dict[str, torch.Tensor], extras: dict[str, Any]) -> Any:
    """The DomainHead `domain_tensors` stored (None when the version has no domain check)."""
    if "domain.mean" not in extra:
        return None
    from engines.export_captioner import DomainHead
    from models.caption_domain import DomainPolicy, DomainStats

    stats = DomainStats(extra["domain.mean"].numpy(), extra["domain.components"].numpy(),
                        extra["domain.variances"].numpy(), float(extra["domain.residual_variance"]),
                        bool(extra["domain.l2_normalize"]) if "domain.l2_normalize" in extra else False)
    classifier = ((extra["domain.classifier_weight"], extra["domain.classifier_bias"])
                  if "domain.classifier_weight" in extra else None)
    return DomainHead(stats, DomainPolicy.from_dict(extras["domain"]), classifier, extras["domain"].get("fit", {}))


# task -> (config, extra tensors, manifest extras) -> (the model whose state dict is saved,
# {graph: the module that graph was traced from})
BUILDERS: dict[str, Callable[[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]], Modules]] = {
    "speech_ctc": _speech,
    "diagnosis": _diagnosis,
    "captioner": _captioner,
}


def build_modules(manifest: Manifest, tensors: dict[str, torch.Tensor]) -> Modules:
    """The model (weights loaded from `tensors`) and its per-graph modules for a manifest (ValueError for
    tasks this backend does not serve, or weights that do not fit the config)."""
    if manifest.task not in BUILDERS:
        raise ValueError(f"the torch engine serves tasks {sorted(BUILDERS)}, not {manifest.task!r}")
    extra = {k[len(EXTRA_PREFIX):]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    model, graphs = BUILDERS[manifest.task](manifest.config, extra, manifest.extras)
    weights = {k: v.float() for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:  # missing/unexpected keys or wrong shapes: another model's weights
        raise ValueError(f"the weights do not fit the manifest's config: {e}") from e
    return model, graphs


def resolve_device(device: str) -> torch.device:
    """'cuda' / 'cuda:N' / 'cpu' -> a torch device; ValueError when CUDA is asked for and absent."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"the torch engine was asked for device {device!r}, but this torch "
                         f"({torch.__version__}) sees no CUDA GPU")
    if dev.type not in ("cuda", "cpu"):
        raise ValueError(f"the torch engine runs on 'cuda' or 'cpu', not {device!r}")
    return dev


def fixed_but_batch(specs: list[TensorSpec]) -> bool:
    """True when every axis but the leading batch axis is a fixed size: the graph can be captured."""
    return all(s.shape[:1] == ["batch"] and all(isinstance(a, int) for a in s.shape[1:]) for s in specs)


def batch_bucket(n: int) -> int:
    """The captured batch size a batch of n rows runs in: the next power of two."""
    return 1 << max(0, (n - 1).bit_length())


class _CapturedGraphs:
    """CUDA graphs of one module, one per batch bucket, captured on first use and replayed after."""

    def __init__(self, forward: Callable[..., tuple[torch.Tensor, ...]], inputs: list[TensorSpec],
                 device: torch.device) -> None:
        self._forward, self._inputs, self._device = forward, inputs, device
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], tuple[torch.Tensor, ...]]] = {}
        self._pool: Any = None  # one memory pool shared by every bucket's graph

    def run(self, args: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        n = args[0].shape[0]
        bucket = batch_bucket(n)
        if bucket not in self._graphs:
            self._graphs[bucket] = self._capture(bucket)
        graph, static_in, static_out = self._graphs[bucket]
        for buf, arg in zip(static_in, args, strict=True):
            buf[:n].copy_(arg)
            if n < bucket:  # pad rows repeat row 0 so no NaN/inf from garbage memory reaches the kernels
                buf[n:].copy_(arg[:1].expand_as(buf[n:]))
        graph.replay()
        return tuple(o[:n].clone() for o in static_out)

    def _capture(self, bucket: int) -> tuple[torch.cuda.CUDAGraph, list[torch.Tensor], tuple[torch.Tensor, ...]]:
        static_in = [torch.zeros((bucket, *(int(a) for a in s.shape[1:])), dtype=_DTYPES[s.dtype],
                                 device=self._device) for s in self._inputs]
        side = torch.cuda.Stream(self._device)
        side.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(side):  # warm-up runs outside the capture (cuDNN/cuBLAS workspace allocation)
            for _ in range(2):
                self._forward(*static_in)
        torch.cuda.current_stream(self._device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = self._forward(*static_in)
        self._pool = graph.pool()
        logger.info("captured a CUDA graph for batch %d", bucket)
        return graph, static_in, static_out


class TorchEngine(VersionEngine):
    """One graph of a `torch` version on a torch device (CUDA, or CPU for tests and CPU-only machines)."""

    def __init__(self, version_dir: Path, *, graph: str | None = None, verify: bool = True, device: str = "cuda",
                 cuda_graphs: bool = True, staged: bool = False, precision: str | None = None) -> None:
        """staged: `version_dir` is an export's staging folder (not yet named by its version): version 0.
        precision: "fp32" or "fp16" in place of the manifest's (to compare the two on one GPU)."""
        super().__init__(version_dir, ENGINE_TYPE, verify=verify, graph=graph, staged=staged)
        if WEIGHTS_FILE not in self._manifest.files:
            raise ValueError(f"{self._dir}: manifest does not list {WEIGHTS_FILE}")
        self._device = resolve_device(device)
        try:
            _, graphs = build_modules(self._manifest, load_file(str(self._dir / WEIGHTS_FILE)))
        except ValueError as e:
            raise ValueError(f"{self._dir / WEIGHTS_FILE}: {e}") from e
        if graph not in graphs:
            raise ValueError(f"{self._dir}: task {self._manifest.task!r} has graphs {sorted(map(str, graphs))}, "
                             f"not {graph!r}")
        self._module = graphs[graph].eval().to(self._device)
        if precision not in (None, "fp32", "fp16"):
            raise ValueError(f"precision must be fp32 or fp16, not {precision!r}")
        wanted = precision or self._manifest.precision
        self._fp16 = wanted == "fp16" and self._device.type == "cuda"
        if wanted == "fp16" and not self._fp16:
            logger.info("%s v%d: fp16 version on %s runs in FP32", self.name, self._version, self._device)
        self._graphs = (_CapturedGraphs(self._forward, self._inputs, self._device)
                        if cuda_graphs and self._device.type == "cuda" and fixed_but_batch(self._inputs) else None)
        self._lock = threading.Lock()  # one run at a time: captured graphs share static buffers
        logger.info("loaded %s version %d%s on %s (torch, %s%s)", self.name, self._version,
                    f" graph {graph}" if graph else "", self._device, "fp16 autocast" if self._fp16 else "fp32",
                    ", CUDA graphs" if self._graphs else "")

    @property
    def captures_graphs(self) -> bool:
        return self._graphs is not None

    def _forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.autocast(self._device.type, dtype=torch.float16, enabled=self._fp16):
            out = self._module(*args)
        outs = out if isinstance(out, tuple) else (out,)
        # FP32 outputs, as the manifest (and the ONNX engines) give them; integer outputs keep their type
        return tuple(o.float() if o.is_floating_point() else o for o in outs)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_inputs(inputs)
        args = [torch.as_tensor(np.ascontiguousarray(inputs[t.name]), dtype=_DTYPES[t.dtype]).to(self._device)
                for t in self._inputs]
        with self._lock, torch.inference_mode():
            batch = args[0].shape[0] if args[0].dim() else 0
            if self._graphs is not None and 0 < batch <= MAX_GRAPH_BATCH:
                outs = self._graphs.run(args)
            else:
                outs = self._forward(*args)
            result = [o.cpu().numpy() for o in outs]
        if len(result) != len(self._outputs):
            raise ValueError(f"{self.name} v{self.version}: module returned {len(result)} outputs, the manifest "
                             f"lists {len(self._outputs)}")
        return {spec.name: arr.astype(spec.dtype, copy=False) for spec, arr in zip(self._outputs, result, strict=True)}

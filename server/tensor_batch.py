"""Raw-tensor requests (tensors in, tensors out: KServe v2 `ModelInfer`) on a task model's own batcher.

A model's batcher runs the task's `run_batch` (e.g. `SpeechCTCModel.run_batch`: waveforms -> one engine
run -> decoding). `TensorRequest` items join the same batches: `tensor_batching(model)` puts a
`SharedRunEngine` in front of the model's engine and returns a batch function for a batcher of mixed
items. When a batch holds both kinds, the tensor requests ride along the task's engine call (their rows
are padded and concatenated to the task's rows, one engine run, outputs split back); a batch of tensor
requests only runs the engine directly. So Triton clients and nui clients share engine runs.

Merging pads every non-batch axis to the longest with zeros. That is exact for the models served here:
they mask padding (speech: `audio_lengths`; diagnosis: fixed shapes). An output axis that depends on a
padded input axis is cut back to what the request alone would get (`SOLO_AXES`, e.g. speech frames from
samples); for a task without such a rule, tensor requests only share runs with equal-shaped rows.

    batch_fn = tensor_batching(model)             # SpeechCTCModel, DiagnosisServingModel, StreamingModel
    batcher = DynamicBatcher(batch_fn, 16, 5.0, 256)
    outputs = await batcher.submit(check_request(model.engine.manifest, inputs, "id-1", max_rows=16))
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from engines.engine import Engine
from engines.manifest import Manifest
from server.errors import invalid_argument

BATCH_AXIS = "batch"
TensorOutputs = dict[str, np.ndarray]


@dataclass(frozen=True, eq=False)
class TensorRequest:
    """One validated raw-tensor request: every manifest input, `rows` along the batch axis."""

    inputs: dict[str, np.ndarray]
    rows: int
    request_id: str


def _speech_frames(manifest: Manifest, inputs: dict[str, np.ndarray]) -> dict[str, int]:
    """Output frames the speech model gives for the request's padded width (models/speech_ctc.output_lengths)."""
    cfg = manifest.config
    frames = max(0, (inputs["audio"].shape[1] - int(cfg["n_fft"])) // int(cfg["hop_length"]) + 1)
    for stride in cfg["conv_time_strides"]:
        frames = (frames - 1) // int(stride) + 1
    return {"frames": frames}


# task -> sizes of output axes that derive from padded input axes, for one request alone.
SOLO_AXES: dict[str, Callable[[Manifest, dict[str, np.ndarray]], dict[str, int]]] = {
    "speech_ctc": _speech_frames,
}


def _speech_values(manifest: Manifest, inputs: dict[str, np.ndarray]) -> None:
    lengths, width = inputs["audio_lengths"], inputs["audio"].shape[1]
    if lengths.size and (int(lengths.min()) < 1 or int(lengths.max()) > width):
        raise invalid_argument(f"input 'audio_lengths' holds {int(lengths.min())}..{int(lengths.max())}; "
                               f"allowed: 1..{width} (the samples axis of 'audio')")
    if not np.isfinite(inputs["audio"]).all():
        raise invalid_argument("input 'audio' holds NaN or infinite samples")


# task -> checks of input values that shapes cannot express (INVALID_ARGUMENT naming the input).
VALUE_CHECKS: dict[str, Callable[[Manifest, dict[str, np.ndarray]], None]] = {
    "speech_ctc": _speech_values,
}


def check_request(manifest: Manifest, inputs: dict[str, np.ndarray], request_id: str, *, max_rows: int,
                  max_elements: int) -> TensorRequest:
    """Check names, dtypes, ranks, fixed sizes and shared axis sizes against the manifest; RequestError
    INVALID_ARGUMENT naming the input otherwise."""
    specs = {t.name: t for t in manifest.inputs}
    missing = sorted(set(specs) - set(inputs))
    unknown = sorted(set(inputs) - set(specs))
    if unknown:
        raise invalid_argument(f"input {unknown[0]!r} is not an input of {manifest.model}; inputs: {sorted(specs)}")
    if missing:
        raise invalid_argument(f"input {missing[0]!r} is missing; {manifest.model} takes {sorted(specs)}")
    axes: dict[str, tuple[int, str]] = {}  # named axis -> (size, the input that set it)
    total = 0
    for name, spec in specs.items():
        x = inputs[name]
        if x.dtype != np.dtype(spec.dtype):
            raise invalid_argument(f"input {name!r} has datatype {x.dtype.name}; {manifest.model} takes "
                                   f"{spec.dtype}")
        if x.ndim != len(spec.shape):
            raise invalid_argument(f"input {name!r} has shape {list(x.shape)}; expected {len(spec.shape)} "
                                   f"axes {spec.shape}")
        for axis, (size, want) in enumerate(zip(x.shape, spec.shape, strict=True)):
            if isinstance(want, int) and size != want:
                raise invalid_argument(f"input {name!r} axis {axis} has size {size}; expected {want} "
                                       f"(shape {spec.shape})")
            if isinstance(want, str):
                seen = axes.setdefault(want, (size, name))
                if seen[0] != size:
                    raise invalid_argument(f"input {name!r} axis {axis} ({want}) has size {size}, but input "
                                           f"{seen[1]!r} gives {want} size {seen[0]}")
        total += x.size
    rows = axes.get(BATCH_AXIS, (1, ""))[0]
    if not 1 <= rows <= max_rows:
        raise invalid_argument(f"the batch axis has size {rows}; allowed: 1..{max_rows}")
    if total > max_elements:
        raise invalid_argument(f"the inputs hold {total} elements; at most {max_elements} are allowed")
    check_values = VALUE_CHECKS.get(manifest.task)
    if check_values is not None:
        check_values(manifest, inputs)
    return TensorRequest(inputs=inputs, rows=rows, request_id=request_id)


def _merge(parts: Sequence[dict[str, np.ndarray]], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Concatenate along the batch axis, zero-padding every other axis to the longest."""
    merged = {}
    for name in names:
        arrays = [p[name] for p in parts]
        shape = tuple(max(a.shape[i] for a in arrays) for i in range(1, arrays[0].ndim))
        rows = sum(a.shape[0] for a in arrays)
        out = np.zeros((rows, *shape), dtype=arrays[0].dtype)
        start = 0
        for a in arrays:
            out[(slice(start, start + a.shape[0]), *(slice(0, n) for n in a.shape[1:]))] = a
            start += a.shape[0]
        merged[name] = out
    return merged


class SharedRunEngine:
    """An Engine whose `run` also carries the tensor requests handed to `ride_along` (same thread)."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self._local = threading.local()
        self._solo_axes = SOLO_AXES.get(inner.manifest.task)
        self.shared_runs = 0  # engine runs that carried task rows and tensor requests together

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def version(self) -> int:
        return self.inner.version

    @property
    def manifest(self) -> Manifest:
        return self.inner.manifest

    def ride_along(self, requests: list[TensorRequest]) -> None:
        """The next `run` on this thread also runs `requests`; fetch their outputs with `take_results`."""
        self._local.pending = requests
        self._local.results = None

    def take_results(self) -> list[TensorOutputs] | None:
        """Outputs of the requests that rode along, or None when no run took them."""
        results = getattr(self._local, "results", None)
        self._local.pending = self._local.results = None
        return results

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pending: list[TensorRequest] | None = getattr(self._local, "pending", None)
        if not pending:
            return self.inner.run(inputs)
        self._local.pending = None
        riders = [r for r in pending if self._can_merge(r.inputs, inputs)]
        task_rows = len(next(iter(inputs.values())))
        self.shared_runs += bool(riders)
        outputs = self._run_merged([inputs, *(r.inputs for r in riders)], [task_rows, *(r.rows for r in riders)])
        by_request = dict(zip((id(r) for r in riders), outputs[1:], strict=True))
        alone = [r for r in pending if id(r) not in by_request]
        by_request.update(zip((id(r) for r in alone), self.run_requests(alone), strict=True))
        self._local.results = [by_request[id(r)] for r in pending]
        return outputs[0]  # the task's rows, at the merged width: the task cuts by its own lengths

    def run_requests(self, requests: list[TensorRequest]) -> list[TensorOutputs]:
        """Run tensor requests without a task batch: one engine run per group of mergeable requests."""
        results: dict[int, TensorOutputs] = {}
        todo = list(requests)
        while todo:
            group = [r for r in todo if self._can_merge(r.inputs, todo[0].inputs)]
            outs = self._run_merged([r.inputs for r in group], [r.rows for r in group])
            results.update(zip((id(r) for r in group), outs, strict=True))
            todo = [r for r in todo if id(r) not in results]
        return [results[id(r)] for r in requests]

    def _can_merge(self, a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
        same_shapes = all(a[n].shape[1:] == b[n].shape[1:] for n in a)
        return same_shapes or self._solo_axes is not None

    def _run_merged(self, parts: list[dict[str, np.ndarray]], rows: list[int]) -> list[TensorOutputs]:
        names = [t.name for t in self.manifest.inputs]
        out = self.inner.run(_merge(parts, names) if len(parts) > 1 else parts[0])
        results: list[TensorOutputs] = []
        start = 0
        for part, n in zip(parts, rows, strict=True):
            results.append(self._cut(out, part, start, n))
            start += n
        return results

    def _cut(self, out: dict[str, np.ndarray], part: dict[str, np.ndarray], start: int, n: int) -> TensorOutputs:
        """This part's rows, each dynamic axis cut to what the part alone would give."""
        sizes = {axis: size for t in self.manifest.inputs
                 for axis, size in zip(t.shape, part[t.name].shape, strict=True) if isinstance(axis, str)}
        if self._solo_axes is not None:
            sizes.update(self._solo_axes(self.manifest, part))
        cut = {}
        for spec in self.manifest.outputs:
            index: list[slice] = [slice(start, start + n)]
            for axis in spec.shape[1:]:
                index.append(slice(0, sizes[axis]) if isinstance(axis, str) and axis in sizes else slice(None))
            cut[spec.name] = np.ascontiguousarray(out[spec.name][tuple(index)])
        return cut


class TaskModel(Protocol):
    """What `tensor_batching` needs of a task model (SpeechCTCModel, DiagnosisServingModel, StreamingModel)."""

    engine: Any

    def run_batch(self, items: list[Any]) -> Sequence[Any]: ...


def tensor_batching(model: TaskModel) -> Callable[[list[Any]], Sequence[Any]]:
    """Put a SharedRunEngine in front of `model.engine` and return a batch function for items that are
    the model's own (its `run_batch` items) or TensorRequests."""
    if not isinstance(model.engine, SharedRunEngine):
        model.engine = SharedRunEngine(model.engine)
    engine: SharedRunEngine = model.engine

    def run_batch(items: list[Any]) -> Sequence[Any]:
        tensors = [x for x in items if isinstance(x, TensorRequest)]
        if not tensors:
            return model.run_batch(items)
        own = [x for x in items if not isinstance(x, TensorRequest)]
        own_results: Sequence[Any] = []
        tensor_results: list[TensorOutputs] | None = None
        if own:
            engine.ride_along(tensors)
            try:
                own_results = model.run_batch(own)
            finally:
                tensor_results = engine.take_results()
        if tensor_results is None:  # no task rows, or the task never reached its engine run
            tensor_results = engine.run_requests(tensors)
        own_iter, tensor_iter = iter(own_results), iter(tensor_results)
        return [next(tensor_iter) if isinstance(x, TensorRequest) else next(own_iter) for x in items]

    return run_batch


def elements_limit(max_message_bytes: int) -> int:
    """Most tensor elements one request may hold: a message's worth of 4-byte values."""
    return max(1, math.ceil(max_message_bytes / 4))


def _speech_warmup(manifest: Manifest) -> dict[str, np.ndarray]:
    samples = int(manifest.config["sample_rate_hz"])  # one second of silence
    return {"audio": np.zeros((1, samples), np.float32), "audio_lengths": np.array([samples], np.int64)}


# task -> inputs for the one warm-up run a model version gets before it is served.
WARMUP_INPUTS: dict[str, Callable[[Manifest], dict[str, np.ndarray]]] = {
    "speech_ctc": _speech_warmup,
}


def warmup_request(manifest: Manifest) -> TensorRequest:
    """A one-row request of zeros (every named axis of size 1 unless the task says otherwise)."""
    make = WARMUP_INPUTS.get(manifest.task)
    if make is not None:
        inputs = make(manifest)
    else:
        inputs = {t.name: np.zeros([d if isinstance(d, int) else 1 for d in t.shape], np.dtype(t.dtype))
                  for t in manifest.inputs}
    return TensorRequest(inputs=inputs, rows=1, request_id="warmup")

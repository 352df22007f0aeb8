"""The KServe v2 / Triton gRPC protocol (`inference.GRPCInferenceService`) over the served models, so
unmodified `tritonclient.grpc` clients work against nui:

    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient("127.0.0.1:50051")
    audio = grpcclient.InferInput("audio", [1, 16000], "FP32"); audio.set_data_from_numpy(x)
    lengths = grpcclient.InferInput("audio_lengths", [1], "INT64"); lengths.set_data_from_numpy(n)
    result = client.infer("speech_ctc", [audio, lengths]); result.as_numpy("log_probs")

ModelInfer takes the engine's own tensors (names, dtypes and shapes of the model's manifest) and returns
its outputs: no audio decoding, no text decoding. Every served model is listed (ModelReady, ModelMetadata,
ModelConfig, ModelStatistics, RepositoryIndex), but ModelInfer runs only the single-graph ones
(`tensor_models`: speech_ctc, diagnosis, and one chunk of a streaming speech model, whose state the
client passes in and gets back); a captioner (two graphs and a beam search between) answers
UNIMPLEMENTED naming the model. Requests go through the model's dynamic batcher (the
one `nui.v1.Speech` / `nui.v1.Diagnosis` use, see server/tensor_batch.py), so Triton and nui clients share
engine runs. Inputs come as `raw_input_contents` or typed `contents`; outputs always as
`raw_output_contents`. Wrong names, dtypes, shapes or sizes: INVALID_ARGUMENT naming the input.
Unknown model or version: NOT_FOUND. Queue full, deadline, shutdown: as everywhere (server/errors.py).

The messages and the service are proto/kserve.proto (package nui.kserve, wire-identical to Triton's), served
under the protocol's service name (server/wire.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import numpy as np

from engines.manifest import Manifest, TensorSpec
from proto import kserve_pb2 as pb
from server.batcher import DynamicBatcher
from server.errors import RequestError, checked_request_id, invalid_argument, not_found, status_of
from server.tensor_batch import TensorOutputs, check_request
from server.wire import add_servicer, wire_name

logger = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE_NAME = wire_name(SERVICE)  # "inference.GRPCInferenceService"
SERVER_NAME = "nui"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["model_configuration", "statistics", "model_repository", "model_repository(unload_dependents)"]

# KServe datatype -> (numpy dtype, InferTensorContents field or None: raw only, config DataType)
DATATYPES: dict[str, tuple[np.dtype, str | None, Any]] = {
    "BOOL": (np.dtype(np.bool_), "bool_contents", pb.TYPE_BOOL),
    "UINT8": (np.dtype(np.uint8), "uint_contents", pb.TYPE_UINT8),
    "UINT16": (np.dtype(np.uint16), "uint_contents", pb.TYPE_UINT16),
    "UINT32": (np.dtype(np.uint32), "uint_contents", pb.TYPE_UINT32),
    "UINT64": (np.dtype(np.uint64), "uint64_contents", pb.TYPE_UINT64),
    "INT8": (np.dtype(np.int8), "int_contents", pb.TYPE_INT8),
    "INT16": (np.dtype(np.int16), "int_contents", pb.TYPE_INT16),
    "INT32": (np.dtype(np.int32), "int_contents", pb.TYPE_INT32),
    "INT64": (np.dtype(np.int64), "int64_contents", pb.TYPE_INT64),
    "FP16": (np.dtype(np.float16), None, pb.TYPE_FP16),
    "FP32": (np.dtype(np.float32), "fp32_contents", pb.TYPE_FP32),
    "FP64": (np.dtype(np.float64), "fp64_contents", pb.TYPE_FP64),
}
_KSERVE_NAME = {dtype.name: name for name, (dtype, _, _) in DATATYPES.items()}


class ServedTensorModel(Protocol):
    """What the servicer needs of a served model version (ServedModel, ServedDiagnosisModel)."""

    @property
    def model(self) -> Any: ...  # has .engine.manifest, .name, .version

    @property
    def batcher(self) -> DynamicBatcher[Any, Any]: ...


Catalog = Callable[[], Mapping[str, Mapping[int, ServedTensorModel]]]


@dataclass(frozen=True)
class KServeLimits:
    max_batch_size: int  # also the most rows one ModelInfer may carry
    max_queue_delay_ms: float
    max_elements: int  # per request, over all inputs


class RepositoryControl(Protocol):
    """Model repository operations (server/model_store.py)."""

    def index(self) -> list[tuple[str, str, str, str]]: ...  # (name, version, state, reason)

    async def load(self, name: str) -> None: ...

    async def unload(self, name: str) -> None: ...


def kserve_datatype(dtype: str) -> str:
    return _KSERVE_NAME[np.dtype(dtype).name]


def tensor_shape(spec: TensorSpec) -> list[int]:
    """Named (dynamic) axes become -1."""
    return [d if isinstance(d, int) else -1 for d in spec.shape]


def parse_version(version: str, field: str = "version") -> int:
    """"" or "0": the highest loaded version."""
    if not version:
        return 0
    if not version.isdigit():
        raise invalid_argument(f"{field} {version[:20]!r} is not a version number")
    return int(version)


def lookup(models: Mapping[str, Mapping[int, ServedTensorModel]], name: str, version: str,
           field: str = "model") -> ServedTensorModel:
    versions = models.get(name)
    if not versions:
        raise not_found(f"{field} {name[:100]!r} is not loaded; loaded models: {sorted(models)}")
    v = parse_version(version)
    if v == 0:
        return versions[max(versions)]
    if v not in versions:
        raise not_found(f"version {v} of {name!r} is not loaded; loaded versions: {sorted(versions)}")
    return versions[v]


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """The request's tensors as numpy arrays; RequestError naming the input when they are malformed."""
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise invalid_argument(f"raw_input_contents holds {len(request.raw_input_contents)} entries for "
                               f"{len(request.inputs)} inputs; send one per input or none")
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in arrays:
            raise invalid_argument(f"input {name!r} is given twice")
        if tensor.datatype not in DATATYPES:
            raise invalid_argument(f"input {name!r} has datatype {tensor.datatype[:20]!r}; supported: "
                                   f"{sorted(DATATYPES)}")
        dtype, field, _ = DATATYPES[tensor.datatype]
        shape = list(tensor.shape)
        if any(d < 0 for d in shape):
            raise invalid_argument(f"input {name!r} has shape {shape}; sizes must be >= 0")
        count = math.prod(shape)  # exact: np.prod in int64 wraps (2**32 x 2**32 -> 0) and 0 bytes would "fit"
        if request.raw_input_contents:
            raw = request.raw_input_contents[i]
            if len(raw) != count * dtype.itemsize:
                raise invalid_argument(f"input {name!r}: raw_input_contents[{i}] holds {len(raw)} bytes; shape "
                                       f"{shape} of {tensor.datatype} needs {count * dtype.itemsize}")
            array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)
        else:
            values = getattr(tensor.contents, field) if field is not None else None
            if values is None:
                raise invalid_argument(f"input {name!r}: {tensor.datatype} data must come in raw_input_contents")
            if len(values) != count:
                raise invalid_argument(f"input {name!r}: contents.{field} holds {len(values)} values; shape "
                                       f"{shape} needs {count}")
            array = np.asarray(values, dtype=dtype)
        try:
            arrays[name] = array.reshape(shape)
        except ValueError as e:  # a zero-size shape with an axis too large for numpy ([0, 2**62])
            raise invalid_argument(f"input {name!r} has shape {shape[:8]}, which is too large: {e}") from None
    return arrays


def encode_outputs(response: pb.ModelInferResponse, outputs: TensorOutputs, wanted: list[str]) -> None:
    for name in wanted:
        array = outputs[name]
        response.outputs.add(name=name, datatype=kserve_datatype(array.dtype.name), shape=list(array.shape))
        response.raw_output_contents.append(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())


def model_metadata(name: str, versions: list[int], manifest: Manifest) -> pb.ModelMetadataResponse:
    Meta = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=name, versions=[str(v) for v in versions], platform=PLATFORM,
        inputs=[Meta(name=t.name, datatype=kserve_datatype(t.dtype), shape=tensor_shape(t)) for t in manifest.inputs],
        outputs=[Meta(name=t.name, datatype=kserve_datatype(t.dtype), shape=tensor_shape(t))
                 for t in manifest.outputs])


def model_config(manifest: Manifest, limits: KServeLimits) -> pb.ModelConfig:
    """Triton's view: the batch axis is implicit (max_batch_size > 0), dims are the other axes."""
    def dims(t: TensorSpec) -> list[int]:
        return tensor_shape(t)[1:]

    return pb.ModelConfig(
        name=manifest.model, platform=PLATFORM, backend="onnxruntime", max_batch_size=limits.max_batch_size,
        input=[pb.ModelInput(name=t.name, data_type=DATATYPES[kserve_datatype(t.dtype)][2], dims=dims(t))
               for t in manifest.inputs],
        output=[pb.ModelOutput(name=t.name, data_type=DATATYPES[kserve_datatype(t.dtype)][2], dims=dims(t))
                for t in manifest.outputs],
        dynamic_batching=pb.ModelDynamicBatching(
            max_queue_delay_microseconds=int(limits.max_queue_delay_ms * 1000)))


def model_statistics(name: str, version: int, served: ServedTensorModel) -> pb.ModelStatistics:
    stats = served.batcher.stats
    ns = 1_000_000_000
    return pb.ModelStatistics(
        name=name, version=str(version), inference_count=stats.items_done, execution_count=stats.runs,
        inference_stats=pb.InferStatistics(
            success=pb.StatisticDuration(count=stats.items_done),
            queue=pb.StatisticDuration(count=stats.items_done, ns=int(stats.queue_s_total * ns)),
            compute_infer=pb.StatisticDuration(count=stats.runs, ns=int(stats.compute_s_total * ns))),
        batch_stats=[pb.InferBatchStatistics(batch_size=size, compute_infer=pb.StatisticDuration(count=count))
                     for size, count in sorted(stats.batch_sizes.items())])


class KServeServicer:
    """The protocol's methods; `models()` is read per call, so loads and unloads show at once."""

    def __init__(self, models: Catalog, limits: KServeLimits, is_ready: Callable[[], bool],
                 repository: RepositoryControl | None = None, server_version: str = "",
                 tensor_models: Catalog | None = None) -> None:
        self._models = models
        self._tensor_models = tensor_models or models  # those ModelInfer runs; the others are listed only
        self._limits = limits
        self._is_ready = is_ready
        self._repository = repository
        self._server_version = server_version

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
                          ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._is_ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ModelReadyResponse:
        try:
            lookup(self._models(), request.name, request.version)
        except RequestError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self._is_ready())

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
                             ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._server_version, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
                            ) -> pb.ModelMetadataResponse:
        async def answer() -> pb.ModelMetadataResponse:
            models = self._models()
            served = lookup(models, request.name, request.version)
            return model_metadata(request.name, sorted(models[request.name]), served.model.engine.manifest)
        return await _answer(answer, context)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
                          ) -> pb.ModelConfigResponse:
        async def answer() -> pb.ModelConfigResponse:
            served = lookup(self._models(), request.name, request.version)
            return pb.ModelConfigResponse(config=model_config(served.model.engine.manifest, self._limits))
        return await _answer(answer, context)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
                              ) -> pb.ModelStatisticsResponse:
        async def answer() -> pb.ModelStatisticsResponse:
            models = self._models()
            if request.name:
                wanted = parse_version(request.version)
                lookup(models, request.name, request.version)  # NOT_FOUND when absent
                chosen = {request.name: {v: s for v, s in models[request.name].items() if wanted in (0, v)}}
            else:
                chosen = {n: dict(vs) for n, vs in models.items()}
            return pb.ModelStatisticsResponse(model_stats=[
                model_statistics(n, v, s) for n, vs in sorted(chosen.items()) for v, s in sorted(vs.items())])
        return await _answer(answer, context)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ModelInferResponse:
        started = time.monotonic()
        request_id = "-"
        try:
            request_id = checked_request_id(request.id)
            response = await self._infer(request, request_id, context.time_remaining())
        except Exception as e:  # every failure becomes a status below; abort() must run outside this block
            code, message = status_of(e, request_id)
        else:
            logger.debug("infer %s: OK, %s, %d input bytes, %.1f ms", request_id, request.model_name,
                         request.ByteSize(), 1e3 * (time.monotonic() - started))
            return response
        logger.info("infer %s: %s, %d input bytes, %.1f ms", request_id, code.name, request.ByteSize(),
                    1e3 * (time.monotonic() - started))
        await context.abort(code, message)
        raise AssertionError("context.abort returned")

    async def ModelStreamInfer(self, requests: AsyncIterator[pb.ModelInferRequest],
                               context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Every request of the stream runs concurrently (so they can share batches); answers come in
        completion order, an error as `error_message` with the status name, the stream going on."""
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def one(request: pb.ModelInferRequest) -> None:
            request_id = "-"
            try:
                request_id = checked_request_id(request.id)
                response = await self._infer(request, request_id, context.time_remaining())
                await answers.put(pb.ModelStreamInferResponse(infer_response=response))
            except Exception as e:
                code, message = status_of(e, request_id)
                logger.info("stream infer %s: %s", request_id, code.name)
                await answers.put(pb.ModelStreamInferResponse(
                    error_message=f"{code.name}: {message}",
                    infer_response=pb.ModelInferResponse(model_name=request.model_name, id=request.id)))

        async def read() -> None:
            try:
                async for request in requests:
                    task = asyncio.get_running_loop().create_task(one(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
                await asyncio.gather(*list(running))
            finally:  # also when the request stream breaks (an undecodable message): the answers end, no hang
                await answers.put(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                yield answer
            try:
                await reader
            except Exception as e:  # the request stream broke: its status; abort() must run outside this block
                code, message = status_of(e, "-")
            else:
                return
            await context.abort(code, message)
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    async def _infer(self, request: pb.ModelInferRequest, request_id: str, time_remaining_s: float | None
                     ) -> pb.ModelInferResponse:
        deadline = None if time_remaining_s is None else time.monotonic() + time_remaining_s
        served = lookup(self._models(), request.model_name, request.model_version, field="model_name")
        manifest: Manifest = served.model.engine.manifest
        if request.model_name not in self._tensor_models():
            raise RequestError(grpc.StatusCode.UNIMPLEMENTED,
                               f"model_name {request.model_name!r} (a {manifest.task} model) does not run raw tensors "
                               "over ModelInfer: it runs several graphs with a search between them; use its own "
                               "API (nui.v1.Captioner/Caption for captioners)")
        outputs = [t.name for t in manifest.outputs]
        wanted = [o.name for o in request.outputs] or outputs
        for name in wanted:
            if name not in outputs:
                raise invalid_argument(f"output {name[:100]!r} is not an output of {manifest.model}; outputs: "
                                       f"{outputs}")
        item = check_request(manifest, decode_inputs(request), request_id, max_rows=self._limits.max_batch_size,
                             max_elements=self._limits.max_elements)
        result: TensorOutputs = await served.batcher.submit(item, deadline=deadline)
        response = pb.ModelInferResponse(model_name=manifest.model, model_version=str(served.model.version),
                                         id=request.id)
        encode_outputs(response, result, wanted)
        return response

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
                              ) -> pb.RepositoryIndexResponse:
        async def answer() -> pb.RepositoryIndexResponse:
            rows = self._repository.index() if self._repository is not None else [
                (n, str(v), "READY", "") for n, vs in self._models().items() for v in vs]
            Index = pb.RepositoryIndexResponse.ModelIndex
            return pb.RepositoryIndexResponse(models=[
                Index(name=n, version=v, state=s, reason=r) for n, v, s, r in sorted(rows)
                if not request.ready or s == "READY"])
        return await _answer(answer, context)

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,
                                  context: grpc.aio.ServicerContext) -> pb.RepositoryModelLoadResponse:
        async def answer() -> pb.RepositoryModelLoadResponse:
            await self._control().load(request.model_name)
            return pb.RepositoryModelLoadResponse()
        return await _answer(answer, context)

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,
                                    context: grpc.aio.ServicerContext) -> pb.RepositoryModelUnloadResponse:
        async def answer() -> pb.RepositoryModelUnloadResponse:
            await self._control().unload(request.model_name)
            return pb.RepositoryModelUnloadResponse()
        return await _answer(answer, context)

    def _control(self) -> RepositoryControl:
        if self._repository is None:
            raise RequestError(grpc.StatusCode.UNIMPLEMENTED, "this server has no model repository control")
        return self._repository


async def _answer(answer: Callable[[], Awaitable[Any]], context: grpc.aio.ServicerContext) -> Any:
    try:
        return await answer()
    except Exception as e:
        code, message = status_of(e, "-")
    await context.abort(code, message)
    raise AssertionError("context.abort returned")


def add_kserve_servicer_to_server(servicer: KServeServicer, server: grpc.aio.Server) -> None:
    """Register every method of proto/kserve.proto's service under the protocol's service name."""
    add_servicer(SERVICE, servicer, server)

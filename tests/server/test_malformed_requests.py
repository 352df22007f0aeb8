"""Regression tests for what bench/fuzz.py found: undecodable messages, KServe shapes numpy cannot hold,
a broken ModelStreamInfer request stream, repository model names that leave the repository, status
messages too long for the client's metadata limit, a status that misses its call (deadline) under load."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from proto import kserve_pb2, riva_asr_pb2, speech_pb2, speech_pb2_grpc
from server.errors import MAX_MESSAGE_CHARS, RequestError, invalid_argument, status_of
from server.interceptors import ServingInterceptor
from server.kserve import decode_inputs
from server.metrics import ServerMetrics
from server.model_store import BatchSettings, ModelStore
from tests.server.conftest import StartServer
from tests.server.helpers import encode, make_clip

UNDECODABLE = b"\xff\xff\xff"  # a field tag whose varint never ends


def test_the_test_bytes_do_not_parse() -> None:
    with pytest.raises(Exception, match="Error parsing"):
        speech_pb2.RecognizeRequest.FromString(UNDECODABLE)


@pytest.mark.parametrize("method", ["/nui.v1.Speech/Recognize", "/inference.GRPCInferenceService/ModelInfer",
                                    "/inference.GRPCInferenceService/ModelMetadata"])
async def test_an_undecodable_request_is_invalid_argument_not_unknown(start: StartServer, method: str) -> None:
    server = await start()
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await channel.unary_unary(method)(UNDECODABLE, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
        assert f"not a valid protobuf message for {method.lstrip('/')}" in (e.value.details() or "")
        answer = await speech_pb2_grpc.SpeechStub(channel).Recognize(
            speech_pb2.RecognizeRequest(audio=encode(make_clip(0.3, seed=1))), timeout=30)
        assert answer.results  # the server still answers


async def test_an_undecodable_first_stream_message_is_invalid_argument(start: StartServer,
                                                                       streaming_repo: Path) -> None:
    server = await start(repo=streaming_repo)  # without a streaming model the call is UNAVAILABLE unread
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = channel.stream_stream("/nui.v1.Speech/StreamingRecognize")(iter([UNDECODABLE]), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for _ in call:
                pass
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()


async def test_an_undecodable_later_stream_message_is_invalid_argument(start: StartServer,
                                                                       streaming_repo: Path) -> None:
    server = await start(repo=streaming_repo)
    config = speech_pb2.StreamingRecognizeRequest(config=speech_pb2.RecognitionConfig(
        encoding=speech_pb2.LINEAR_PCM, sample_rate_hertz=16000))
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = channel.stream_stream("/nui.v1.Speech/StreamingRecognize")(timeout=10)
        await call.write(config.SerializeToString())
        await call.write(UNDECODABLE)  # then nothing more: no write can race the server's status
        with pytest.raises(grpc.aio.AioRpcError) as e:
            while await call.read() is not grpc.aio.EOF:
                pass
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert "not a valid protobuf message for nui.v1.Speech/StreamingRecognize" in (e.value.details() or "")


async def test_model_stream_infer_with_an_undecodable_message_ends_instead_of_hanging(start: StartServer) -> None:
    server = await start()
    valid = kserve_pb2.ModelInferRequest(
        model_name="speech_ctc", id="ok",
        inputs=[kserve_pb2.ModelInferRequest.InferInputTensor(name="audio", datatype="FP32", shape=[1, 4000]),
                kserve_pb2.ModelInferRequest.InferInputTensor(name="audio_lengths", datatype="INT64", shape=[1])],
        raw_input_contents=[make_clip(0.25, seed=2).tobytes(), np.array([4000], np.int64).tobytes()])
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")(
            iter([valid.SerializeToString(), UNDECODABLE]), timeout=20)

        async def drain() -> None:
            async for _ in call:
                pass

        with pytest.raises(grpc.aio.AioRpcError) as e:
            await asyncio.wait_for(drain(), timeout=15)  # a TimeoutError here is the hang this test guards
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()


@pytest.mark.parametrize("shape", [[2**32, 2**32, 1], [0, 2**62], [0, 2**63 - 1, 4]])
def test_kserve_shapes_numpy_cannot_hold_are_invalid_argument(shape: list[int]) -> None:
    request = kserve_pb2.ModelInferRequest(
        inputs=[kserve_pb2.ModelInferRequest.InferInputTensor(name="audio", datatype="FP32", shape=shape)],
        raw_input_contents=[b""])
    with pytest.raises(RequestError) as e:
        decode_inputs(request)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "input 'audio'" in e.value.message


@pytest.mark.parametrize("name", ["../outside", "/etc", "", "x" * 300, "a/b", ".hidden"])
async def test_repository_load_refuses_names_that_are_not_a_model_folder(tmp_path: Path, name: str) -> None:
    (tmp_path / "outside" / "1").mkdir(parents=True)  # what "../outside" would reach
    (tmp_path / "repo").mkdir()
    store = ModelStore(tmp_path / "repo", BatchSettings(max_batch_size=1, max_queue_delay_ms=1.0, max_queue_size=4),
                       ServerMetrics())
    with pytest.raises(RequestError) as e:
        await store.load(name)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "model_name" in e.value.message


async def test_a_status_quoting_a_huge_value_still_reaches_the_client(start: StartServer) -> None:
    """A 10,000-character model name quoted in full made trailers the client refused (RESOURCE_EXHAUSTED)."""
    server = await start()
    request = riva_asr_pb2.RivaSpeechRecognitionConfigRequest(model_name="x" * 10_000)
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await channel.unary_unary(
                "/nvidia.riva.asr.RivaSpeechRecognition/GetRivaSpeechRecognitionConfig",
                request_serializer=riva_asr_pb2.RivaSpeechRecognitionConfigRequest.SerializeToString,
                response_deserializer=riva_asr_pb2.RivaSpeechRecognitionConfigResponse.FromString)(request, timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(e.value.details() or "") <= MAX_MESSAGE_CHARS


def test_status_messages_are_capped() -> None:
    code, message = status_of(invalid_argument("value " + "y" * 5000), "-")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and len(message) == MAX_MESSAGE_CHARS
    assert message.startswith("value yyy") and message.endswith("...")


class ExecuteBatchError(Exception):
    """Named as grpc's internal error that abort() raises when the call already ended."""


class _Call:
    def __init__(self, remaining_s: float) -> None:
        self.remaining_s = remaining_s

    def time_remaining(self) -> float:
        return self.remaining_s

    def cancelled(self) -> bool:
        return False

    def code(self) -> None:
        return None


@pytest.mark.parametrize("remaining_s", [0.0, 5.0])
async def test_a_status_that_missed_its_call_is_a_cancellation_not_a_server_error(remaining_s: float) -> None:
    """grpc's asyncio server raises ExecuteBatchError from abort() when the deadline ended the call first
    (a race seen under overload with 0.5 s deadlines); it must not be logged as an error."""
    metrics = ServerMetrics()

    async def behavior(request: bytes, context: object) -> bytes:
        raise ExecuteBatchError('Failed "execute_batch"')

    async def continuation(details: object) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(behavior)

    details = SimpleNamespace(method="/nui.v1.Speech/Recognize", invocation_metadata=())
    wrapped = await ServingInterceptor(metrics).intercept_service(continuation, details)
    expected = asyncio.CancelledError if remaining_s <= 0 else ExecuteBatchError
    with pytest.raises(expected):
        await wrapped.unary_unary(b"", _Call(remaining_s))
    code = "CANCELLED" if remaining_s <= 0 else "UNKNOWN"
    assert metrics.registry.get_sample_value(
        "nui_requests_total", {"service": "nui.v1.Speech", "method": "Recognize", "code": code}) == 1

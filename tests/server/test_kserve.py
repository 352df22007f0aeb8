"""KServe v2 / Triton protocol against a real grpc.aio server (port 0), driven by the real `tritonclient`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import InferInput, InferRequestedOutput  # noqa: E402
from tritonclient.grpc import model_config_pb2 as triton_config  # noqa: E402
from tritonclient.grpc import service_pb2 as triton_pb  # noqa: E402
from tritonclient.grpc import service_pb2_grpc as triton_grpc  # noqa: E402
from tritonclient.grpc.aio import InferenceServerClient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from engines.engine import OnnxRuntimeEngine  # noqa: E402
from engines.manifest import model_versions  # noqa: E402
from proto import kserve_pb2, speech_pb2, speech_pb2_grpc  # noqa: E402
from server.repository import default_repo, load_models  # noqa: E402
from server.tensor_batch import SharedRunEngine  # noqa: E402
from tests.server.conftest import StartServer  # noqa: E402
from tests.server.helpers import make_clip  # noqa: E402
from tests.server.test_diagnosis_service import diagnosis_repo  # noqa: E402, F401  (session fixture)


def speech_inputs(clips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(c) for c in clips], np.int64)
    audio = np.zeros((len(clips), int(lengths.max())), np.float32)
    for i, c in enumerate(clips):
        audio[i, : len(c)] = c
    return audio, lengths


def triton_inputs(audio: np.ndarray, lengths: np.ndarray) -> list[InferInput]:
    a = InferInput("audio", list(audio.shape), "FP32")
    a.set_data_from_numpy(audio)
    n = InferInput("audio_lengths", list(lengths.shape), "INT64")
    n.set_data_from_numpy(lengths)
    return [a, n]


def direct(repo: Path, audio: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
    """ONNX Runtime on the same model files, no server."""
    engine = OnnxRuntimeEngine(repo / "speech_ctc" / str(max(model_versions(repo, "speech_ctc"))), intra_op_threads=1)
    return engine.run({"audio": audio, "audio_lengths": lengths})


def test_messages_are_wire_identical_to_tritons() -> None:
    """Every field of proto/kserve.proto has the number, type and label of Triton's own descriptors."""
    def check(ours: object, theirs: object, path: str) -> int:
        n = 0
        for f in ours.fields:  # type: ignore[attr-defined]
            t = theirs.fields_by_name.get(f.name)  # type: ignore[attr-defined]
            assert t is not None, f"{path}.{f.name} is not in Triton's message"
            assert (f.number, f.type, f.is_repeated) == (t.number, t.type, t.is_repeated), f"{path}.{f.name}"
            n += 1
            if f.message_type is not None:
                n += check(f.message_type, t.message_type, f"{path}.{f.name}")
        return n

    checked = 0
    for name, message in kserve_pb2.DESCRIPTOR.message_types_by_name.items():
        theirs = (triton_pb.DESCRIPTOR.message_types_by_name.get(name)
                  or triton_config.DESCRIPTOR.message_types_by_name.get(name))
        assert theirs is not None, name
        checked += check(message, theirs, name)
    assert checked > 100


async def test_health_metadata_and_config(start: StartServer) -> None:
    server = await start()
    async with InferenceServerClient(server.address) as client:
        assert await client.is_server_live()
        assert await client.is_server_ready()
        assert await client.is_model_ready("speech_ctc")
        assert await client.is_model_ready("speech_ctc", "1")
        assert not await client.is_model_ready("speech_ctc", "7")
        assert not await client.is_model_ready("nope")
        meta = await client.get_server_metadata(as_json=True)
        assert meta["name"] == "nui" and "model_repository" in meta["extensions"]
        model = await client.get_model_metadata("speech_ctc", as_json=True)
        assert model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
        assert model["inputs"] == [{"name": "audio", "datatype": "FP32", "shape": ["-1", "-1"]},
                                   {"name": "audio_lengths", "datatype": "INT64", "shape": ["-1"]}]
        assert [o["name"] for o in model["outputs"]] == ["log_probs", "out_lengths"]
        assert model["outputs"][0]["shape"] == ["-1", "-1", "29"]
        config = (await client.get_model_config("speech_ctc")).config
        assert config.max_batch_size == 16 and config.dynamic_batching.max_queue_delay_microseconds == 20_000
        assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
            ("audio", triton_config.TYPE_FP32, [-1]), ("audio_lengths", triton_config.TYPE_INT64, [])]
        with pytest.raises(InferenceServerException) as e:
            await client.get_model_metadata("nope")
        assert e.value.status() == "StatusCode.NOT_FOUND" and "'nope' is not loaded" in e.value.message()


async def test_infer_equals_onnx_runtime(start: StartServer, tiny_repo: Path) -> None:
    server = await start()
    audio, lengths = speech_inputs([make_clip(1.0, seed=1), make_clip(0.55, seed=2)])
    want = direct(tiny_repo, audio, lengths)
    async with InferenceServerClient(server.address) as client:
        result = await client.infer("speech_ctc", triton_inputs(audio, lengths), request_id="r1")
        only = await client.infer("speech_ctc", triton_inputs(audio, lengths),
                                  outputs=[InferRequestedOutput("out_lengths")])
    response = result.get_response()
    assert response.model_name == "speech_ctc" and response.model_version == "1" and response.id == "r1"
    got = result.as_numpy("log_probs")
    assert got.shape == want["log_probs"].shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want["log_probs"], atol=1e-4)
    np.testing.assert_array_equal(result.as_numpy("out_lengths"), want["out_lengths"])
    assert only.as_numpy("log_probs") is None
    np.testing.assert_array_equal(only.as_numpy("out_lengths"), want["out_lengths"])


async def test_typed_contents_equal_raw_contents(start: StartServer, tiny_repo: Path) -> None:
    """Triton's own generated stub, inputs in InferTensorContents instead of raw bytes."""
    server = await start()
    audio, lengths = speech_inputs([make_clip(0.6, seed=3)])
    request = triton_pb.ModelInferRequest(model_name="speech_ctc", inputs=[
        triton_pb.ModelInferRequest.InferInputTensor(
            name="audio", datatype="FP32", shape=list(audio.shape),
            contents=triton_pb.InferTensorContents(fp32_contents=audio.ravel().tolist())),
        triton_pb.ModelInferRequest.InferInputTensor(
            name="audio_lengths", datatype="INT64", shape=[1],
            contents=triton_pb.InferTensorContents(int64_contents=lengths.tolist()))])
    async with grpc.aio.insecure_channel(server.address) as channel:
        reply = await triton_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    by_name = {o.name: (o, raw) for o, raw in zip(reply.outputs, reply.raw_output_contents, strict=True)}
    out, raw = by_name["log_probs"]
    got = np.frombuffer(raw, np.float32).reshape(list(out.shape))
    np.testing.assert_allclose(got, direct(tiny_repo, audio, lengths)["log_probs"], atol=1e-4)


@pytest.mark.parametrize(("change", "code", "needle"), [
    ("rename", "INVALID_ARGUMENT", "input 'wave' is not an input of speech_ctc"),
    ("dtype", "INVALID_ARGUMENT", "input 'audio' has datatype float64"),
    ("rank", "INVALID_ARGUMENT", "input 'audio' has shape [4000]"),
    ("rows", "INVALID_ARGUMENT", "input 'audio_lengths' axis 0 (batch) has size 2"),
    ("lengths", "INVALID_ARGUMENT", "input 'audio_lengths' holds 9000..9000; allowed: 1..4000"),
    ("model", "NOT_FOUND", "model_name 'nope' is not loaded"),
    ("output", "INVALID_ARGUMENT", "output 'text' is not an output"),
])
async def test_bad_inputs_get_the_right_code(start: StartServer, change: str, code: str, needle: str) -> None:
    server = await start()
    audio, lengths = speech_inputs([make_clip(0.25, seed=4)])
    inputs = triton_inputs(audio, lengths)
    model, outputs = "speech_ctc", None
    if change == "rename":
        inputs[0] = InferInput("wave", list(audio.shape), "FP32")
        inputs[0].set_data_from_numpy(audio)
    elif change == "dtype":
        inputs[0] = InferInput("audio", list(audio.shape), "FP64")
        inputs[0].set_data_from_numpy(audio.astype(np.float64))
    elif change == "rank":
        inputs[0] = InferInput("audio", [audio.size], "FP32")
        inputs[0].set_data_from_numpy(audio.ravel())
    elif change == "rows":
        inputs[1] = InferInput("audio_lengths", [2], "INT64")
        inputs[1].set_data_from_numpy(np.array([4000, 4000], np.int64))
    elif change == "lengths":
        inputs[1].set_data_from_numpy(np.array([9000], np.int64))
    elif change == "model":
        model = "nope"
    elif change == "output":
        outputs = [InferRequestedOutput("text")]
    async with InferenceServerClient(server.address) as client:
        with pytest.raises(InferenceServerException) as e:
            await client.infer(model, inputs, outputs=outputs)
        assert e.value.status() == f"StatusCode.{code}"
        assert needle in e.value.message(), e.value.message()
        # the server still answers after a bad request
        assert (await client.infer("speech_ctc", triton_inputs(audio, lengths))).as_numpy("log_probs") is not None


async def test_raw_contents_size_mismatch_names_the_input(start: StartServer) -> None:
    server = await start()
    request = triton_pb.ModelInferRequest(
        model_name="speech_ctc",
        inputs=[triton_pb.ModelInferRequest.InferInputTensor(name="audio", datatype="FP32", shape=[1, 4000]),
                triton_pb.ModelInferRequest.InferInputTensor(name="audio_lengths", datatype="INT64", shape=[1])],
        raw_input_contents=[b"\0" * 100, np.array([4000], np.int64).tobytes()])
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await triton_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'audio': raw_input_contents[0] holds 100 bytes" in (e.value.details() or "")


async def test_triton_and_nui_clients_share_engine_runs(start: StartServer, tiny_repo: Path,
                                                        clips: list[bytes]) -> None:
    """Concurrent tritonclient async_infer calls and nui Recognize calls: fewer engine runs than calls,
    and every tensor answer equals ONNX Runtime on that request alone (batch-mates change nothing)."""
    server = await start(max_batch_size=16, max_queue_delay_ms=200)
    waves = [make_clip(0.3 + 0.1 * i, seed=10 + i) for i in range(6)]
    requests = [speech_inputs([w]) for w in waves]
    batcher = server.served["speech_ctc"][1].batcher
    async with InferenceServerClient(server.address) as client, \
            grpc.aio.insecure_channel(server.address) as channel:
        stub = speech_pb2_grpc.SpeechStub(channel)
        triton_calls = [client.infer("speech_ctc", triton_inputs(a, n)) for a, n in requests]
        nui_calls = [stub.Recognize(speech_pb2.RecognizeRequest(audio=c), timeout=20) for c in clips[:4]]
        results = await asyncio.gather(*triton_calls, *nui_calls)
    assert batcher.stats.runs < len(results)
    engine = server.served["speech_ctc"][1].model.engine
    assert isinstance(engine, SharedRunEngine) and engine.shared_runs >= 1  # nui and Triton rows in one run
    for (audio, lengths), result in zip(requests, results[: len(requests)], strict=True):
        want = direct(tiny_repo, audio, lengths)
        got = result.as_numpy("log_probs")
        assert got.shape == want["log_probs"].shape
        np.testing.assert_allclose(got, want["log_probs"], atol=1e-4)
    assert all(r.results[0].alternatives for r in results[len(requests):])


async def test_statistics_and_repository_index(start: StartServer) -> None:
    server = await start()
    audio, lengths = speech_inputs([make_clip(0.4, seed=5)])
    async with InferenceServerClient(server.address) as client:
        for _ in range(3):
            await client.infer("speech_ctc", triton_inputs(audio, lengths))
        stats = (await client.get_inference_statistics("speech_ctc")).model_stats
        index = (await client.get_model_repository_index()).models
    assert len(stats) == 1 and stats[0].version == "1"
    assert stats[0].inference_count == 3 and stats[0].execution_count == 3
    assert stats[0].inference_stats.compute_infer.ns > 0
    assert [(m.name, m.version, m.state) for m in index] == [("speech_ctc", "1", "READY")]


async def test_diagnosis_model_over_kserve(diagnosis_repo: Path) -> None:  # noqa: F811
    from server.app import ServerConfig, start_server

    server = await start_server(ServerConfig(repo=diagnosis_repo, port=0, intra_op_threads=1))
    try:
        _, models = load_models(diagnosis_repo, intra_op_threads=1)
        engine = models["diagnosis"][1].engine
        n_symptoms = int(engine.manifest.inputs[0].shape[1])
        evidence = np.zeros((2, n_symptoms), np.float32)
        evidence[0, 0], evidence[1, 1] = 1, -1
        feeds: dict[str, np.ndarray] = {"evidence": evidence, "age_years": np.array([30, -1], np.float32),
                 "sex": np.array([1, 0], np.int64)}
        inputs = []
        for name, x in feeds.items():
            inputs.append(InferInput(name, list(x.shape), "FP32" if x.dtype == np.float32 else "INT64"))
            inputs[-1].set_data_from_numpy(x)
        async with InferenceServerClient(server.address) as client:
            result = await client.infer("diagnosis", inputs)
        np.testing.assert_allclose(result.as_numpy("probs"), engine.run(feeds)["probs"], atol=1e-6)
    finally:
        await server.stop(0)


@pytest.mark.slow
async def test_bundled_speech_model_equals_onnx_runtime(start: StartServer) -> None:
    repo = default_repo()
    server = await start(repo=repo)
    audio, lengths = speech_inputs([make_clip(1.2, seed=6), make_clip(0.7, seed=7)])
    async with InferenceServerClient(server.address) as client:
        result = await client.infer("speech_ctc", triton_inputs(audio, lengths))
    want = direct(repo, audio, lengths)
    np.testing.assert_allclose(result.as_numpy("log_probs"), want["log_probs"], atol=1e-4)
    np.testing.assert_array_equal(result.as_numpy("out_lengths"), want["out_lengths"])


async def test_stream_infer_answers_every_request_and_reports_errors_in_band(start: StartServer,
                                                                           tiny_repo: Path) -> None:
    server = await start(max_queue_delay_ms=100)
    waves = [make_clip(0.3 + 0.1 * i, seed=20 + i) for i in range(4)]

    async def requests() -> AsyncIterator[dict[str, object]]:
        for i, w in enumerate(waves):
            yield {"model_name": "speech_ctc", "inputs": triton_inputs(*speech_inputs([w])), "request_id": f"s{i}"}
        bad = InferInput("audio", [1, 10], "FP64")
        bad.set_data_from_numpy(np.zeros((1, 10)))
        yield {"model_name": "speech_ctc", "inputs": [bad], "request_id": "bad"}

    answers: dict[str, np.ndarray] = {}
    errors: list[str] = []
    async with InferenceServerClient(server.address) as client:
        async for result, error in client.stream_infer(requests()):
            if error is not None:
                errors.append(error.message())
            else:
                answers[result.get_response().id] = result.as_numpy("log_probs")
    assert len(errors) == 1 and "INVALID_ARGUMENT: input 'audio_lengths' is missing" in errors[0]
    assert sorted(answers) == ["s0", "s1", "s2", "s3"]
    for i, w in enumerate(waves):
        np.testing.assert_allclose(answers[f"s{i}"], direct(tiny_repo, *speech_inputs([w]))["log_probs"], atol=1e-4)
    assert server.served["speech_ctc"][1].batcher.stats.runs < len(waves)  # stream requests share batches

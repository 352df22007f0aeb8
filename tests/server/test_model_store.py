"""One load/reload/retire path for every task (server/model_store.py): new captioner and streaming
versions picked up by polling and served, listed by KServe; an open stream keeps its retired version;
`--provider` reaches every loader and a provider this onnxruntime build lacks fails start-up clearly."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engines.manifest import model_versions, staged_version
from proto import caption_pb2, caption_pb2_grpc, speech_pb2, speech_pb2_grpc
from server.app import ServerConfig, start_server
from server.batcher import BatcherClosedError
from server.streaming import warmup_job
from server.tensor_batch import warmup_request
from tests.captioner_tiny import picture_bytes
from tests.server.helpers import SAMPLE_RATE_HZ, make_clip, pcm16, wait_until
from tests.server.test_caption_service import caption_repo  # noqa: F401  (fixture)

tritonclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc.aio import InferenceServerClient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

STREAMING = "speech_ctc_streaming"


def copy_repo(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def publish(repo: Path, name: str, version: int, source: int = 1) -> None:
    """A copy of `source` published as `version` the way exports publish (staged folder, one rename)."""
    with staged_version(repo, name, version) as (tmp, _):
        for f in (repo / name / str(source)).iterdir():
            shutil.copyfile(f, tmp / f.name)


def config(repo: Path, **overrides: object) -> ServerConfig:
    settings: dict[str, object] = {"repo": repo, "port": 0, "max_queue_delay_ms": 5.0, "intra_op_threads": 1,
                                   "poll_repository_s": 0.1, "retire_after_s": 0.1, **overrides}
    return ServerConfig(**settings)  # type: ignore[arg-type]


async def index_of(client: InferenceServerClient) -> dict[tuple[str, str], str]:
    return {(m.name, m.version): m.state for m in (await client.get_model_repository_index()).models}


async def test_a_new_captioner_version_is_polled_served_listed_and_unloadable(caption_repo: Path,  # noqa: F811
                                                                              tmp_path: Path) -> None:
    repo = copy_repo(caption_repo, tmp_path / "repo")
    server = await start_server(config(repo))
    image = caption_pb2.CaptionRequest(image=picture_bytes("red"))
    try:
        publish(repo, "captioner", 2)
        await wait_until(lambda: 2 in server.captioner.get("captioner", {}), timeout_s=30)
        async with grpc.aio.insecure_channel(server.address) as channel, \
                InferenceServerClient(server.address) as client:
            stub = caption_pb2_grpc.CaptionerStub(channel)
            reply = await stub.Caption(image, timeout=30)
            assert reply.model_version == 2 and reply.captions[0].text
            assert await index_of(client) == {("captioner", "1"): "READY", ("captioner", "2"): "READY"}
            assert await client.is_model_ready("captioner", "2")
            meta = await client.get_model_metadata("captioner")
            assert list(meta.versions) == ["1", "2"] and [t.name for t in meta.inputs] == ["images"]
            stats = await client.get_inference_statistics("captioner", "2")
            assert stats.model_stats[0].inference_count >= 1  # the Caption call went through v2's encoder
            images = tritonclient.InferInput("images", [1, 3, 8, 8], "FP32")
            images.set_data_from_numpy(np.zeros((1, 3, 8, 8), np.float32))
            with pytest.raises(InferenceServerException) as e:
                await client.infer("captioner", [images])
            assert e.value.status() == "StatusCode.UNIMPLEMENTED" and "'captioner'" in e.value.message()

            shutil.rmtree(repo / "captioner" / "1")  # withdrawn: retired by the next poll
            await wait_until(lambda: 1 not in server.captioner.get("captioner", {}), timeout_s=30)
            assert not await client.is_model_ready("captioner", "1")

            await client.unload_model("captioner")
            assert not await client.is_model_ready("captioner")
            health = health_pb2_grpc.HealthStub(channel)
            check = await health.Check(health_pb2.HealthCheckRequest(service="nui.v1.Captioner"), timeout=5)
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Caption(image, timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # until a captioner is loaded again
            await client.load_model("captioner")
            assert await client.is_model_ready("captioner", "2")
            assert (await stub.Caption(image, timeout=30)).model_version == 2
    finally:
        await server.stop(0)


class Stream:
    """A StreamingRecognize call whose messages the test sends one at a time."""

    def __init__(self, stub: speech_pb2_grpc.SpeechStub) -> None:
        self.queue: asyncio.Queue[speech_pb2.StreamingRecognizeRequest | None] = asyncio.Queue()
        config = speech_pb2.RecognitionConfig(encoding=speech_pb2.LINEAR_PCM, sample_rate_hertz=SAMPLE_RATE_HZ,
                                              endpointing=speech_pb2.EndpointingConfig(disabled=True))
        self.queue.put_nowait(speech_pb2.StreamingRecognizeRequest(config=config))
        self.responses = asyncio.ensure_future(self._collect(stub))

    async def _requests(self) -> AsyncIterator[speech_pb2.StreamingRecognizeRequest]:
        while (request := await self.queue.get()) is not None:
            yield request

    async def _collect(self, stub: speech_pb2_grpc.SpeechStub) -> list[speech_pb2.StreamingRecognizeResponse]:
        return [r async for r in stub.StreamingRecognize(self._requests(), timeout=60)]

    def send(self, audio: bytes) -> None:
        self.queue.put_nowait(speech_pb2.StreamingRecognizeRequest(audio=audio))

    async def finish(self) -> list[speech_pb2.StreamingRecognizeResponse]:
        self.queue.put_nowait(None)
        return await self.responses


async def test_a_new_streaming_version_is_polled_and_an_open_stream_keeps_the_old_one(
        streaming_repo: Path, tmp_path: Path) -> None:
    repo = copy_repo(streaming_repo, tmp_path / "repo")
    server = await start_server(config(repo))
    audio = pcm16(make_clip(1.0, seed=1))
    try:
        async with grpc.aio.insecure_channel(server.address) as channel, \
                InferenceServerClient(server.address) as client:
            stub = speech_pb2_grpc.SpeechStub(channel)
            old = server.streaming[STREAMING][1]
            stream = Stream(stub)  # opened on v1, the latest until v2 comes
            stream.send(audio[: len(audio) // 2])
            await wait_until(lambda: old.open_streams == 1 and old.batcher.stats.items_done >= 1, timeout_s=30)

            publish(repo, STREAMING, 2)
            await wait_until(lambda: 2 in server.streaming.get(STREAMING, {}), timeout_s=30)
            shutil.rmtree(repo / STREAMING / "1")
            await wait_until(lambda: 1 not in server.streaming.get(STREAMING, {}), timeout_s=30)
            await asyncio.sleep(0.5)  # well past retire_after_s: v1's batcher stays open for the stream
            stream.send(audio[len(audio) // 2:])
            responses = await stream.finish()
            assert {r.model_version for r in responses} == {1}
            assert [r for resp in responses for r in resp.results if r.is_final]
            await asyncio.sleep(0.5)  # the stream is over: v1 drains and closes
            with pytest.raises(BatcherClosedError):
                await old.batcher.submit(warmup_job(old.model))

            fresh = Stream(stub)
            fresh.send(audio)
            assert {r.model_version for r in await fresh.finish()} == {2}

            index = await index_of(client)
            assert index == {("speech_ctc", "1"): "READY", (STREAMING, "2"): "READY"}
            assert await client.is_model_ready(STREAMING, "2")
            # ModelInfer runs one chunk of the streaming engine, the client passing and getting the state
            model = server.streaming[STREAMING][2].model
            job = warmup_job(model)
            job.audio[:] = np.frombuffer(audio, "<i2")[: len(job.audio)] / 32768.0
            feed = {"audio_chunk": job.audio[None], "stream_samples": np.array([-1], np.int64),
                    **{k: v[None] for k, v in job.state.items()}}
            inputs = []
            for name, array in feed.items():
                tensor = tritonclient.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32
                                                 else "INT64")
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            result = await client.infer(STREAMING, inputs)
            want = model.engine.run(feed)
            np.testing.assert_allclose(result.as_numpy("log_probs"), want["log_probs"], rtol=1e-5, atol=1e-5)
            assert result.get_response().model_version == "2"
    finally:
        await server.stop(0)


def test_every_loader_uses_the_configured_provider(tiny_repo: Path, streaming_repo: Path,
                                                   caption_repo: Path, tmp_path: Path,  # noqa: F811
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With --provider cuda every engine of every task asks ONNX Runtime for the CUDA provider (the GPU
    itself is faked: the session is built on the CPU provider this machine has)."""
    import engines.engine
    import server.app

    repo = copy_repo(streaming_repo, tmp_path / "repo")
    shutil.copytree(caption_repo / "captioner", repo / "captioner")
    asked: list[tuple[str, str, list[str]]] = []
    real_session = ort.InferenceSession

    class Session(real_session):  # type: ignore[misc, valid-type]
        def __init__(self, path: str, options: ort.SessionOptions, providers: list[str]) -> None:
            asked.append((Path(path).parent.parent.name, Path(path).name, providers))
            super().__init__(path, options, providers=["CPUExecutionProvider"])

        def get_providers(self) -> list[str]:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.setattr(engines.engine.ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(engines.engine.ort, "InferenceSession", Session)

    async def start_and_stop() -> list[str]:
        running = await server.app.start_server(config(repo, provider="cuda", poll_repository_s=0.0))
        served = sorted(running.store.served()) if running.store is not None else []
        await running.stop(0)
        return served

    assert asyncio.run(start_and_stop()) == ["captioner", "speech_ctc", STREAMING]
    assert sorted((model, file) for model, file, _ in asked) == [
        ("captioner", "decoder_step.onnx"), ("captioner", "encoder.onnx"), ("speech_ctc", "model.onnx"),
        (STREAMING, "model.onnx")]
    assert all(providers == ["CUDAExecutionProvider", "CPUExecutionProvider"] for _, _, providers in asked)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="a GPU build of onnxruntime")
async def test_a_provider_missing_from_this_build_fails_start_up_naming_it(tiny_repo: Path) -> None:
    with pytest.raises(ValueError) as e:
        await start_server(config(tiny_repo, provider="cuda"))
    message = str(e.value)
    assert "'cuda'" in message and "CUDAExecutionProvider" in message and "CPUExecutionProvider" in message
    assert "--provider cpu" in message


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="a GPU build of onnxruntime")
def test_nui_serve_provider_flag(tiny_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from server.main import build_parser, config_from_args, main

    assert main(["--repo", str(tiny_repo), "--port", "0", "--provider", "cuda"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nui serve: error: execution provider 'cuda' needs ['CUDAExecutionProvider']")
    assert "available: ['" in err and "Traceback" not in err
    assert config_from_args(build_parser().parse_args(["--provider", "cpu"])).provider == "cpu"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--provider", "rocm"])


async def test_provider_cpu_serves(tiny_repo: Path, clips: list[bytes]) -> None:
    server = await start_server(config(tiny_repo, provider="cpu", poll_repository_s=0.0))
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            reply = await speech_pb2_grpc.SpeechStub(channel).Recognize(
                speech_pb2.RecognizeRequest(audio=clips[0]), timeout=20)
        assert reply.model_version == 1
    finally:
        await server.stop(0)


async def test_a_new_symptom_text_version_reloads_its_diagnosis_models(tmp_path: Path) -> None:
    """The bundled diagnosis model and its free-text model (hard links: nothing is copied): a newer
    symptom_text version of the same knowledge base swaps in a diagnosis version that uses it; the old
    one drains. Withdrawing it swaps back."""
    from proto import diagnosis_pb2, diagnosis_pb2_grpc
    from server.repository import default_repo

    bundled = default_repo()
    if not (model_versions(bundled, "diagnosis") and model_versions(bundled, "symptom_text")):
        pytest.skip("the bundled diagnosis and symptom_text models are not in this checkout")
    diagnosis_v, text_v = model_versions(bundled, "diagnosis")[-1], model_versions(bundled, "symptom_text")[-1]
    repo = tmp_path / "repo"
    for name in ("diagnosis", "symptom_text"):
        shutil.copytree(bundled / name, repo / name, copy_function=os.link)
    server = await start_server(config(repo, poll_repository_s=0.2))

    def text_version() -> int:
        text = server.diagnosis["diagnosis"][diagnosis_v].model.text
        return text.version if text is not None else 0

    try:
        old = server.diagnosis["diagnosis"][diagnosis_v]
        assert text_version() == text_v
        with staged_version(repo, "symptom_text", text_v + 1) as (tmp, _):
            for f in (repo / "symptom_text" / str(text_v)).iterdir():
                os.link(f, tmp / f.name)
        await wait_until(lambda: text_version() == text_v + 1, timeout_s=60)
        async with grpc.aio.insecure_channel(server.address) as channel, \
                InferenceServerClient(server.address) as client:
            reply = await diagnosis_pb2_grpc.DiagnosisStub(channel).Diagnose(
                diagnosis_pb2.DiagnoseRequest(text="I have a bad headache and a fever"), timeout=30)
            assert reply.understood and reply.diseases
            models = (await client.get_model_repository_index()).models
        index = {(m.name, m.version): (m.state, m.reason) for m in models}
        assert index[("diagnosis", str(diagnosis_v))] == ("READY", "")
        state, reason = index[("symptom_text", str(text_v + 1))]
        assert state == "UNAVAILABLE" and "diagnosis models" in reason
        await asyncio.sleep(0.5)  # past retire_after_s: the replaced diagnosis version drains
        with pytest.raises(BatcherClosedError):
            await old.batcher.submit(warmup_request(old.model.engine.manifest))  # type: ignore[arg-type]
        shutil.rmtree(repo / "symptom_text" / str(text_v + 1))
        await wait_until(lambda: text_version() == text_v, timeout_s=60)
    finally:
        await server.stop(0)

"""Model repository while serving: new versions published under a stream of requests (zero failures,
the latest answers afterwards), explicit load/unload through tritonclient, checksum failures."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engines.manifest import staged_version
from proto import speech_pb2, speech_pb2_grpc
from tests.server.conftest import StartServer
from tests.server.helpers import wait_until


@pytest.fixture
def repo(tiny_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny repository (version 1), free to change."""
    shutil.copytree(tiny_repo, tmp_path / "repo")
    return tmp_path / "repo"


def publish(repo: Path, version: int, *, tamper: bool = False) -> None:
    """Publish `version` the way exports do (staged folder, one rename), a copy of version 1."""
    with staged_version(repo, "speech_ctc", version) as (tmp, _):
        for f in (repo / "speech_ctc" / "1").iterdir():
            shutil.copyfile(f, tmp / f.name)
        if tamper:
            (tmp / "model.onnx").write_bytes((tmp / "model.onnx").read_bytes()[:-10])


async def request_stream(address: str, audio: bytes, stop: asyncio.Event, workers: int = 3
                         ) -> list[tuple[float, grpc.StatusCode, int]]:
    """Back-to-back Recognize calls for the latest version until `stop`: (time, code, answering version)."""
    answers: list[tuple[float, grpc.StatusCode, int]] = []

    async def worker(stub: speech_pb2_grpc.SpeechStub) -> None:
        while not stop.is_set():
            try:
                reply = await stub.Recognize(speech_pb2.RecognizeRequest(audio=audio), timeout=20)
                answers.append((time.monotonic(), grpc.StatusCode.OK, reply.model_version))
            except grpc.aio.AioRpcError as e:
                answers.append((time.monotonic(), e.code(), 0))

    async with grpc.aio.insecure_channel(address) as channel:
        stub = speech_pb2_grpc.SpeechStub(channel)
        await asyncio.gather(*(worker(stub) for _ in range(workers)))
    return answers


async def test_new_versions_replace_old_ones_without_a_failed_request(start: StartServer, repo: Path,
                                                                      clips: list[bytes]) -> None:
    server = await start(repo=repo, poll_repository_s=0.1, retire_after_s=0.3)
    stop = asyncio.Event()
    stream = asyncio.ensure_future(request_stream(server.address, clips[0], stop))
    await asyncio.sleep(0.3)
    publish(repo, 2)
    await wait_until(lambda: 2 in server.served.get("speech_ctc", {}), timeout_s=20)
    shutil.rmtree(repo / "speech_ctc" / "1")  # v1 withdrawn: retired while requests keep coming
    await wait_until(lambda: 1 not in server.served.get("speech_ctc", {}), timeout_s=20)
    published_at = time.monotonic()
    await asyncio.sleep(0.6)  # past retire_after_s: v1's batcher drains and closes
    stop.set()
    answers = await stream
    codes = {code for _, code, _ in answers}
    print(f"reload under load: {len(answers)} requests, {sum(c != grpc.StatusCode.OK for _, c, _ in answers)} "
          f"failed, {sum(v == 1 for _, _, v in answers)} answered by v1, {sum(v == 2 for _, _, v in answers)} by v2")
    assert codes == {grpc.StatusCode.OK}, codes
    versions = [v for _, _, v in answers]
    assert versions[0] == 1 and 2 in versions
    assert all(v == 2 for t, _, v in answers if t > published_at + 0.1)  # the latest answers afterwards
    assert len(answers) >= 10


async def test_explicit_load_and_unload_through_tritonclient(start: StartServer, repo: Path,
                                                             clips: list[bytes]) -> None:
    pytest.importorskip("tritonclient.grpc")
    from tritonclient.grpc.aio import InferenceServerClient
    from tritonclient.utils import InferenceServerException

    server = await start(repo=repo, retire_after_s=0.1)
    publish(repo, 2)  # no polling: invisible until loaded
    async with InferenceServerClient(server.address) as client, \
            grpc.aio.insecure_channel(server.address) as channel:
        stub = speech_pb2_grpc.SpeechStub(channel)
        assert not await client.is_model_ready("speech_ctc", "2")
        index = {(m.version, m.state) for m in (await client.get_model_repository_index()).models}
        assert index == {("1", "READY"), ("2", "UNAVAILABLE")}
        await client.load_model("speech_ctc")
        assert await client.is_model_ready("speech_ctc", "2")
        reply = await stub.Recognize(speech_pb2.RecognizeRequest(audio=clips[0]), timeout=20)
        assert reply.model_version == 2

        await client.unload_model("speech_ctc")
        assert not await client.is_model_ready("speech_ctc")
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("nui.v1.Speech", "inference.GRPCInferenceService"):  # nothing left to serve
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Recognize(speech_pb2.RecognizeRequest(audio=clips[0]), timeout=20)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # until a speech model is loaded again
        await server.store.poll()  # type: ignore[union-attr]  # polling leaves an unloaded model alone
        assert not await client.is_model_ready("speech_ctc")

        await client.load_model("speech_ctc")
        assert await client.is_model_ready("speech_ctc", "1") and await client.is_model_ready("speech_ctc", "2")
        reply = await health.Check(health_pb2.HealthCheckRequest(service="nui.v1.Speech"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(InferenceServerException) as missing:
            await client.load_model("nope")
        assert missing.value.status() == "StatusCode.NOT_FOUND"


async def test_a_version_failing_its_checksum_is_refused_and_the_old_one_serves(start: StartServer, repo: Path,
                                                                               clips: list[bytes]) -> None:
    pytest.importorskip("tritonclient.grpc")
    from tritonclient.grpc.aio import InferenceServerClient
    from tritonclient.utils import InferenceServerException

    server = await start(repo=repo)
    publish(repo, 2, tamper=True)
    async with InferenceServerClient(server.address) as client, \
            grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(InferenceServerException) as e:
            await client.load_model("speech_ctc")
        assert e.value.status() == "StatusCode.FAILED_PRECONDITION"
        assert "does not match the manifest" in e.value.message()
        index = {m.version: (m.state, m.reason) for m in (await client.get_model_repository_index()).models}
        assert index["1"] == ("READY", "") and index["2"][0] == "UNAVAILABLE"
        assert "does not match the manifest" in index["2"][1]
        reply = await speech_pb2_grpc.SpeechStub(channel).Recognize(
            speech_pb2.RecognizeRequest(audio=clips[0]), timeout=20)
        assert reply.model_version == 1


async def test_models_of_other_tasks_are_listed_not_loaded(start: StartServer, repo: Path) -> None:
    """A model of a task no API serves, and a symptom_text model (a part of the diagnosis models), are
    listed with the reason and refused by RepositoryModelLoad naming their task; polling skips them."""
    pytest.importorskip("tritonclient.grpc")
    import json

    from tritonclient.grpc.aio import InferenceServerClient
    from tritonclient.utils import InferenceServerException

    server = await start(repo=repo)
    for name, task in (("other", "translation"), ("text", "symptom_text")):
        folder = repo / name / "1"
        shutil.copytree(repo / "speech_ctc" / "1", folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps({**manifest, "model": name, "task": task}))
    async with InferenceServerClient(server.address) as client:
        for name, task in (("other", "translation"), ("text", "symptom_text")):
            with pytest.raises(InferenceServerException) as e:
                await client.load_model(name)
            assert e.value.status() == "StatusCode.FAILED_PRECONDITION" and task in e.value.message()
        await server.store.poll()  # type: ignore[union-attr]
        index = {(m.name, m.version): (m.state, m.reason) for m in (await client.get_model_repository_index()).models}
    assert index[("other", "1")][0] == "UNAVAILABLE" and "no task this server serves" in index[("other", "1")][1]
    assert index[("text", "1")][0] == "UNAVAILABLE" and "diagnosis models" in index[("text", "1")][1]
    assert index[("speech_ctc", "1")] == ("READY", "")


async def test_polling_retries_a_failed_version_once_its_files_change(start: StartServer, repo: Path) -> None:
    """A version copied in half (checksum mismatch) is refused, then served once the copy completes."""
    server = await start(repo=repo, poll_repository_s=0.1)
    store = server.store
    assert store is not None
    publish(repo, 2, tamper=True)
    await wait_until(lambda: ("speech_ctc", "2", "UNAVAILABLE") in {r[:3] for r in store.index()}, 20)
    assert 2 not in server.served["speech_ctc"]
    shutil.copyfile(repo / "speech_ctc" / "1" / "model.onnx", repo / "speech_ctc" / "2" / "model.onnx")
    await wait_until(lambda: 2 in server.served["speech_ctc"], timeout_s=20)

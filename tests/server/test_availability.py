"""Every service is registered at start-up whatever the repository holds (server/availability.py): a
captioner copied into the repository while the server runs is served by `nui.v1.Captioner` without a
restart; until then Caption answers UNAVAILABLE naming the model and the repository and health says
NOT_SERVING, and both come back when the model is unloaded."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proto import (
    caption_pb2,
    caption_pb2_grpc,
    diagnosis_pb2,
    diagnosis_pb2_grpc,
    kserve_pb2,
    speech_pb2,
    speech_pb2_grpc,
)
from server.app import ServerConfig, start_server
from tests.captioner_tiny import CAPTIONS, picture_bytes
from tests.server.helpers import encode, make_clip, wait_until
from tests.server.test_caption_service import caption_repo  # noqa: F401  (fixture)

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def _refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call  # type: ignore[misc]
    return e.value


async def test_a_captioner_added_while_serving_is_served_without_a_restart(
        tiny_repo: Path, caption_repo: Path, tmp_path: Path) -> None:  # noqa: F811
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo / "speech_ctc", repo / "speech_ctc")  # speech only: no captioner, no diagnosis
    server = await start_server(ServerConfig(repo=repo, port=0, intra_op_threads=1, max_queue_delay_ms=5.0,
                                             poll_repository_s=0.1, retire_after_s=0.1))
    image = caption_pb2.CaptionRequest(image=picture_bytes("red"))
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def status(service: str) -> int:
                return (await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status

            watch = health.Watch(health_pb2.HealthCheckRequest(service="nui.v1.Captioner"))
            assert (await watch.read()).status == NOT_SERVING
            for service, expected in (("", SERVING), ("nui.v1.Speech", SERVING), ("inference.GRPCInferenceService",
                                      SERVING), ("nvidia.riva.asr.RivaSpeechRecognition", SERVING),
                                      ("nui.v1.Captioner", NOT_SERVING), ("nui.v1.Diagnosis", NOT_SERVING)):
                assert await status(service) == expected, service

            captioner = caption_pb2_grpc.CaptionerStub(channel)
            refused = await _refused(captioner.Caption(image, timeout=10))
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
            assert "'captioner'" in refused.details() and str(repo) in refused.details()
            refused = await _refused(diagnosis_pb2_grpc.DiagnosisStub(channel).Diagnose(
                diagnosis_pb2.DiagnoseRequest(), timeout=10))
            assert refused.code() == grpc.StatusCode.UNAVAILABLE and "'diagnosis'" in refused.details()
            stream = speech_pb2_grpc.SpeechStub(channel).StreamingRecognize(
                iter([speech_pb2.StreamingRecognizeRequest(config=speech_pb2.RecognitionConfig())]), timeout=10)
            refused = await _refused(stream.read())
            assert refused.code() == grpc.StatusCode.UNAVAILABLE and "speech_ctc_streaming" in refused.details()

            # an export publishes a version folder at once (staged, then renamed); polling finds it
            staging = tmp_path / "staging"
            shutil.copytree(caption_repo / "captioner", staging)
            os.rename(staging, repo / "captioner")
            assert (await asyncio.wait_for(watch.read(), timeout=60)).status == SERVING
            assert 1 in server.captioner["captioner"]  # loaded and warmed up before health said so
            reply = await captioner.Caption(image, timeout=30)
            assert reply.captions[0].text == CAPTIONS["red"] and (reply.model, reply.model_version) == ("captioner", 1)

            unload = channel.unary_unary("/inference.GRPCInferenceService/RepositoryModelUnload",
                                         request_serializer=kserve_pb2.RepositoryModelUnloadRequest.SerializeToString,
                                         response_deserializer=kserve_pb2.RepositoryModelUnloadResponse.FromString)
            await unload(kserve_pb2.RepositoryModelUnloadRequest(model_name="captioner"), timeout=10)
            assert (await asyncio.wait_for(watch.read(), timeout=10)).status == NOT_SERVING
            await wait_until(lambda: not server.captioner, timeout_s=10)
            refused = await _refused(captioner.Caption(image, timeout=10))
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
            assert await status("nui.v1.Speech") == SERVING  # the other services are untouched
            watch.cancel()
    finally:
        await server.stop(0)


async def test_an_empty_repository_starts_a_server_that_serves_what_is_copied_in(
        tiny_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    server = await start_server(ServerConfig(repo=repo, port=0, intra_op_threads=1, poll_repository_s=0.1))
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service="nui.v1.Speech"))
            assert (await watch.read()).status == NOT_SERVING
            speech = speech_pb2_grpc.SpeechStub(channel)
            request = speech_pb2.RecognizeRequest(audio=encode(make_clip(1.0, seed=1)))
            refused = await _refused(speech.Recognize(request, timeout=10))
            assert refused.code() == grpc.StatusCode.UNAVAILABLE and "'speech_ctc'" in refused.details()
            staging = tmp_path / "staging"
            shutil.copytree(tiny_repo / "speech_ctc", staging)
            os.rename(staging, repo / "speech_ctc")
            assert (await asyncio.wait_for(watch.read(), timeout=60)).status == SERVING
            reply = await speech.Recognize(request, timeout=30)
            assert (reply.model, reply.model_version) == ("speech_ctc", 1)
            watch.cancel()
    finally:
        await server.stop(0)
    with pytest.raises(ValueError, match="does not exist"):
        await start_server(ServerConfig(repo=tmp_path / "missing", port=0))

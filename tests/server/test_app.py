"""Server app: health, reflection, start-up checks, graceful shutdown, and `nui serve` as a process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from engines.manifest import MANIFEST_NAME
from proto import speech_pb2, speech_pb2_grpc
from server.app import ServerConfig, start_server
from server.repository import describe, load_speech_models
from tests.server.conftest import ROOT, Models, StartServer
from tests.server.helpers import wait_until, wrap_models


async def test_health_reports_serving(start: StartServer) -> None:
    server = await start()
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "nui.v1.Speech"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_services(start: StartServer) -> None:
    server = await start()
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = [s.name async for reply in call for s in reply.list_services_response.service]
    assert {"nui.v1.Speech", "grpc.health.v1.Health"} <= set(names)


async def test_binds_loopback_and_reports_the_port(start: StartServer) -> None:
    server = await start()
    assert server.host == "127.0.0.1" and server.port > 0 and server.address == f"127.0.0.1:{server.port}"
    with pytest.raises(OSError, match="cannot listen"):
        await start(port=server.port)  # taken: fails, is not silently shared


async def test_graceful_stop_finishes_in_flight_calls(start: StartServer, tiny_models: Models,
                                                      clips: list[bytes]) -> None:
    server = await start(models=wrap_models(tiny_models, delay_s=0.3), max_batch_size=1, max_queue_delay_ms=0)
    batcher = server.served["speech_ctc"][1].batcher
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = speech_pb2_grpc.SpeechStub(channel)
        calls = [asyncio.ensure_future(stub.Recognize(speech_pb2.RecognizeRequest(audio=c), timeout=10))
                 for c in clips[:3]]
        await wait_until(lambda: batcher.stats.runs == 1 and batcher.queue_size == 2)  # 1 running, 2 queued
        await server.stop(grace_s=5)
        replies = await asyncio.gather(*calls)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Recognize(speech_pb2.RecognizeRequest(audio=clips[0]), timeout=2)
    assert all(r.results[0].alternatives for r in replies)
    assert batcher.stats.runs == 3
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_load_repository_checks(tiny_repo: Path, tmp_path: Path) -> None:
    assert describe(load_speech_models(tiny_repo, 1)) == "speech_ctc v1"
    with pytest.raises(ValueError, match="does not exist"):
        load_speech_models(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds no speech_ctc model"):
        load_speech_models(tmp_path)
    # another task's model is skipped, a tampered manifest fails start-up
    for name, task in (("captioner", "captioner"), ("speech_ctc", "speech_ctc")):
        dst = tmp_path / name / "1"
        dst.mkdir(parents=True)
        for f in (tiny_repo / "speech_ctc" / "1").iterdir():
            (dst / f.name).write_bytes(f.read_bytes())
        manifest = json.loads((dst / MANIFEST_NAME).read_text())
        manifest.update(model=name, task=task)
        (dst / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert describe(load_speech_models(tmp_path, 1)) == "speech_ctc v1"
    (tmp_path / "speech_ctc" / "1" / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="does not match the manifest"):
        load_speech_models(tmp_path)


async def test_start_fails_fast_on_a_bad_repository(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        await start_server(ServerConfig(repo=tmp_path / "none", port=0))


def test_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="port"):
        ServerConfig(repo=tmp_path, port=70000)
    with pytest.raises(ValueError, match="stream_lm_lookahead_s"):
        ServerConfig(repo=tmp_path, stream_lm_lookahead_s=-0.5)


def test_nui_serve_process_starts_and_stops_on_sigterm(tiny_repo: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.main", "--repo", str(tiny_repo), "--port", "0",
         "--intra-op-threads", "1", "--log-level", "WARNING"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line + (proc.stderr.read() if proc.stderr else "")
        address = line.split()[-1]
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_nui_serve_reports_a_missing_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from server.main import main

    assert main(["--repo", str(tmp_path / "none"), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nui serve: error: model repository") and "Traceback" not in err

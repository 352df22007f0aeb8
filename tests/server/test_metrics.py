"""Production behaviour of a real server on port 0: Prometheus metrics, health during warm-up, load
shedding and deadlines as Triton clients see them, JSON logs without content."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from proto import kserve_pb2, speech_pb2, speech_pb2_grpc
from server.app import ServerConfig, start_server
from server.kserve import SERVICE_NAME as KSERVE
from server.logs import JsonFormatter
from tests.server.conftest import Models, StartServer
from tests.server.helpers import make_clip, wait_until, wrap_models


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape_until(port: int, name: str, **labels: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Scrape until `name{labels}` shows: an aborted call's status reaches the client a moment before the
    server's interceptor counts it."""
    deadline = time.monotonic() + 5
    while True:
        samples = scrape(port)
        if sample(samples, name, **labels) or time.monotonic() > deadline:
            return samples
        time.sleep(0.02)


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def infer_request(seconds: float, seed: int) -> kserve_pb2.ModelInferRequest:
    wave = make_clip(seconds, seed=seed)
    T = kserve_pb2.ModelInferRequest.InferInputTensor
    return kserve_pb2.ModelInferRequest(
        model_name="speech_ctc", inputs=[T(name="audio", datatype="FP32", shape=[1, len(wave)]),
                                         T(name="audio_lengths", datatype="INT64", shape=[1])],
        raw_input_contents=[wave.tobytes(), np.array([len(wave)], np.int64).tobytes()])


def infer_call(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(f"/{KSERVE}/ModelInfer",
                               request_serializer=kserve_pb2.ModelInferRequest.SerializeToString,
                               response_deserializer=kserve_pb2.ModelInferResponse.FromString)


async def test_metrics_count_requests_batches_and_models(start: StartServer, clips: list[bytes]) -> None:
    server = await start(metrics_port=0, max_queue_delay_ms=50)
    assert server.metrics_port is not None and server.metrics is not None
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = speech_pb2_grpc.SpeechStub(channel)
        await asyncio.gather(*(stub.Recognize(speech_pb2.RecognizeRequest(audio=c), timeout=20) for c in clips[:4]))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Recognize(speech_pb2.RecognizeRequest(audio=b"not audio"), timeout=5)
        await infer_call(channel)(infer_request(0.5, 1), timeout=10)
    with server.metrics.stream("nui.v1.Speech"):
        during = await asyncio.to_thread(scrape, server.metrics_port)
    after = await asyncio.to_thread(scrape_until, server.metrics_port, "nui_requests_total",
                                    service="nui.v1.Speech", method="Recognize", code="INVALID_ARGUMENT")
    stats = server.served["speech_ctc"][1].batcher.stats
    model = {"model": "speech_ctc", "version": "1"}
    assert sample(after, "nui_requests_total", service="nui.v1.Speech", method="Recognize", code="OK") == 4
    assert sample(after, "nui_requests_total", service="nui.v1.Speech", method="Recognize",
                  code="INVALID_ARGUMENT") == 1
    assert sample(after, "nui_requests_total", service=KSERVE, method="ModelInfer", code="OK") == 1
    assert sample(after, "nui_request_duration_seconds_count", service="nui.v1.Speech", method="Recognize") == 5
    assert sample(after, "nui_batch_size_count", **model) == stats.runs < 5
    assert sample(after, "nui_batch_size_sum", **model) == 5  # 4 utterances + 1 tensor request
    assert sample(after, "nui_queue_duration_seconds_count", **model) == 5
    assert sample(after, "nui_compute_duration_seconds_sum", **model) > 0
    assert sample(after, "nui_queue_depth", **model) == 0
    assert sample(after, "nui_model_info", task="speech_ctc", precision="fp32", engine="onnxruntime", **model) == 1
    assert sample(after, "nui_server_ready") == 1
    assert sample(during, "nui_streams_in_flight", service="nui.v1.Speech") == 1
    assert sample(after, "nui_streams_in_flight", service="nui.v1.Speech") == 0


async def test_metrics_port_is_off_by_default(start: StartServer) -> None:
    server = await start()
    assert server.metrics_port is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_health_is_not_serving_until_warmed_up(tiny_repo: Path, tiny_models: Models) -> None:
    """The port answers during warm-up: health NOT_SERVING, KServe live but not ready; SERVING after."""
    port = free_port()
    config = ServerConfig(repo=tiny_repo, port=port, intra_op_threads=1)
    starting = asyncio.ensure_future(start_server(config, wrap_models(tiny_models, delay_s=3.0)))
    seen: list[int] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        ready = channel.unary_unary(f"/{KSERVE}/ServerReady",
                                    request_serializer=kserve_pb2.ServerReadyRequest.SerializeToString,
                                    response_deserializer=kserve_pb2.ServerReadyResponse.FromString)
        readiness = []
        while not starting.done():
            try:
                for service in ("", "nui.v1.Speech", KSERVE):
                    reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                    seen.append(reply.status)
                readiness.append((await ready(kserve_pb2.ServerReadyRequest(), timeout=1)).ready)
            except grpc.aio.AioRpcError:
                pass  # not listening yet
            await asyncio.sleep(0.05)
        server = await starting
        try:
            after = await health.Check(health_pb2.HealthCheckRequest(service="nui.v1.Speech"), timeout=5)
            assert after.status == health_pb2.HealthCheckResponse.SERVING
            assert (await ready(kserve_pb2.ServerReadyRequest(), timeout=5)).ready
        finally:
            await server.stop(0)
    # NOT_SERVING through the warm-up; the last polls may already see SERVING (set just before
    # start_server returns), and it never goes back.
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    first = seen.index(serving) if serving in seen else len(seen)
    assert first >= 3 and set(seen[:first]) == {not_serving} and set(seen[first:]) <= {serving}
    assert readiness and not readiness[0] and readiness == sorted(readiness)


async def test_triton_clients_are_shed_and_deadlines_honoured(start: StartServer, tiny_models: Models) -> None:
    """Bounded queue -> RESOURCE_EXHAUSTED; an expired ModelInfer never reaches the engine."""
    server = await start(models=wrap_models(tiny_models, delay_s=0.5), max_batch_size=1, max_queue_delay_ms=0,
                         max_queue_size=1)
    batcher = server.served["speech_ctc"][1].batcher
    async with grpc.aio.insecure_channel(server.address) as channel:
        infer = infer_call(channel)
        running = asyncio.ensure_future(infer(infer_request(0.3, 1), timeout=10))
        await wait_until(lambda: batcher.stats.runs == 1)
        with pytest.raises(grpc.aio.AioRpcError) as expired:
            await infer(infer_request(0.3, 2), timeout=0.2)
        queued = asyncio.ensure_future(infer(infer_request(0.3, 3), timeout=10))
        await wait_until(lambda: batcher.queue_size == 1)
        with pytest.raises(grpc.aio.AioRpcError) as shed:
            await infer(infer_request(0.3, 4), timeout=10)
        await asyncio.gather(running, queued)
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert shed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert batcher.stats.runs == 2 and batcher.stats.rejected_queue_full == 1


async def test_json_logs_carry_no_content(start: StartServer, clips: list[bytes],
                                          caplog: pytest.LogCaptureFixture) -> None:
    server = await start()
    caplog.set_level(logging.DEBUG)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = speech_pb2_grpc.SpeechStub(channel)
        reply = await stub.Recognize(speech_pb2.RecognizeRequest(audio=clips[0], request_id="req-42"), timeout=20)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Recognize(speech_pb2.RecognizeRequest(audio=clips[1][:60], request_id="req-43"), timeout=20)
        await infer_call(channel)(infer_request(0.4, 5), timeout=10)
    formatter = JsonFormatter()
    lines = [json.loads(formatter.format(r)) for r in caplog.records]
    access = [line["rpc"] for line in lines if line["logger"] == "server.access"]
    assert {(a["method"], a["code"]) for a in access} >= {("Recognize", "OK"), ("Recognize", "INVALID_ARGUMENT"),
                                                          ("ModelInfer", "OK")}
    assert all(isinstance(a["duration_ms"], float) for a in access)
    text = "\n".join(json.dumps(line) for line in lines)
    assert "req-43" in text  # ids are logged ...
    transcript = reply.results[0].alternatives[0].transcript
    for secret in ([transcript] if len(transcript) >= 4 else []) + [clips[1][44:60].hex(), repr(clips[1][44:60])]:
        assert secret not in text  # ... content is not


def test_nui_serve_flags_for_production(tiny_repo: Path, tmp_path: Path) -> None:
    """`nui serve` as a process: metrics port, token file, JSON log lines on stderr."""
    import os
    import signal
    import subprocess
    import sys

    from tests.server.conftest import ROOT

    token = tmp_path / "token.txt"
    token.write_text("tok-123\n")
    metrics_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.main", "--repo", str(tiny_repo), "--port", "0", "--intra-op-threads", "1",
         "--metrics-port", str(metrics_port), "--auth-token-file", str(token), "--log-format", "json",
         "--poll-repository-s", "1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None and proc.stderr is not None
        listening = proc.stdout.readline()
        assert listening.startswith("listening on 127.0.0.1:"), listening
        assert proc.stdout.readline().strip() == f"metrics on 127.0.0.1:{metrics_port}"
        address = listening.split()[-1]
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            stub = speech_pb2_grpc.SpeechStub(channel)
            with pytest.raises(grpc.RpcError) as e:
                stub.Recognize(speech_pb2.RecognizeRequest(audio=b"x"), timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        samples = scrape_until(metrics_port, "nui_requests_total", service="nui.v1.Speech", method="Recognize",
                               code="UNAUTHENTICATED")
        assert sample(samples, "nui_requests_total", service="nui.v1.Speech", method="Recognize",
                      code="UNAUTHENTICATED") == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        lines = [json.loads(line) for line in proc.stderr.read().splitlines() if line.strip()]
        assert lines and all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
        assert any(line.get("rpc", {}).get("code") == "UNAUTHENTICATED" for line in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_token_file_must_hold_a_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from server.main import main

    (tmp_path / "empty").write_text("\n")
    assert main(["--repo", str(tmp_path), "--auth-token-file", str(tmp_path / "empty")]) == 1
    assert "is empty" in capsys.readouterr().err

"""The gRPC server: every model of a repository behind `nui.v1.Speech` and `nui.v1.Diagnosis` (when the
repository holds a diagnosis model), with health and reflection.

    nui serve --repo model_repository --port 50051          # see server/main.py
    grpcurl -plaintext 127.0.0.1:50051 list                  # reflection
    grpcurl -plaintext 127.0.0.1:50051 grpc.health.v1.Health/Check

Start-up loads every model version (checksums verified; a mismatch fails start-up), creates one
dynamic batcher per model version, and only then reports SERVING. SIGINT/SIGTERM: health goes
NOT_SERVING, new calls are refused, in-flight calls get `shutdown_grace_s` to finish, then the batchers
drain. Binds 127.0.0.1 unless told otherwise; port 0 picks a free port (`SpeechServer.port`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from proto import diagnosis_pb2, diagnosis_pb2_grpc, speech_pb2, speech_pb2_grpc
from server.audio import AudioLimits
from server.batcher import DynamicBatcher
from server.diagnosis import Case, DiagnosisResult, DiagnosisServingModel
from server.diagnosis_service import DiagnosisServicer, ServedDiagnosisModel
from server.repository import describe, load_models
from server.speech_ctc import Recognition, SpeechCTCModel, Utterance
from server.speech_service import ServedModel, SpeechServicer

logger = logging.getLogger(__name__)

SPEECH_SERVICE = speech_pb2.DESCRIPTOR.services_by_name["Speech"].full_name  # "nui.v1.Speech"
DIAGNOSIS_SERVICE = diagnosis_pb2.DESCRIPTOR.services_by_name["Diagnosis"].full_name  # "nui.v1.Diagnosis"


@dataclass(frozen=True)
class ServerConfig:
    repo: Path
    host: str = "127.0.0.1"
    port: int = 50051  # 0: any free port
    max_batch_size: int = 16
    max_queue_delay_ms: float = 5.0  # how long a batch waits for more items after its first
    max_queue_size: int = 256  # per model version; beyond it calls fail with RESOURCE_EXHAUSTED
    max_audio_s: float = 60.0
    max_message_bytes: int = 32 * 1024 * 1024  # 60 s of 48 kHz stereo float WAV is ~23 MB
    intra_op_threads: int | None = None  # ONNX Runtime threads per run; None: all cores, at most 4
    shutdown_grace_s: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be at least 1024, got {self.max_message_bytes}")
        if self.shutdown_grace_s < 0:
            raise ValueError(f"shutdown_grace_s must be >= 0, got {self.shutdown_grace_s}")


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class SpeechServer:
    """A started server; `stop()` shuts it down gracefully."""

    def __init__(self, server: grpc.aio.Server, host: str, port: int,
                 served: dict[str, dict[int, ServedModel]],
                 health_servicer: health.aio.HealthServicer,
                 diagnosis: dict[str, dict[int, ServedDiagnosisModel]] | None = None) -> None:
        self.server = server
        self.host = host
        self.port = port
        self.served = served
        self.diagnosis = diagnosis or {}
        self.health = health_servicer

    @property
    def address(self) -> str:
        return host_port(self.host, self.port)

    async def stop(self, grace_s: float = 10.0) -> None:
        """NOT_SERVING, refuse new calls, let in-flight ones finish (up to grace_s), drain the batchers."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        batchers: list[DynamicBatcher] = [s.batcher for vs in self.served.values() for s in vs.values()]
        batchers += [s.batcher for vs in self.diagnosis.values() for s in vs.values()]
        await asyncio.gather(*(b.close() for b in batchers))
        logger.info("server on %s stopped", self.address)


def _serve_model(model: SpeechCTCModel, config: ServerConfig) -> ServedModel:
    batcher: DynamicBatcher[Utterance, Recognition] = DynamicBatcher(
        model.run_batch, config.max_batch_size, config.max_queue_delay_ms, config.max_queue_size,
        name=f"{model.name}-v{model.version}")
    return ServedModel(model, batcher)


def _serve_diagnosis(model: DiagnosisServingModel, config: ServerConfig) -> ServedDiagnosisModel:
    batcher: DynamicBatcher[Case, DiagnosisResult] = DynamicBatcher(
        model.run_batch, config.max_batch_size, config.max_queue_delay_ms, config.max_queue_size,
        name=f"{model.name}-v{model.version}")
    return ServedDiagnosisModel(model, batcher)


@dataclass
class ServingContext:
    """What a service registration gets: the config and the served models, {name: {version: served}}.

    The dicts are shared with the servicers and may be changed in place while serving (model reload)."""

    config: ServerConfig
    speech: dict[str, dict[int, ServedModel]]
    diagnosis: dict[str, dict[int, ServedDiagnosisModel]]


# A service registration adds its servicer to the server when it has something to serve and returns the
# full names of the services it added (health reports each, reflection lists each); [] when skipped.
ServiceRegistration = Callable[[grpc.aio.Server, ServingContext], list[str]]


def _register_speech(server: grpc.aio.Server, ctx: ServingContext) -> list[str]:
    limits = AudioLimits(max_duration_s=ctx.config.max_audio_s)
    speech_pb2_grpc.add_SpeechServicer_to_server(SpeechServicer(ctx.speech, limits), server)
    return [SPEECH_SERVICE]


def _register_diagnosis(server: grpc.aio.Server, ctx: ServingContext) -> list[str]:
    if not ctx.diagnosis:
        return []
    diagnosis_pb2_grpc.add_DiagnosisServicer_to_server(DiagnosisServicer(ctx.diagnosis), server)
    return [DIAGNOSIS_SERVICE]


# Every service the server offers, one registration each (add yours here).
SERVICES: list[ServiceRegistration] = [
    _register_speech,
    _register_diagnosis,
]


async def start_server(config: ServerConfig, models: dict[str, dict[int, SpeechCTCModel]] | None = None,
                       diagnosis_models: dict[str, dict[int, DiagnosisServingModel]] | None = None
                       ) -> SpeechServer:
    """Load the repository (or use `models` / `diagnosis_models`, already loaded: then only those are
    served), bind, register every service of SERVICES, start, report SERVING."""
    if models is None and diagnosis_models is None:
        models, diagnosis_models = await asyncio.to_thread(load_models, config.repo, config.intra_op_threads)
    models = models or {}
    diagnosis_models = diagnosis_models or {}
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),  # a port in use must fail, not be silently shared
    ])
    try:
        port = server.add_insecure_port(host_port(config.host, config.port))
    except RuntimeError as e:
        raise OSError(f"cannot listen on {host_port(config.host, config.port)}: {e}") from e
    ctx = ServingContext(
        config,
        speech={name: {v: _serve_model(m, config) for v, m in versions.items()}
                for name, versions in models.items()},
        diagnosis={name: {v: _serve_diagnosis(m, config) for v, m in versions.items()}
                   for name, versions in diagnosis_models.items()})
    model_services = [name for register in SERVICES for name in register(server, ctx)]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    services = [*model_services, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(services, server)
    await server.start()
    for service in ("", *model_services):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    running = SpeechServer(server, config.host, port, ctx.speech, health_servicer, ctx.diagnosis)
    logger.info("serving %s on %s (max batch %d, max queue delay %g ms)",
                describe({**models, **diagnosis_models}), running.address, config.max_batch_size,
                config.max_queue_delay_ms)
    return running


async def serve(config: ServerConfig, on_ready: Callable[[SpeechServer], None] | None = None) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully. Call from the main thread."""
    running = await start_server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if on_ready is not None:
        on_ready(running)
    try:
        await stop.wait()
        logger.info("shutting down (grace %g s)", config.shutdown_grace_s)
    finally:
        await running.stop(config.shutdown_grace_s)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

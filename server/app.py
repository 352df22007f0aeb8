"""The gRPC server: every model of a repository behind nui's APIs (`nui.v1.Speech`, `nui.v1.Diagnosis`,
`nui.v1.Captioner`), KServe v2 / Triton and Riva ASR, with health and reflection.

    nui serve --repo model_repository --port 50051          # see server/main.py
    grpcurl -plaintext 127.0.0.1:50051 list                  # reflection
    grpcurl -plaintext 127.0.0.1:50051 grpc.health.v1.Health/Check

Start-up loads every model version of every task through the model store (server/model_store.py: checksums
verified, a mismatch fails start-up; every engine on the configured ONNX Runtime execution provider, a
provider this onnxruntime build lacks fails start-up naming what it has), creates the batchers of each
version, warms each up, and only then reports SERVING. Every service is registered whatever the repository
holds; a service's methods answer UNAVAILABLE and its health is NOT_SERVING while no model of theirs is
loaded, so a model added later is served without a restart (server/availability.py). Reflection describes
every service under its wire name (server/reflection.py). SIGINT/SIGTERM: health goes
NOT_SERVING, new calls are refused, in-flight calls get `shutdown_grace_s` to finish, then the batchers
drain. Binds 127.0.0.1 unless told otherwise; port 0 picks a free port (`SpeechServer.port`).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from engines.engine import PROVIDERS, resolve_providers
from proto import caption_pb2_grpc, diagnosis_pb2, diagnosis_pb2_grpc, speech_pb2, speech_pb2_grpc
from server.audio import AudioLimits
from server.availability import Availability, ModelGate, Needs
from server.batcher import DynamicBatcher
from server.caption_service import SERVICE as CAPTIONER_SERVICE
from server.caption_service import CaptionServicer
from server.captioner import TASK as CAPTIONER_TASK
from server.captioner import CaptionerModel, ImageLimits, ServedCaptioner
from server.diagnosis import TASK as DIAGNOSIS_TASK
from server.diagnosis import DiagnosisServingModel
from server.diagnosis_service import DiagnosisServicer, ServedDiagnosisModel
from server.interceptors import ServingInterceptor
from server.kserve import SERVICE_NAME as KSERVE_SERVICE
from server.kserve import KServeLimits, KServeServicer, add_kserve_servicer_to_server
from server.metrics import ServerMetrics
from server.model_store import TASKS, BatchSettings, Models, ModelStore, load_repository
from server.reflection import enable_reflection
from server.repository import describe
from server.riva import RIVA_SERVICE, RivaASRServicer, add_riva_servicer
from server.speech_ctc import TASK as SPEECH_TASK
from server.speech_ctc import SpeechCTCModel
from server.speech_service import ServedModel
from server.stream_pieces import PieceOptions
from server.streaming import TASK as STREAMING_TASK
from server.streaming import ServedStreamingModel, StreamingModel, StreamLimits, StreamTracker
from server.streaming_service import StreamingRecognizer, StreamingSpeechServicer
from server.tensor_batch import elements_limit

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
    max_queue_wait_ms: float | None = 25.0  # so do calls predicted to wait longer (speech, diagnosis); None: off
    max_audio_s: float = 60.0
    max_message_bytes: int = 32 * 1024 * 1024  # 60 s of 48 kHz stereo float WAV is ~23 MB
    intra_op_threads: int | None = None  # ONNX Runtime threads per run; None: all cores, at most 4
    provider: str = "cpu"  # ONNX Runtime execution provider of every model: cpu, cuda or tensorrt
    decode_workers: int = 0  # beam + LM decoding processes per speech version (0: in the server's threads)
    shutdown_grace_s: float = 10.0
    metrics_port: int | None = None  # Prometheus /metrics on host:port; 0: any free port; None: off
    auth_token: str | None = None  # calls need `authorization: Bearer <token>` (health stays open)
    tls_cert: Path | None = None  # PEM certificate chain and key: TLS instead of plaintext
    tls_key: Path | None = None
    keepalive_time_s: float = 60.0  # server pings an idle connection this often
    keepalive_timeout_s: float = 20.0  # and closes it when the ping is not answered in time
    min_client_ping_interval_s: float = 10.0  # clients pinging more often get GOAWAY (too_many_pings)
    poll_repository_s: float = 0.0  # > 0: load new / retire removed versions every so often
    retire_after_s: float = 5.0  # a replaced version keeps serving late lookups this long, then drains
    max_streams: int = 256  # open StreamingRecognize calls (every API); beyond: RESOURCE_EXHAUSTED
    max_stream_s: float = 300.0  # audio in one stream; beyond: OUT_OF_RANGE
    stream_idle_s: float = 30.0  # a stream with no message this long ends with OUT_OF_RANGE
    stream_lm_lookahead_s: float = 1.0  # streaming LM finals: words commit with this much audio after them

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be at least 1024, got {self.max_message_bytes}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in 0..65535, got {self.metrics_port}")
        if self.auth_token is not None and (not self.auth_token or not self.auth_token.isprintable()):
            raise ValueError("auth_token must be a non-empty printable string")
        if min(self.keepalive_time_s, self.keepalive_timeout_s, self.min_client_ping_interval_s) <= 0:
            raise ValueError("keepalive times must be > 0")
        if self.max_streams < 1 or self.max_stream_s <= 0 or self.stream_idle_s <= 0:
            raise ValueError("max_streams, max_stream_s and stream_idle_s must be positive")
        if self.poll_repository_s < 0 or self.retire_after_s < 0 or self.stream_lm_lookahead_s < 0:
            raise ValueError("poll_repository_s, retire_after_s and stream_lm_lookahead_s must be >= 0")
        if self.max_queue_wait_ms is not None and self.max_queue_wait_ms <= 0:
            raise ValueError(f"max_queue_wait_ms must be > 0 (None: off), got {self.max_queue_wait_ms}")
        if self.shutdown_grace_s < 0:
            raise ValueError(f"shutdown_grace_s must be >= 0, got {self.shutdown_grace_s}")
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {sorted(PROVIDERS)}, got {self.provider!r}")


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class SpeechServer:
    """A started server; `stop()` shuts it down gracefully."""

    def __init__(self, server: grpc.aio.Server, host: str, port: int,
                 served: dict[str, dict[int, ServedModel]],
                 health_servicer: health.aio.HealthServicer,
                 diagnosis: dict[str, dict[int, ServedDiagnosisModel]] | None = None,
                 store: ModelStore | None = None, metrics: ServerMetrics | None = None,
                 metrics_port: int | None = None) -> None:
        self.server = server
        self.host = host
        self.port = port
        self.served = served
        self.diagnosis = diagnosis or {}
        self.health = health_servicer
        self.store = store
        self.metrics = metrics
        self.metrics_port = metrics_port  # None: not exposed
        self.background: list[asyncio.Task[None]] = []  # repository polling
        self.streaming: dict[str, dict[int, ServedStreamingModel]] = {}
        self.streams = StreamTracker()  # `streams.in_flight`: open streaming calls, every API
        self.captioner: dict[str, dict[int, ServedCaptioner]] = {}

    @property
    def address(self) -> str:
        return host_port(self.host, self.port)

    async def stop(self, grace_s: float = 10.0) -> None:
        """NOT_SERVING, refuse new calls, let in-flight ones finish (up to grace_s), drain the batchers."""
        await self.health.enter_graceful_shutdown()
        for task in self.background:
            task.cancel()
        await self.server.stop(grace_s)
        if self.store is not None:
            await self.store.close()
        else:
            batchers: list[DynamicBatcher] = [s.batcher for vs in self.served.values() for s in vs.values()]
            batchers += [s.batcher for vs in self.diagnosis.values() for s in vs.values()]
            await asyncio.gather(*(b.close() for b in batchers))
        if self.metrics is not None:
            self.metrics.stop_http()
        logger.info("server on %s stopped", self.address)


@dataclass
class ServingContext:
    """What a service registration gets: the config and the served models, {name: {version: served}}.

    The dicts are the model store's tables, shared with the servicers and changed in place while
    serving (model reload, load, unload)."""

    config: ServerConfig
    metrics: ServerMetrics  # e.g. `with ctx.metrics.stream(SERVICE):` around a streaming call
    store: ModelStore
    ready: bool = False  # every model loaded and warmed up (health SERVING from then on)
    streams: StreamTracker = field(default_factory=StreamTracker)

    @property
    def speech(self) -> dict[str, dict[int, ServedModel]]:
        return self.store.tables[SPEECH_TASK]

    @property
    def diagnosis(self) -> dict[str, dict[int, ServedDiagnosisModel]]:
        return self.store.tables[DIAGNOSIS_TASK]

    @property
    def streaming(self) -> dict[str, dict[int, ServedStreamingModel]]:
        return self.store.tables[STREAMING_TASK]

    @property
    def captioner(self) -> dict[str, dict[int, ServedCaptioner]]:
        return self.store.tables[CAPTIONER_TASK]


def _streaming(ctx: ServingContext, service: str) -> StreamingRecognizer:
    limits = StreamLimits(max_stream_s=ctx.config.max_stream_s, max_idle_s=ctx.config.stream_idle_s,
                          pieces=PieceOptions(lookahead_s=ctx.config.stream_lm_lookahead_s))
    return StreamingRecognizer(ctx.streaming, limits, ctx.streams, lambda: ctx.metrics.stream(service))


# A service registration adds its servicer to the server, whatever models are loaded (grpc cannot add a
# service to a running server), and returns {full service name: the models its methods need} (health
# reports each service, reflection describes each, server/availability.py gates each method).
ServiceRegistration = Callable[[grpc.aio.Server, ServingContext], dict[str, Needs]]
_SPEECH_NEEDS = Needs({"Recognize": SPEECH_TASK, "StreamingRecognize": STREAMING_TASK})


def _register_speech(server: grpc.aio.Server, ctx: ServingContext) -> dict[str, Needs]:
    limits = AudioLimits(max_duration_s=ctx.config.max_audio_s)
    servicer = StreamingSpeechServicer(ctx.speech, limits, _streaming(ctx, SPEECH_SERVICE))
    speech_pb2_grpc.add_SpeechServicer_to_server(servicer, server)
    return {SPEECH_SERVICE: _SPEECH_NEEDS}


def _register_riva(server: grpc.aio.Server, ctx: ServingContext) -> dict[str, Needs]:
    limits = AudioLimits(max_duration_s=ctx.config.max_audio_s)
    servicer = RivaASRServicer(ctx.speech, limits, _streaming(ctx, RIVA_SERVICE))
    return {add_riva_servicer(servicer, server): _SPEECH_NEEDS}  # GetRivaSpeechRecognitionConfig: any time


def _register_diagnosis(server: grpc.aio.Server, ctx: ServingContext) -> dict[str, Needs]:
    diagnosis_pb2_grpc.add_DiagnosisServicer_to_server(DiagnosisServicer(ctx.diagnosis), server)
    return {DIAGNOSIS_SERVICE: Needs({"Diagnose": DIAGNOSIS_TASK})}


def _register_kserve(server: grpc.aio.Server, ctx: ServingContext) -> dict[str, Needs]:
    c = ctx.config
    limits = KServeLimits(c.max_batch_size, c.max_queue_delay_ms, elements_limit(c.max_message_bytes))
    servicer = KServeServicer(ctx.store.served, limits, lambda: ctx.ready, ctx.store, _version(),
                              tensor_models=ctx.store.tensor_served)
    add_kserve_servicer_to_server(servicer, server)
    # Its methods name their model (NOT_FOUND when it is not loaded); SERVING while any model is.
    return {KSERVE_SERVICE: Needs({}, serving_tasks=tuple(TASKS))}


def _register_captioner(server: grpc.aio.Server, ctx: ServingContext) -> dict[str, Needs]:
    caption_pb2_grpc.add_CaptionerServicer_to_server(CaptionServicer(ctx.captioner, ImageLimits()), server)
    return {CAPTIONER_SERVICE: Needs({"Caption": CAPTIONER_TASK})}


def _version() -> str:
    try:
        return importlib.metadata.version("nui")
    except importlib.metadata.PackageNotFoundError:
        return ""


# Every service the server offers, one registration each (add yours here).
SERVICES: list[ServiceRegistration] = [
    _register_speech,
    _register_diagnosis,
    _register_kserve,
    _register_riva,
    _register_captioner,
]


async def start_server(config: ServerConfig, models: dict[str, dict[int, SpeechCTCModel]] | None = None,
                       diagnosis_models: dict[str, dict[int, DiagnosisServingModel]] | None = None,
                       streaming_models: dict[str, dict[int, StreamingModel]] | None = None,
                       captioner_models: dict[str, dict[int, CaptionerModel]] | None = None) -> SpeechServer:
    """Load the repository (or use `models` / `diagnosis_models` / `streaming_models` / `captioner_models`,
    already loaded: then only those are served), bind, register every service of SERVICES, start, warm
    every model up, report SERVING. An empty repository starts a server that serves nothing yet (each
    service NOT_SERVING until a model for it loads). ValueError when the execution provider is missing from
    this ONNX Runtime build, the repository folder is missing or a version in it does not load."""
    resolve_providers(config.provider)  # before loading anything: name what this build has
    preloaded: dict[str, Models] = {SPEECH_TASK: models or {}, DIAGNOSIS_TASK: diagnosis_models or {},
                                    STREAMING_TASK: streaming_models or {}, CAPTIONER_TASK: captioner_models or {}}
    if models is None and diagnosis_models is None and streaming_models is None and captioner_models is None:
        preloaded = await asyncio.to_thread(load_repository, config.repo, intra_op_threads=config.intra_op_threads,
                                            provider=config.provider, require_any=False,
                                            decode_workers=config.decode_workers)
        if not any(preloaded.values()):
            logger.warning("model repository %s holds no model yet: every service answers UNAVAILABLE until one "
                           "is loaded (%s)", config.repo,
                           f"polled every {config.poll_repository_s:g} s" if config.poll_repository_s
                           else "RepositoryModelLoad, or --poll-repository-s")
    metrics = ServerMetrics()
    store = ModelStore(config.repo, BatchSettings(
        config.max_batch_size, config.max_queue_delay_ms, config.max_queue_size, config.intra_op_threads,
        config.provider, retire_after_s=config.retire_after_s, max_in_use_s=config.max_stream_s,
        max_queue_wait_ms=config.max_queue_wait_ms, decode_workers=config.decode_workers), metrics)
    store.add_loaded(preloaded)
    availability = Availability(config.repo, config.poll_repository_s, store.tables)
    server = grpc.aio.server(interceptors=[ServingInterceptor(metrics, config.auth_token), ModelGate(availability)],
                             options=_channel_options(config))
    address = host_port(config.host, config.port)
    try:
        if config.tls_cert is not None and config.tls_key is not None:
            credentials = grpc.ssl_server_credentials([(config.tls_key.read_bytes(), config.tls_cert.read_bytes())])
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as e:
        await store.close()
        raise OSError(f"cannot listen on {address}: {e}") from e
    ctx = ServingContext(config, metrics=metrics, store=store, streams=StreamTracker(config.max_streams))
    for register in SERVICES:
        for service, needs in register(server, ctx).items():
            availability.add(service, needs)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection([*availability.services, health.SERVICE_NAME], server)
    for service in ("", *availability.services):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    running = SpeechServer(server, config.host, port, ctx.speech, health_servicer, ctx.diagnosis, store, metrics)
    running.streaming, running.streams = ctx.streaming, ctx.streams
    running.captioner = ctx.captioner
    try:
        if config.metrics_port is not None:
            running.metrics_port = metrics.serve_http(config.host, config.metrics_port)
        await store.warm_up_all()
    except BaseException:
        await running.stop(0)
        raise
    ctx.ready = True
    metrics.ready.set(1)

    async def sync_health() -> None:  # at start-up and after every load/unload (the store's on_change)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        for service in availability.services:
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING if availability.serving(service)
                                      else health_pb2.HealthCheckResponse.NOT_SERVING)

    await sync_health()
    store.on_change = sync_health
    if config.poll_repository_s > 0:
        running.background.append(asyncio.get_running_loop().create_task(
            store.poll_forever(config.poll_repository_s), name="repository-poll"))
    logger.info("serving %s on %s%s (max batch %d, max queue delay %g ms, %s execution provider%s)",
                describe(store.served()), running.address, " (TLS)" if config.tls_cert else "",
                config.max_batch_size, config.max_queue_delay_ms, config.provider,
                f", metrics on port {running.metrics_port}" if running.metrics_port is not None else "")
    return running


def _channel_options(config: ServerConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),  # a port in use must fail, not be silently shared
        ("grpc.keepalive_time_ms", int(config.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", int(config.min_client_ping_interval_s * 1000)),
        ("grpc.http2.max_ping_strikes", 2),
    ]


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

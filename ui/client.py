"""The UI's thin gRPC client: the only way ui/ reaches models (speech, diagnosis, captions, status).

    client = NuiClient("127.0.0.1:50051")
    client.wait_ready(timeout_s=60)
    client.recognize(wav_bytes).text
    client.diagnose(evidence=[("HP:0001945", True)]).diseases

Plain dataclasses come back, never protobuf messages, and every failed call raises `NuiError` with a
readable message (status code name + the server's message, which names the field), never a gRPC
traceback. What the server offers is read from its reflection service (`services()`), so pages show
what exists instead of assuming it. Services whose stubs are not generated in this checkout (a newer
server than the client) count as absent.
"""

from __future__ import annotations

import importlib
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from proto import diagnosis_pb2, diagnosis_pb2_grpc, speech_pb2, speech_pb2_grpc

SPEECH_SERVICE = "nui.v1.Speech"
DIAGNOSIS_SERVICE = "nui.v1.Diagnosis"
CAPTION_SERVICE = "nui.v1.Captioner"


class NuiError(Exception):
    """A call the server (or the network) refused; `str(e)` is fit to show a person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


def _readable(e: grpc.RpcError, what: str) -> NuiError:
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = (e.details() if hasattr(e, "details") else "") or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return NuiError(code.name, f"{what}: the server is unavailable: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return NuiError(code.name, f"{what}: the server did not answer in time")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return NuiError(code.name, f"{what}: this server does not offer it")
    return NuiError(code.name, f"{what}: {details or code.name}")


def _optional_stubs(name: str) -> tuple[ModuleType, ModuleType] | None:
    """(messages, services) modules of proto/NAME.proto, or None when this checkout has no such stubs."""
    try:
        return importlib.import_module(f"proto.{name}_pb2"), importlib.import_module(f"proto.{name}_pb2_grpc")
    except ImportError:
        return None


@dataclass(frozen=True)
class Transcript:
    text: str
    confidence: float
    audio_duration_s: float
    model: str
    model_version: int
    is_final: bool = True


@dataclass(frozen=True)
class Disease:
    id: str
    name: str
    probability: float


@dataclass(frozen=True)
class Finding:
    symptom_id: str
    name: str
    present: bool


@dataclass(frozen=True)
class Question:
    symptom_id: str
    symptom_name: str
    text: str
    information_gain_bits: float


@dataclass(frozen=True)
class Diagnosis:
    diseases: list[Disease]
    findings: list[Finding]  # what the model used: history + this turn's evidence (+ understood text)
    question: Question | None
    notice: str
    model: str
    model_version: int
    understood: list[Finding] = field(default_factory=list)  # symptoms the server read in free text


@dataclass(frozen=True)
class Caption:
    text: str
    score: float


@dataclass(frozen=True)
class ServerStatus:
    serving: bool
    services: dict[str, str]  # service name -> health status name
    latency_ms: float  # one health round trip


class NuiClient:
    """A synchronous client over one channel (thread-safe: Gradio handlers run in worker threads)."""

    def __init__(self, target: str, timeout_s: float = 30.0, max_message_bytes: int = 32 * 1024 * 1024) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)])
        self._speech = speech_pb2_grpc.SpeechStub(self.channel)
        self._diagnosis = diagnosis_pb2_grpc.DiagnosisStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self._reflection = reflection_pb2_grpc.ServerReflectionStub(self.channel)
        self._caption_stubs = _optional_stubs("caption")

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> NuiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what the server offers -------------------------------------------------------------------
    def health(self, service: str = "") -> str:
        """Health status name of one service ("" = the whole server): SERVING, NOT_SERVING, ..."""
        try:
            response = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout_s)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return "UNKNOWN_SERVICE"
            raise _readable(e, "health check") from e
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until the server reports SERVING; NuiError after timeout_s."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                last = self.health()
                if last == "SERVING":
                    return
            except NuiError as e:
                last = str(e)
            time.sleep(0.2)
        raise NuiError("DEADLINE_EXCEEDED", f"server {self.target} not SERVING after {timeout_s:g} s ({last})")

    def services(self) -> list[str]:
        """Full names of the services the server lists through reflection."""
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        try:
            responses = self._reflection.ServerReflectionInfo(iter([request]), timeout=self.timeout_s)
            names = [s.name for r in responses for s in r.list_services_response.service]
        except grpc.RpcError as e:
            raise _readable(e, "listing services") from e
        return sorted(names)

    def status(self) -> ServerStatus:
        start = time.perf_counter()
        overall = self.health()
        latency_ms = (time.perf_counter() - start) * 1000
        names = [s for s in self.services() if not s.startswith("grpc.")]
        return ServerStatus(overall == "SERVING", {s: self.health(s) for s in names}, latency_ms)

    def offers(self, service: str) -> bool:
        """True when the server lists `service` and it is SERVING."""
        try:
            return service in self.services() and self.health(service) == "SERVING"
        except NuiError:
            return False

    # --- speech -----------------------------------------------------------------------------------
    def recognize(self, audio: bytes, request_id: str = "") -> Transcript:
        """Transcribe one clip (WAV/FLAC/OGG bytes)."""
        request = speech_pb2.RecognizeRequest(audio=audio, request_id=request_id or uuid.uuid4().hex[:16])
        try:
            response = self._speech.Recognize(request, timeout=self.timeout_s)
        except grpc.RpcError as e:
            raise _readable(e, "speech recognition") from e
        best = response.results[0].alternatives[0] if response.results and response.results[0].alternatives \
            else None
        return Transcript(best.transcript if best else "", best.confidence if best else 0.0,
                          response.audio_duration_s, response.model, response.model_version)

    def streaming_recognize(self, pcm_chunks: Iterator[bytes], sample_rate_hz: int,
                            timeout_s: float | None = None) -> Iterator[Transcript]:
        """Stream 16-bit mono PCM chunks to StreamingRecognize; yields interim and final transcripts
        as they arrive. UNAVAILABLE (as NuiError) when the server has no streaming model."""
        config = speech_pb2.RecognitionConfig(encoding=speech_pb2.LINEAR_PCM, sample_rate_hertz=sample_rate_hz,
                                              interim_results=True)

        def requests() -> Iterator[speech_pb2.StreamingRecognizeRequest]:
            yield speech_pb2.StreamingRecognizeRequest(config=config, request_id=uuid.uuid4().hex[:16])
            for chunk in pcm_chunks:
                if chunk:
                    yield speech_pb2.StreamingRecognizeRequest(audio=chunk)

        try:
            for response in self._speech.StreamingRecognize(requests(), timeout=timeout_s):
                for result in response.results:
                    if result.alternatives:
                        alt = result.alternatives[0]
                        yield Transcript(alt.transcript, alt.confidence, response.audio_processed_s, response.model,
                                         response.model_version, is_final=result.is_final)
        except grpc.RpcError as e:
            raise _readable(e, "live speech recognition") from e

    def has_streaming(self) -> bool:
        """True when the server can stream: an empty stream (config only) is answered without error."""
        try:
            for _ in self.streaming_recognize(iter(()), 16000, timeout_s=self.timeout_s):
                pass
        except NuiError:
            return False
        return True

    # --- diagnosis --------------------------------------------------------------------------------
    def diagnose(self, evidence: Sequence[tuple[str, bool]] = (), history: Sequence[tuple[str, bool]] = (),
                 text: str = "", top_k: int = 5) -> Diagnosis:
        """Rank diseases for findings (symptom id, present) and, when the server reads free text, `text`."""
        request = diagnosis_pb2.DiagnoseRequest(
            evidence=[diagnosis_pb2.Finding(symptom_id=s, present=p) for s, p in evidence],
            history=[diagnosis_pb2.Finding(symptom_id=s, present=p) for s, p in history],
            top_k=top_k, request_id=uuid.uuid4().hex[:16])
        if text:
            request.text = text
        try:
            response = self._diagnosis.Diagnose(request, timeout=self.timeout_s)
        except grpc.RpcError as e:
            raise _readable(e, "symptom checker") from e
        q = response.next_question if response.HasField("next_question") else None
        understood = [Finding(u.symptom_id, u.name, u.present) for u in response.understood if u.used]
        return Diagnosis(
            diseases=[Disease(d.disease_id, d.name, d.probability) for d in response.diseases],
            findings=[Finding(f.symptom_id, f.name, f.present) for f in response.findings],
            question=Question(q.symptom_id, q.symptom_name, q.text, q.expected_information_gain_bits) if q else None,
            notice=response.notice, model=response.model, model_version=response.model_version,
            understood=understood)

    def reads_free_text(self) -> bool:
        """True when the diagnosis service understands sentences: a probe sentence is answered (the
        server refuses text with FAILED_PRECONDITION when it has no free-text model)."""
        try:
            self.diagnose(text="I have a fever")
        except NuiError:
            return False
        return True

    # --- captions ---------------------------------------------------------------------------------
    def has_captions(self) -> bool:
        return self._caption_stubs is not None and self.offers(CAPTION_SERVICE)

    def caption(self, images: Sequence[bytes], n_best: int = 3) -> list[list[Caption]]:
        """N-best captions (best first) for each encoded image (JPEG/PNG/WebP bytes); the images are sent
        at once (one call each, concurrently) so the server can batch them."""
        if self._caption_stubs is None:
            raise NuiError("UNIMPLEMENTED", "image captioning: this client has no Captioner stubs")
        pb2, pb2_grpc = self._caption_stubs
        stub = pb2_grpc.CaptionerStub(self.channel)
        config = pb2.CaptionConfig(beam_size=max(3, n_best), n_best=n_best)
        futures = [stub.Caption.future(pb2.CaptionRequest(config=config, image=image,
                                                          request_id=uuid.uuid4().hex[:16]), timeout=self.timeout_s)
                   for image in images]
        out: list[list[Caption]] = []
        for i, future in enumerate(futures):
            try:
                response = future.result()
            except grpc.RpcError as e:
                raise _readable(e, f"image captioning (image {i + 1})") from e
            out.append([Caption(c.text, c.score) for c in response.captions])
        return out

"""Robustness benchmark: seeded malformed requests over every public RPC of a real `nui serve`, an overload
phase past its bounded queue, the server's memory throughout, and valid requests before and after.

    python bench/fuzz.py                                   # bundled model_repository, 1,500 calls, ~1 min
    python bench/fuzz.py --calls 10000 --overload-calls 96 --overload-s 60   # the issue's 10k + 60 s overload
    python bench/fuzz.py --repo R --calls 10000 --seed 1 --out bench/results/fuzz-10k.json
    python bench/fuzz.py --calls 120 --overload-calls 48 --quick-clips   # tiny run (the CI test)

Server: `python -m nui serve` as a subprocess (bench/speech_ctc.py's `ServerProcess`: 127.0.0.1, port 0)
over a temporary repository linking every model of `--repo` (default: the bundled one), plus a
random-weight `--streaming-preset` streaming model when the repository has none (so StreamingRecognize
runs the real streaming path), with a small queue (`--max-queue-size`), few streams (`--max-streams`),
short stream limits and Prometheus metrics on a free port.

Phases, each call with a deadline and an outer guard (deadline + 5 s) that would catch a hang:
1. baseline: the valid requests (two synthesized speech clips through Recognize, StreamingRecognize and
   Riva Recognize, a Diagnose, a Caption, a KServe ModelInfer per model) -> their answers are kept;
2. fuzz: `--calls` cases drawn with `--seed` from the generators in `GENERATORS` (nui.v1 Speech,
   Diagnosis, Captioner; the Riva ASR API through nvidia-riva-client's own stubs; the KServe v2 protocol
   through tritonclient's own stubs; undecodable protobuf bytes on every unary method), run with
   `--concurrency` calls at a time; the same seed gives the same cases in the same order;
3. overload: 20 valid Recognize calls one at a time (unloaded latency), then `--overload-calls` of them
   all at once (many more than the queue holds; every fourth with a 0.5 s deadline, shorter than the
   queue's wait) and 2 x `--max-streams` concurrent streams, each caller calling again until
   `--overload-s` have passed (0: once) -> OK vs RESOURCE_EXHAUSTED vs DEADLINE_EXCEEDED, no call lost,
   every answer before its deadline, admitted p50/p99 vs unloaded;
4. after: the valid requests again; each answer must equal the baseline's (transcripts, caption texts,
   disease ranking; tensors within 1e-4).
RSS (VmRSS of /proc/<pid>/status) is read at start and after each phase (and every tenth of the fuzz
calls); open streams and queue depth come from the metrics endpoint at the end and must be 0.

A FINDING is an INTERNAL or UNKNOWN status (as the client saw it, or in the server's nui_requests_total;
a stream's client-side INTERNAL "Internal error from Core" is grpc-python's own race, grpc/grpc#36066, and
is counted as CLIENT_INTERNAL instead, the server's count showing what it really sent), a call with no
answer by its deadline (fuzz phase) or its guard (a hang), a client-side exception that is not a gRPC
status (a lost call), open streams or queued items at the end, an after-abuse answer that differs from
the baseline, a traceback in the server log, or a server that does not exit 0 on SIGTERM. Findings
make the exit status 1. Prints a table, writes JSON (+ the git commit) to `--out` and a PNG of RSS over
the run next to it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import io
import json
import logging
import math
import os
import shlex
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import soundfile as sf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from riva.client.proto import riva_asr_pb2 as rasr
from riva.client.proto import riva_asr_pb2_grpc as rasr_grpc
from riva.client.proto import riva_audio_pb2 as raudio
from tqdm import tqdm
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from proto import caption_pb2, caption_pb2_grpc, diagnosis_pb2, diagnosis_pb2_grpc, speech_pb2, speech_pb2_grpc

logger = logging.getLogger("bench.fuzz")

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # in place of bench/ when run as a script: `bench` is a package
from bench import speech_ctc as sb  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "fuzz.json"
STREAMING_MODEL = "speech_ctc_streaming"
RATE_HZ = 16000
BAD_CODES = ("INTERNAL", "UNKNOWN", "HANG", "LOST")
# grpc-python's asyncio client reports INTERNAL "Internal error from Core" when a stream's write fails
# because the server already ended the call, overwriting the status the server sent
# (https://github.com/grpc/grpc/issues/36066); counted apart, the server's own count of codes is checked.
CLIENT_RACE = "CLIENT_INTERNAL"
SHORT_DEADLINE_S = 0.5
UNARY_METHODS = (  # every unary method a client can reach: undecodable bytes go to each
    "/nui.v1.Speech/Recognize", "/nui.v1.Diagnosis/Diagnose", "/nui.v1.Captioner/Caption",
    "/nvidia.riva.asr.RivaSpeechRecognition/Recognize",
    "/nvidia.riva.asr.RivaSpeechRecognition/GetRivaSpeechRecognitionConfig",
    "/inference.GRPCInferenceService/ModelInfer", "/inference.GRPCInferenceService/ModelMetadata",
    "/inference.GRPCInferenceService/ModelConfig", "/inference.GRPCInferenceService/ModelReady",
    "/inference.GRPCInferenceService/ModelStatistics", "/inference.GRPCInferenceService/RepositoryModelLoad",
    "/grpc.health.v1.Health/Check")
STREAM_METHODS = ("/nui.v1.Speech/StreamingRecognize", "/nvidia.riva.asr.RivaSpeechRecognition/StreamingRecognize",
                  "/inference.GRPCInferenceService/ModelStreamInfer")


# ----------------------------------------------------------------------------------------------------
# What a call is, and how one is run


@dataclass(frozen=True)
class Stubs:
    channel: grpc.aio.Channel
    speech: speech_pb2_grpc.SpeechStub
    diagnosis: diagnosis_pb2_grpc.DiagnosisStub
    captioner: caption_pb2_grpc.CaptionerStub
    riva: rasr_grpc.RivaSpeechRecognitionStub
    kserve: kpb_grpc.GRPCInferenceServiceStub
    health: health_pb2_grpc.HealthStub

    @classmethod
    def of(cls, channel: grpc.aio.Channel) -> Stubs:
        return cls(channel, speech_pb2_grpc.SpeechStub(channel), diagnosis_pb2_grpc.DiagnosisStub(channel),
                   caption_pb2_grpc.CaptionerStub(channel), rasr_grpc.RivaSpeechRecognitionStub(channel),
                   kpb_grpc.GRPCInferenceServiceStub(channel), health_pb2_grpc.HealthStub(channel))


# A stream script: messages to send, a float = pause that long, CANCEL = the client cancels the call there.
CANCEL = "cancel"
Script = list[Any]


@dataclass(frozen=True)
class Case:
    rpc: str  # "Speech/Recognize", "Riva/StreamingRecognize", "KServe/ModelInfer", ...
    kind: str  # what is wrong with it ("truncated WAV", ...)
    method: str  # stub attribute path ("speech.Recognize") or a raw method path for undecodable bytes
    request: Any  # a message, a Script for streaming methods, bytes for raw calls, int (size) for huge ones
    deadline_s: float | None = None  # instead of the phase's deadline


@dataclass(frozen=True)
class Record:
    phase: str
    rpc: str
    kind: str
    code: str  # a grpc.StatusCode name, HANG (no answer by the guard) or LOST (not a gRPC status)
    elapsed_s: float
    deadline_s: float
    detail: str = ""  # the status message of bad codes (first 200 characters)


def _stub_method(stubs: Stubs, method: str) -> Any:
    if method.startswith("/"):
        return stubs.channel.unary_unary(method)  # bytes in, bytes out: no (de)serializer
    if method.startswith("stream:/"):
        return stubs.channel.stream_stream(method.removeprefix("stream:"))
    owner, name = method.split(".")
    return getattr(getattr(stubs, owner), name)


async def _stream(call_method: Any, items: Script, deadline_s: float) -> list[Any]:
    """Play a stream script with the reader/writer API, so the status read is the server's own: with a
    request generator, a server that ends the call while the client still writes shows up on the client as
    INTERNAL "Internal error from Core" (grpc-python's request-consumer race), hiding the real code."""
    call = call_method(timeout=deadline_s)
    responses: list[Any] = []

    async def write() -> None:
        for item in items:
            if isinstance(item, float):
                await asyncio.sleep(item)
            elif item == CANCEL:
                call.cancel()
                return
            else:
                await call.write(item)
        await call.done_writing()

    async def read() -> None:
        while (response := await call.read()) is not grpc.aio.EOF:
            responses.append(response)

    writer = asyncio.ensure_future(write())
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError, asyncio.InvalidStateError):
        await read()  # ends at the server's status, an error status included
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        await writer  # the server may end the call before the script does: writing then fails
    if not writer.done():
        writer.cancel()
    code = await call.code()
    if code != grpc.StatusCode.OK:
        raise grpc.aio.AioRpcError(code, await call.initial_metadata(), await call.trailing_metadata(),
                                   await call.details())
    return responses


async def call_once(stubs: Stubs, case: Case, deadline_s: float, phase: str) -> tuple[Record, Any]:
    """Run one case; the record and the response (None unless OK). Never raises."""
    deadline_s = case.deadline_s or deadline_s
    method = _stub_method(stubs, case.method)
    request = b"\0" * case.request if isinstance(case.request, int) else case.request
    t0 = time.perf_counter()
    response: Any = None
    detail = ""
    try:
        if isinstance(request, list):
            coro: Awaitable[Any] = _stream(method, request, deadline_s)
        else:
            coro = method(request, timeout=deadline_s)
        response = await asyncio.wait_for(coro, timeout=deadline_s + 5.0)
        code = "OK"
    except grpc.aio.AioRpcError as e:
        code, detail = e.code().name, (e.details() or "")[:200]
        if isinstance(request, list) and code == "INTERNAL" and detail == "Internal error from Core":
            code = CLIENT_RACE
    except TimeoutError:
        code, detail = "HANG", f"no answer {deadline_s + 5:g} s after the call began"
    except Exception as e:  # a client-side failure: the call's answer is lost
        code, detail = "LOST", f"{type(e).__name__}: {e}"[:200]
    elapsed = time.perf_counter() - t0
    if code not in (*BAD_CODES, "DEADLINE_EXCEEDED"):
        detail = ""  # the other codes' messages are expected; the JSON keeps counts only
    return Record(phase, case.rpc, case.kind, code, elapsed, deadline_s, detail), response


async def run_cases(address: str, cases: Iterable[Case], concurrency: int, deadline_s: float, phase: str,
                    on_done: Callable[[int], None] | None = None, repeat_s: float = 0.0
                    ) -> list[tuple[Record, Any]]:
    """All cases, at most `concurrency` at a time, over one channel, each drawn from `cases` when a
    caller is free (a generator is never held in memory whole); results in case order. With `repeat_s`
    > 0 a caller repeats its case again and again for that long (closed loop)."""
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        stubs = Stubs.of(channel)
        numbered = enumerate(cases)  # shared by the callers: each takes the next case when free
        results: dict[int, tuple[Record, Any]] = {}
        repeats: list[tuple[Record, Any]] = []
        until = time.perf_counter() + repeat_s

        async def caller() -> None:
            for i, case in numbered:
                results[i] = await call_once(stubs, case, deadline_s, phase)
                while time.perf_counter() < until:
                    repeats.append(await call_once(stubs, case, deadline_s, phase))
                if on_done is not None:
                    on_done(i)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return [results[i] for i in sorted(results)] + repeats


# ----------------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class Inputs:
    """Valid material the generators corrupt: speech WAVs, images, the models' manifests."""

    wavs: list[bytes]  # 16 kHz 16-bit mono speech
    pcm: list[bytes]  # the same audio, headerless
    png: bytes
    jpeg: bytes
    manifests: dict[str, dict[str, Any]]  # model name -> manifest.json
    symptom_ids: list[str]  # a few the diagnosis model knows
    kserve_models: list[str]  # the models ModelInfer serves (KServe ModelReady says ready)


def _wav(samples: np.ndarray, rate_hz: int, subtype: str = "PCM_16", channels: int = 1) -> bytes:
    buf = io.BytesIO()
    data = np.repeat(samples[:, None], channels, axis=1) if channels > 1 else samples
    sf.write(buf, data, rate_hz, format="WAV", subtype=subtype)
    wav = bytearray(buf.getvalue())
    if (peak := wav.find(b"PEAK")) >= 0:  # float WAVs get a PEAK chunk stamped with the time: zero it
        wav[peak + 12: peak + 16] = bytes(4)
    return bytes(wav)


def _png(width: int, height: int, pixels: bytes | None = None) -> bytes:
    """A PNG whose IHDR claims width x height; its IDAT holds `pixels` (default: a few zero rows only)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    body = pixels if pixels is not None else b"\0" * min(64, (3 * width + 1) * min(height, 1))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b""))


def make_inputs(repo: Path, clips: Sequence[Any], address: str) -> Inputs:
    """Valid material from the repository and the running server at `address`."""
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    png, jpeg = io.BytesIO(), io.BytesIO()
    image.save(png, format="PNG")
    image.save(jpeg, format="JPEG")
    manifests: dict[str, dict[str, Any]] = {}
    symptom_ids: list[str] = []
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir()):
        versions = sorted((int(v.name) for v in model_dir.iterdir() if v.name.isdigit()), reverse=True)
        if not versions:
            continue
        version_dir = model_dir / str(versions[0])
        manifests[model_dir.name] = json.loads((version_dir / "manifest.json").read_text())
        if model_dir.name == "diagnosis" and (version_dir / "symptoms.json").exists():
            symptoms = json.loads((version_dir / "symptoms.json").read_text())
            symptom_ids = [s["id"] for s in symptoms if not s.get("sex")][:8]
    pcm = [(np.clip(c.samples, -1, 1) * 32767).astype("<i2").tobytes() for c in clips]
    return Inputs([c.wav for c in clips], pcm, png.getvalue(), jpeg.getvalue(), manifests, symptom_ids,
                  asyncio.run(tensor_models(address, manifests)))


async def tensor_models(address: str, manifests: dict[str, dict[str, Any]]) -> list[str]:
    """The models whose well-formed KServe ModelInfer (`_kserve_valid`) answers OK: tensor models, not the
    captioner (UNIMPLEMENTED) or models whose inputs the generic request does not fit."""
    served = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = kpb_grpc.GRPCInferenceServiceStub(channel)
        for name in manifests:
            try:
                await stub.ModelInfer(_kserve_valid(manifests, name), timeout=30)
            except grpc.aio.AioRpcError as e:
                logger.info("KServe ModelInfer of %s: %s; left out of the KServe cases", name, e.code().name)
                continue
            served.append(name)
    return served


# ----------------------------------------------------------------------------------------------------
# Generators: rng -> one malformed case per call, each spelling out what it breaks


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    """One of `options`, drawn by index: rng.choice on strings goes through a numpy array, which drops
    trailing NUL characters ("\\x00" would become "")."""
    return options[int(rng.integers(len(options)))]


def _garbage(rng: np.random.Generator, max_bytes: int = 4096) -> bytes:
    return rng.bytes(int(rng.integers(1, max_bytes)))


def _truncated(rng: np.random.Generator, data: bytes) -> bytes:
    return data[: int(rng.integers(1, min(len(data), 200) if rng.random() < 0.5 else len(data)))]


def _corrupt(rng: np.random.Generator, data: bytes, span: int = 64) -> bytes:
    b = bytearray(data)
    for i in rng.integers(0, min(span, len(b)), size=int(rng.integers(1, 8))):
        b[i] = int(rng.integers(0, 256))
    return bytes(b)


_BAD_INTS = (-1, 0, 1, 7999, 48001, 96000, 2**31 - 1, -(2**31))
_BAD_FLOATS = (float("nan"), float("inf"), -float("inf"), -1.0, 1e30, -1e-30)


def _bad_audio(rng: np.random.Generator, inp: Inputs) -> tuple[str, bytes, int]:
    """(kind, audio, sample_rate_hertz for the config) of one bad clip for a container-reading API."""
    wav = inp.wavs[int(rng.integers(len(inp.wavs)))]
    silence = np.zeros(RATE_HZ // 2, np.float32)
    choice = int(rng.integers(11))
    if choice == 0:
        return "empty audio", b"", 0
    if choice == 1:
        return "garbage bytes", _garbage(rng), 0
    if choice == 2:
        return "truncated WAV", _truncated(rng, wav), 0
    if choice == 3:
        return "corrupted WAV header", _corrupt(rng, wav, 44), 0
    if choice == 4:
        return "WAV rate != config rate", wav, int(rng.choice([8000, 22050, 44100, 48000]))
    if choice == 5:
        return "config rate out of range", wav, int(rng.choice(_BAD_INTS))
    if choice == 6:
        rate = int(rng.choice([1, 100, 4000, 192000, 1_000_000]))
        return "WAV header rate out of range", _wav(silence[: max(rate // 10, 1)], rate), 0
    if choice == 7:
        return "too-long audio (70 s)", _wav(np.zeros(70 * 8000, np.float32), 8000), 0
    if choice == 8:
        samples = rng.standard_normal(RATE_HZ // 4).astype(np.float32)
        samples[rng.integers(0, len(samples), 50)] = rng.choice([np.nan, np.inf, -np.inf], 50)
        return "float WAV with NaN/inf samples", _wav(samples, RATE_HZ, "FLOAT"), 0
    if choice == 9:
        return "64-channel WAV", _wav(silence[:1600], RATE_HZ, channels=64), 0
    return "WAV header only (0 samples)", _wav(np.zeros(0, np.float32), RATE_HZ), 0


def gen_speech_recognize(rng: np.random.Generator, inp: Inputs) -> Case:
    c = speech_pb2.RecognitionConfig
    choice = int(rng.integers(8))
    wav = inp.wavs[0]
    if choice < 3:
        kind, audio, rate = _bad_audio(rng, inp)
        request = speech_pb2.RecognizeRequest(config=c(sample_rate_hertz=rate), audio=audio)
    elif choice == 3:
        odd = inp.pcm[0][: int(rng.integers(1, 2000)) * 2 + 1]
        kind, request = "LINEAR_PCM odd byte count / no rate", speech_pb2.RecognizeRequest(
            config=c(encoding=speech_pb2.LINEAR_PCM, sample_rate_hertz=int(rng.choice([0, RATE_HZ]))), audio=odd)
    elif choice == 4:
        field_name = _pick(rng, ["encoding", "decoder"])
        config = c()
        setattr(config, field_name, int(rng.choice([2, 3, 99, -1])))  # 2: LINEAR_FLOAT32 is streaming only
        kind, request = f"bad enum {field_name}", speech_pb2.RecognizeRequest(config=config, audio=wav)
    elif choice == 5:
        kind, request = "max_alternatives out of range", speech_pb2.RecognizeRequest(
            config=c(max_alternatives=int(rng.choice([-1, 11, 2**31 - 1]))), audio=wav)
    elif choice == 6:
        model, version = (_pick(rng, ["nope", "diagnosis", "captioner", "../speech_ctc", "x" * 500]),
                          int(rng.choice([0, 999, -5])))
        if rng.random() < 0.4:
            model = ""
        kind, request = "unknown model/version", speech_pb2.RecognizeRequest(
            config=c(model=model, model_version=version), audio=wav)
    else:
        rid = _pick(rng, ["x" * 129, "bad\nid", "\x00", "é" * 200])
        kind, request = "bad request_id", speech_pb2.RecognizeRequest(audio=wav, request_id=rid)
    return Case("Speech/Recognize", kind, "speech.Recognize", request)


def _chunks(pcm: bytes, n: int, step_bytes: int = 3200) -> list[bytes]:
    return [pcm[i: i + step_bytes] for i in range(0, min(len(pcm), n * step_bytes), step_bytes)]


def gen_speech_streaming(rng: np.random.Generator, inp: Inputs) -> Case:
    cfg = speech_pb2.RecognitionConfig(encoding=speech_pb2.LINEAR_PCM, sample_rate_hertz=RATE_HZ,
                                       interim_results=bool(rng.random() < 0.5))
    req = speech_pb2.StreamingRecognizeRequest
    audio = [req(audio=a) for a in _chunks(inp.pcm[int(rng.integers(len(inp.pcm)))], int(rng.integers(1, 6)))]
    choice = int(rng.integers(13))
    script: Script
    if choice == 0:
        kind, script = "no message at all", []
    elif choice == 1:
        kind, script = "audio before config", [*audio, req(config=cfg)]
    elif choice == 2:
        kind, script = "config twice", [req(config=cfg), *audio[:1], req(config=cfg)]
    elif choice == 3:
        bad = speech_pb2.RecognitionConfig()
        bad.CopyFrom(cfg)
        what = _pick(rng, ["sample_rate_hertz", "encoding", "silence_ms", "threshold_dbfs", "max_alternatives"])
        if what == "sample_rate_hertz":
            bad.sample_rate_hertz = int(rng.choice(_BAD_INTS))
        elif what == "encoding":
            bad.encoding = int(rng.choice([0, 5, 99]))  # type: ignore[assignment]
        elif what == "silence_ms":
            bad.endpointing.silence_ms = int(rng.choice([-1, 1, 49, 10001, 2**31 - 1]))
        elif what == "threshold_dbfs":
            bad.endpointing.threshold_dbfs = float(rng.choice([*_BAD_FLOATS, 5.0, -101.0]))
        else:
            bad.max_alternatives = int(rng.choice([-1, 11]))
        kind, script = f"bad config {what}", [req(config=bad), *audio]
    elif choice == 4:
        kind, script = "odd-length PCM chunk", [req(config=cfg), req(audio=inp.pcm[0][:321]), *audio]
    elif choice == 5:
        kind, script = "chunk longer than 5 s", [req(config=cfg), req(audio=b"\0" * (6 * RATE_HZ * 2))]
    elif choice == 6:
        f32 = speech_pb2.RecognitionConfig(encoding=speech_pb2.LINEAR_FLOAT32, sample_rate_hertz=RATE_HZ)
        values = rng.standard_normal(1600).astype("<f4")
        values[rng.integers(0, 1600, 20)] = rng.choice([np.nan, np.inf, 1e30], 20)
        kind, script = "float32 chunk with NaN/inf", [req(config=f32), req(audio=values.tobytes())]
    elif choice == 7:  # the fuzz server runs with --max-stream-s 20
        four_s = req(audio=b"\0" * (4 * RATE_HZ * 2))
        kind, script = "stream longer than --max-stream-s", [req(config=cfg)] + [four_s] * 7
    elif choice == 8:  # the fuzz server ends streams silent for --stream-idle-s 2
        kind, script = "config, then silence (never ends)", [req(config=cfg), *audio[:1], 8.0]
    elif choice == 9:
        kind, script = "client cancels mid-stream", [req(config=cfg), *audio, 0.05, CANCEL]
    elif choice == 10:
        kind, script = "empty audio messages", [req(config=cfg), req(audio=b""), req(audio=b""), *audio[:1]]
    elif choice == 11:
        unknown = speech_pb2.RecognitionConfig()
        unknown.CopyFrom(cfg)
        unknown.model, unknown.model_version = _pick(rng, ["speech_ctc", "nope", "diagnosis"]), int(
            rng.choice([0, 7]))
        kind, script = "unknown/offline model", [req(config=unknown), *audio]
    else:
        kind, script = "bad request_id", [req(config=cfg, request_id="\x07" * int(rng.integers(1, 300))), *audio]
    return Case("Speech/StreamingRecognize", kind, "speech.StreamingRecognize", script)


def _riva_config(**kw: Any) -> rasr.RecognitionConfig:
    base = {"encoding": raudio.LINEAR_PCM, "sample_rate_hertz": RATE_HZ, "language_code": "en-US",
            "max_alternatives": 1}
    return rasr.RecognitionConfig(**{**base, **kw})


def _riva_bad_config(rng: np.random.Generator) -> tuple[str, rasr.RecognitionConfig]:
    choice = int(rng.integers(8))
    if choice == 0:
        return "language_code not English", _riva_config(language_code=_pick(rng, ["de-DE", "zz", "x" * 300]))
    if choice == 1:
        return "encoding MULAW/ALAW/OGGOPUS", _riva_config(encoding=int(rng.choice([3, 4, 20, 77])))
    if choice == 2:
        return "speech_contexts", _riva_config(speech_contexts=[rasr.SpeechContext(phrases=["nui"], boost=5.0)])
    if choice == 3:
        return "diarization", _riva_config(diarization_config=rasr.SpeakerDiarizationConfig(
            enable_speaker_diarization=True))
    if choice == 4:
        return "audio_channel_count out of range", _riva_config(audio_channel_count=int(rng.choice([-1, 9, 2**31 - 1])))
    if choice == 5:
        return "sample_rate_hertz out of range", _riva_config(sample_rate_hertz=int(rng.choice(_BAD_INTS)))
    if choice == 6:
        return "max_alternatives out of range", _riva_config(max_alternatives=int(rng.choice([-1, 11])))
    return "unknown model", _riva_config(model=_pick(rng, ["nope", "diagnosis", "\x00" * 10]))


def gen_riva_recognize(rng: np.random.Generator, inp: Inputs) -> Case:
    if rng.random() < 0.5:
        kind, config = _riva_bad_config(rng)
        audio = inp.wavs[0]
    else:
        kind, audio, rate = _bad_audio(rng, inp)
        config = _riva_config(sample_rate_hertz=rate or RATE_HZ,
                              encoding=int(rng.choice([raudio.LINEAR_PCM, raudio.ENCODING_UNSPECIFIED, raudio.FLAC])))
    return Case("Riva/Recognize", kind, "riva.Recognize", rasr.RecognizeRequest(config=config, audio=audio))


def gen_riva_streaming(rng: np.random.Generator, inp: Inputs) -> Case:
    req = rasr.StreamingRecognizeRequest
    audio = [req(audio_content=a) for a in _chunks(inp.pcm[-1], int(rng.integers(1, 5)))]
    good = rasr.StreamingRecognitionConfig(config=_riva_config(), interim_results=True)
    choice = int(rng.integers(7))
    script: Script
    if choice < 2:
        kind, config = _riva_bad_config(rng)
        script = [req(streaming_config=rasr.StreamingRecognitionConfig(config=config)), *audio]
    elif choice == 2:
        kind, script = "audio before config", [*audio, req(streaming_config=good)]
    elif choice == 3:
        kind, script = "config twice", [req(streaming_config=good), req(streaming_config=good)]
    elif choice == 4:
        kind, script = "no message at all", []
    elif choice == 5:
        kind, script = "odd-length PCM chunk", [req(streaming_config=good), req(audio_content=inp.pcm[0][:77])]
    else:
        kind, script = "config with FLAC (container) encoding", [
            req(streaming_config=rasr.StreamingRecognitionConfig(config=_riva_config(encoding=raudio.FLAC))), *audio]
    return Case("Riva/StreamingRecognize", kind, "riva.StreamingRecognize", script)


def gen_riva_config(rng: np.random.Generator, inp: Inputs) -> Case:
    name = _pick(rng, ["", "nope", "speech_ctc", "\x00", "x" * 10000])
    return Case("Riva/GetRivaSpeechRecognitionConfig", "model_name garbage", "riva.GetRivaSpeechRecognitionConfig",
                rasr.RivaSpeechRecognitionConfigRequest(model_name=name))


_KSERVE_DTYPES = ("FP32", "FP16", "FP64", "INT64", "INT32", "INT8", "UINT8", "BOOL", "BYTES", "BF16", "fp32", "")
_DTYPE_SIZE = {"FP32": 4, "FP16": 2, "FP64": 8, "INT64": 8, "INT32": 4, "INT8": 1, "UINT8": 1, "BOOL": 1,
               "BYTES": 1, "BF16": 2, "fp32": 4, "": 4}


def _kserve_valid(manifests: dict[str, dict[str, Any]], model: str, rows: int = 1,
                  rng: np.random.Generator | None = None) -> kpb.ModelInferRequest:
    """A well-formed request: every input of the manifest, dynamic axes 4 (audio: 1600 samples)."""
    request = kpb.ModelInferRequest(model_name=model)
    for spec in manifests[model]["inputs"]:
        shape = [rows if i == 0 else (d if isinstance(d, int) else (1600 if spec["name"] == "audio" else 4))
                 for i, d in enumerate(spec["shape"])]
        dtype = np.dtype(spec["dtype"])
        count = int(np.prod(shape))
        if spec["name"] in ("audio_lengths",):
            values = np.full(count, 1600, dtype)
        elif dtype.kind in "iu":
            values = np.ones(count, dtype)
        else:
            gen = rng if rng is not None else np.random.default_rng(0)
            values = (0.1 * gen.standard_normal(count)).astype(dtype)
        datatype = {"float32": "FP32", "int64": "INT64"}[dtype.name]
        request.inputs.add(name=spec["name"], datatype=datatype, shape=shape)
        request.raw_input_contents.append(values.astype(dtype.newbyteorder("<")).tobytes())
    return request


def gen_kserve_infer(rng: np.random.Generator, inp: Inputs) -> Case:
    model = _pick(rng, inp.kserve_models)
    request = _kserve_valid(inp.manifests, model, rng=rng)
    i = int(rng.integers(len(request.inputs)))
    tensor = request.inputs[i]
    choice = int(rng.integers(13))
    if choice == 0:
        tensor.datatype = _pick(rng, _KSERVE_DTYPES)
        kind = "wrong datatype"
    elif choice == 1:
        del tensor.shape[:]
        tensor.shape.extend(int(d) for d in rng.choice([-1, 0, 1, 3, 2**20], size=int(rng.integers(0, 5))))
        kind = "wrong shape"
    elif choice == 2:
        del tensor.shape[:]
        if rng.random() < 0.5:
            tensor.shape.extend([2**32, 2**32, int(rng.choice([1, 2, 4]))])  # element count overflows int64
        else:
            tensor.shape.extend([0, int(rng.choice([2**62, 2**63 - 1]))])  # zero elements, axis too large
        request.raw_input_contents[i] = b""
        kind = "shape overflowing int64 / zero-size huge"
    elif choice == 3:
        tensor.name = _pick(rng, ["nope", "", "x" * 5000, request.inputs[(i + 1) % len(request.inputs)].name])
        kind = "wrong/duplicate input name"
    elif choice == 4:
        del request.inputs[i]
        del request.raw_input_contents[i]
        kind = "missing input"
    elif choice == 5:
        raw = request.raw_input_contents[i]
        request.raw_input_contents[i] = raw[: int(rng.integers(0, len(raw)))] if rng.random() < 0.5 else raw + b"\0" * 3
        kind = "raw contents size mismatch"
    elif choice == 6:
        request.raw_input_contents.append(b"\0" * 8)
        kind = "raw_input_contents count mismatch"
    elif choice == 7:  # typed contents instead of raw, in the wrong field or with the wrong count
        del request.raw_input_contents[:]
        for t in request.inputs:
            n = int(np.prod(list(t.shape)))
            if rng.random() < 0.5:
                t.contents.int_contents.extend([1] * n)
            else:
                t.contents.fp32_contents.extend([0.5] * (n + int(rng.integers(-1, 2))))
        kind = "typed contents wrong field/count"
    elif choice == 8:
        request.model_name = _pick(rng, ["nope", "", "../diagnosis", "x" * 300, *inp.manifests])
        kind = "unknown model"
    elif choice == 9:
        request.model_version = _pick(rng, ["999", "-1", "abc", "1.5", "0x1", "99999999999999999999999"])
        kind = "bad model_version"
    elif choice == 10:
        request.outputs.add(name=_pick(rng, ["nope", "", "probs", "log_probs"]))
        kind = "unknown output name"
    elif choice == 11:
        rows = int(rng.choice([17, 64, 1000]))
        request = _kserve_valid(inp.manifests, model, rows=rows, rng=rng)
        kind = "more rows than max batch"
    else:
        raw = bytearray(request.raw_input_contents[i])
        if tensor.datatype == "FP32" and raw:
            nan = np.array([np.nan, np.inf, -np.inf], "<f4").tobytes()
            raw[: len(nan)] = nan[: len(raw)]
        elif raw:  # INT64 ids / lengths / sex: out-of-range values
            raw[:8] = np.array([int(rng.choice([-1, 2**62, -(2**40)]))], "<i8").tobytes()
        request.raw_input_contents[i] = bytes(raw)
        kind = "NaN/inf or out-of-range values"
    return Case("KServe/ModelInfer", kind, "kserve.ModelInfer", request)


def gen_kserve_stream(rng: np.random.Generator, inp: Inputs) -> Case:
    cases = [gen_kserve_infer(rng, inp).request for _ in range(int(rng.integers(1, 4)))]
    return Case("KServe/ModelStreamInfer", "malformed requests in one stream", "kserve.ModelStreamInfer", cases)


def gen_kserve_other(rng: np.random.Generator, inp: Inputs) -> Case:
    name = _pick(rng, ["nope", "", "\x00", "x" * 2000, *inp.manifests])
    version = _pick(rng, ["", "0", "999", "-1", "abc"])
    choice = int(rng.integers(5))
    if choice == 0:
        return Case("KServe/ModelMetadata", "name/version garbage", "kserve.ModelMetadata",
                    kpb.ModelMetadataRequest(name=name, version=version))
    if choice == 1:
        return Case("KServe/ModelConfig", "name/version garbage", "kserve.ModelConfig",
                    kpb.ModelConfigRequest(name=name, version=version))
    if choice == 2:
        return Case("KServe/ModelReady", "name/version garbage", "kserve.ModelReady",
                    kpb.ModelReadyRequest(name=name, version=version))
    if choice == 3:
        return Case("KServe/ModelStatistics", "name/version garbage", "kserve.ModelStatistics",
                    kpb.ModelStatisticsRequest(name=name, version=version))
    # only names that are not served: unloading a real model would change what later cases meet
    unknown = _pick(rng, ["nope", "", "../etc", "x" * 300])
    method = _pick(rng, ["RepositoryModelLoad", "RepositoryModelUnload"])
    request_type = kpb.RepositoryModelLoadRequest if method.endswith("Load") else kpb.RepositoryModelUnloadRequest
    return Case(f"KServe/{method}", "unknown model name", f"kserve.{method}", request_type(model_name=unknown))


def gen_caption(rng: np.random.Generator, inp: Inputs) -> Case:
    cfg = caption_pb2.CaptionConfig
    image = inp.png if rng.random() < 0.5 else inp.jpeg
    choice = int(rng.integers(11))
    config = cfg(beam_size=1, max_length=4)
    if choice == 0:
        kind, image = "empty image", b""
    elif choice == 1:
        kind, image = "garbage bytes", _garbage(rng)
    elif choice == 2:
        kind, image = "truncated image", _truncated(rng, image)
    elif choice == 3:
        kind, image = "corrupted image header", _corrupt(rng, image, 32)
    elif choice == 4:
        w, h = (int(rng.choice([0, 1, 60000, 2**31 - 1])), int(rng.choice([0, 1, 60000, 2**31 - 1])))
        kind, image = "PNG header with zero/huge size", _png(w, h)
    elif choice == 5:
        kind, image = "GIF/BMP/TIFF (not JPEG/PNG/WebP)", _other_format(rng)
    elif choice == 6:
        what = _pick(rng, ["beam_size", "n_best", "max_length", "length_penalty"])
        value: Any = {"beam_size": rng.choice([-1, 17, 2**31 - 1]), "n_best": rng.choice([-1, 2, 99]),
                      "max_length": rng.choice([-1, 10**6, 2**31 - 1]),
                      "length_penalty": rng.choice([*_BAD_FLOATS, 2.5])}[what]
        config = cfg(beam_size=1, max_length=4)
        setattr(config, what, value.item())
        kind = f"{what} out of range"
    elif choice == 7:
        kind, config = "unknown model/version", cfg(model=_pick(rng, ["nope", "speech_ctc", "x" * 400]),
                                                   model_version=int(rng.choice([0, 42, -1])))
    elif choice == 8:
        kind, image = "1x1 image", _png(1, 1, b"\0\0\0\0")
    elif choice == 9:
        kind, image = "PNG valid header, garbage IDAT", _corrupt(rng, inp.png[:200], 200)[:33] + _garbage(rng, 512)
    else:
        return Case("Captioner/Caption", "bad request_id", "captioner.Caption", caption_pb2.CaptionRequest(
            config=config, image=image, request_id="\n" * 200))
    return Case("Captioner/Caption", kind, "captioner.Caption", caption_pb2.CaptionRequest(config=config, image=image))


def _other_format(rng: np.random.Generator) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format=_pick(rng, ["GIF", "BMP", "TIFF"]))
    return buf.getvalue()


def gen_diagnose(rng: np.random.Generator, inp: Inputs) -> Case:
    d = diagnosis_pb2
    known = inp.symptom_ids or ["HP:0001945"]
    choice = int(rng.integers(10))
    request = d.DiagnoseRequest(evidence=[d.Finding(symptom_id=known[0], present=True)])
    if choice == 0:
        ids = ["HP:9999999", "", "nope", "\x00", "x" * 5000, "HP:0001945 ", "hp:0001945"]
        request = d.DiagnoseRequest(evidence=[d.Finding(symptom_id=_pick(rng, ids), present=True)])
        kind = "unknown symptom id"
    elif choice == 1:
        request = d.DiagnoseRequest(evidence=[d.Finding(symptom_id=known[0], present=True)],
                                    history=[d.Finding(symptom_id=known[0], present=False)])
        kind = "contradictory evidence"
    elif choice == 2:
        n = int(rng.choice([2000, 20000]))
        request = d.DiagnoseRequest(evidence=[d.Finding(symptom_id=known[i % len(known)], present=True)
                                              for i in range(n)])
        kind = "too many findings"
    elif choice == 3:
        request.age_years = float(rng.choice([*_BAD_FLOATS, 131.0]))
        kind = "age out of range"
    elif choice == 4:
        request.sex = int(rng.choice([3, 99, -1]))  # type: ignore[assignment]
        kind = "bad sex enum"
    elif choice == 5:
        request.top_k = int(rng.choice([-1, 51, 2**31 - 1]))
        kind = "top_k out of range"
    elif choice == 6:
        request.text = _pick(rng, ["", " ", "\x00" * 10])
        kind = "text empty/blank/control"
    elif choice == 7:
        request.text = "fever " * int(rng.choice([400, 20000]))
        kind = "text too long"
    elif choice == 8:
        request.text = "headache"
        request.min_text_confidence = float(rng.choice([*_BAD_FLOATS, 1.5]))
        kind = "min_text_confidence out of range"
    else:
        request.config.model, request.config.model_version = _pick(rng, ["nope", "speech_ctc", ""]), int(
            rng.choice([0, 9, -3]))
        kind = "unknown model/version"
    return Case("Diagnosis/Diagnose", kind, "diagnosis.Diagnose", request)


def gen_health(rng: np.random.Generator, inp: Inputs) -> Case:
    service = _pick(rng, ["", "nope", "nui.v1.Speech", "\x00", "x" * 10_000])
    return Case("Health/Check", "service name garbage", "health.Check", health_pb2.HealthCheckRequest(service=service))


def gen_raw_bytes(rng: np.random.Generator, inp: Inputs) -> Case:
    if rng.random() < 0.25:  # a stream whose first or a later message does not parse
        method = _pick(rng, STREAM_METHODS)
        first = {STREAM_METHODS[0]: speech_pb2.StreamingRecognizeRequest(config=speech_pb2.RecognitionConfig(
                     encoding=speech_pb2.LINEAR_PCM, sample_rate_hertz=RATE_HZ)),
                 STREAM_METHODS[1]: rasr.StreamingRecognizeRequest(
                     streaming_config=rasr.StreamingRecognitionConfig(config=_riva_config())),
                 STREAM_METHODS[2]: _kserve_valid(inp.manifests, inp.kserve_models[0]) if inp.kserve_models else
                 kpb.ModelInferRequest()}[method].SerializeToString()
        script: Script = [first, rng.bytes(int(rng.integers(1, 256)))]
        if rng.random() < 0.5:
            script = script[1:]
        return Case(f"raw bytes {method.split('/')[2]}", "undecodable protobuf in a stream", f"stream:{method}",
                    script)
    method = _pick(rng, UNARY_METHODS)
    if rng.random() < 0.04:  # a message over the server's --max-message-bytes (32 MB default)
        return Case("(any)/huge message", "33 MB message", method, 33 * 1024 * 1024)
    data = rng.bytes(int(rng.integers(1, 256)))
    return Case(f"raw bytes {method.split('/')[1].split('.')[-1]}", "undecodable protobuf", method, data)


GENERATORS: dict[str, tuple[float, Callable[[np.random.Generator, Inputs], Case]]] = {
    # name: (weight, generator); streaming cases weigh less, each runs for up to a few seconds
    "speech_recognize": (2.0, gen_speech_recognize),
    "speech_streaming": (1.0, gen_speech_streaming),
    "riva_recognize": (1.5, gen_riva_recognize),
    "riva_streaming": (1.0, gen_riva_streaming),
    "riva_config": (0.3, gen_riva_config),
    "kserve_infer": (2.0, gen_kserve_infer),
    "kserve_stream": (0.5, gen_kserve_stream),
    "kserve_other": (0.7, gen_kserve_other),
    "caption": (1.5, gen_caption),
    "diagnose": (1.5, gen_diagnose),
    "health": (0.2, gen_health),
    "raw_bytes": (1.0, gen_raw_bytes),
}


def draw_cases(n: int, seed: int, inp: Inputs, streaming: bool) -> Iterator[Case]:
    """`n` cases, one at a time, the same for the same seed and inputs."""
    names = [k for k in GENERATORS if streaming or k not in ("speech_streaming", "riva_streaming")]
    if "diagnosis" not in inp.manifests:
        names.remove("diagnose")
    if "captioner" not in inp.manifests:
        names.remove("caption")
    if not inp.kserve_models:
        names = [k for k in names if k not in ("kserve_infer", "kserve_stream")]
    weights = np.array([GENERATORS[k][0] for k in names])
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(names), size=n, p=weights / weights.sum())
    return (GENERATORS[names[k]][1](rng, inp) for k in picks)


# ----------------------------------------------------------------------------------------------------
# Valid requests (before and after the abuse) and the overload


def valid_cases(inp: Inputs, streaming: bool) -> list[Case]:
    cases = []
    for i, wav in enumerate(inp.wavs):
        cases.append(Case("Speech/Recognize", f"valid clip {i}", "speech.Recognize", speech_pb2.RecognizeRequest(
            config=speech_pb2.RecognitionConfig(decoder=speech_pb2.DECODER_GREEDY), audio=wav)))
        cases.append(Case("Riva/Recognize", f"valid clip {i}", "riva.Recognize", rasr.RecognizeRequest(
            config=_riva_config(), audio=wav)))
        if streaming:
            req = speech_pb2.StreamingRecognizeRequest
            cfg = speech_pb2.RecognitionConfig(encoding=speech_pb2.LINEAR_PCM, sample_rate_hertz=RATE_HZ)
            chunks = [req(audio=a) for a in _chunks(inp.pcm[i], 10**6)]
            cases.append(Case("Speech/StreamingRecognize", f"valid clip {i}", "speech.StreamingRecognize",
                              [req(config=cfg), *chunks]))
    if "diagnosis" in inp.manifests:
        cases.append(Case("Diagnosis/Diagnose", "valid", "diagnosis.Diagnose", diagnosis_pb2.DiagnoseRequest(
            evidence=[diagnosis_pb2.Finding(symptom_id=s, present=True) for s in inp.symptom_ids[:2]], top_k=5)))
    if "captioner" in inp.manifests:
        cases.append(Case("Captioner/Caption", "valid", "captioner.Caption", caption_pb2.CaptionRequest(
            config=caption_pb2.CaptionConfig(beam_size=2, max_length=8), image=inp.jpeg)))
    for model in inp.kserve_models:
        cases.append(Case("KServe/ModelInfer", f"valid {model}", "kserve.ModelInfer",
                          _kserve_valid(inp.manifests, model)))
    return cases


def answer_digest(response: Any) -> Any:
    """What must not change between before and after: texts, rankings, tensors."""
    if isinstance(response, speech_pb2.RecognizeResponse | rasr.RecognizeResponse):
        return [a.transcript for r in response.results for a in r.alternatives]
    if isinstance(response, list):  # a stream: its final transcripts
        return [a.transcript for m in response for r in m.results if r.is_final for a in r.alternatives[:1]]
    if isinstance(response, diagnosis_pb2.DiagnoseResponse):
        return [(s.disease_id, round(s.probability, 3)) for s in response.diseases]
    if isinstance(response, caption_pb2.CaptionResponse):
        return [c.text for c in response.captions]
    if isinstance(response, kpb.ModelInferResponse):
        return [np.frombuffer(raw, np.float32 if o.datatype == "FP32" else np.int64)
                for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)]
    return None


def same_answer(a: Any, b: Any) -> bool:
    if isinstance(a, list) and a and isinstance(a[0], np.ndarray):
        return len(a) == len(b) and all(x.shape == y.shape and np.allclose(x, y, atol=1e-4)
                                        for x, y in zip(a, b, strict=True))
    return bool(a == b)


def overload_cases(inp: Inputs, n_calls: int, n_streams: int, streaming: bool) -> list[Case]:
    """`n_calls` Recognize of the longest clip, every fourth with a deadline shorter than the queue's wait
    (SHORT_DEADLINE_S: the server must answer DEADLINE_EXCEEDED in time, not run it), and the streams."""
    wav = max(inp.wavs, key=len)
    request = speech_pb2.RecognizeRequest(config=speech_pb2.RecognitionConfig(decoder=speech_pb2.DECODER_GREEDY),
                                          audio=wav)
    cases = [Case("Speech/Recognize", "overload", "speech.Recognize", request) if i % 4 else
             Case(f"Speech/Recognize, {SHORT_DEADLINE_S:g} s deadline", "overload", "speech.Recognize", request,
                  SHORT_DEADLINE_S) for i in range(n_calls)]
    if streaming:
        req = speech_pb2.StreamingRecognizeRequest
        cfg = speech_pb2.RecognitionConfig(encoding=speech_pb2.LINEAR_PCM, sample_rate_hertz=RATE_HZ)
        script: Script = [req(config=cfg)]
        for chunk in _chunks(inp.pcm[0], 10):  # 1 s of audio, real time: streams overlap
            script += [0.1, req(audio=chunk)]
        cases += [Case("Speech/StreamingRecognize", "overload", "speech.StreamingRecognize", script)] * n_streams
    return cases


# ----------------------------------------------------------------------------------------------------
# The server: memory and metrics


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def scrape(metrics_address: str) -> dict[str, Any]:
    """Open streams, queued items and the server's own count of answers by code."""
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10) as r:
        text = r.read().decode()
    streams = queued = 0.0
    codes: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "nui_streams_in_flight":
                streams += sample.value
            elif sample.name == "nui_queue_depth":
                queued += sample.value
            elif sample.name == "nui_requests_total":
                codes[sample.labels["code"]] += int(sample.value)
    return {"streams_in_flight": streams, "queue_depth": queued, "server_codes": dict(sorted(codes.items()))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def git_version() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", "server", "bench"))}


@contextlib.contextmanager
def fuzz_repo(source: Path, streaming_preset: str, seed: int) -> Any:
    """A temporary repository linking every model of `source`, plus a random-weight streaming model."""
    with tempfile.TemporaryDirectory(prefix="nui-bench-fuzz-") as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        for model_dir in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
            (repo / model_dir.name).symlink_to(model_dir.resolve(), target_is_directory=True)
        streaming_source = "repository" if (repo / STREAMING_MODEL).exists() else None
        if streaming_source is None and streaming_preset != "none":
            import torch

            from engines.export_speech_streaming import export_speech_ctc_streaming
            from models.speech_ctc import build, get_preset

            torch.manual_seed(seed)
            export_speech_ctc_streaming(build(get_preset(streaming_preset)).eval(), repo, STREAMING_MODEL, 1,
                                        chunk_ms=120.0)
            streaming_source = f"random weights, preset {streaming_preset}"
        yield repo, Path(tmp), streaming_source


# ----------------------------------------------------------------------------------------------------
# Report


@dataclass
class Run:
    records: list[Record] = field(default_factory=list)
    rss_mb: list[tuple[str, int, float]] = field(default_factory=list)  # (phase, calls done, MB)
    mismatches: list[str] = field(default_factory=list)


def table(records: Sequence[Record]) -> str:
    codes = sorted({r.code for r in records}, key=lambda c: (c != "OK", c))
    per_rpc: dict[str, Counter[str]] = {}
    for r in records:
        per_rpc.setdefault(r.rpc, Counter())[r.code] += 1
    width = max(len(k) for k in per_rpc) if per_rpc else 10
    short = {c: c.replace("RESOURCE_EXHAUSTED", "RES_EXH").replace("FAILED_PRECONDITION", "FAILED_PRE")
             .replace("INVALID_ARGUMENT", "INVALID").replace("DEADLINE_EXCEEDED", "DEADLINE") for c in codes}
    head = f"{'rpc':<{width}} {'calls':>6} " + " ".join(f"{short[c]:>10}" for c in codes)
    lines = [head, "-" * len(head)]
    for rpc, counts in sorted(per_rpc.items()):
        lines.append(f"{rpc:<{width}} {sum(counts.values()):>6} " + " ".join(f"{counts[c] or '':>10}" for c in codes))
    total = Counter(r.code for r in records)
    lines.append(f"{'all':<{width}} {len(records):>6} " + " ".join(f"{total[c]:>10}" for c in codes))
    return "\n".join(lines)


def traceback_ends(log: str) -> list[str]:
    """The exception line ending each traceback in the server log."""
    ends, inside = [], False
    for line in log.splitlines():
        if line.startswith("Traceback (most recent call last)"):
            inside = True
        elif inside and line and not line.startswith((" ", "\t", "During handling", "The above exception")):
            ends.append(line[:300])
            inside = False
    return ends


def first_traceback(log: str, context_lines: int = 3) -> str:
    """The first traceback of the server log with the lines logged just before it ("" when none)."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j] and not lines[j].startswith(
                (" ", "\t", "Traceback", "During handling", "The above exception"))), len(lines) - 1)
            return "\n".join(lines[max(0, i - context_lines): end + 1])[-6000:]
    return ""


def findings(run: Run, end_metrics: dict[str, Any], server_log: str, exit_status: int) -> list[str]:
    out = [f"{r.phase} {r.rpc} [{r.kind}]: {r.code} {r.detail}" for r in run.records if r.code in BAD_CODES]
    out += [f"fuzz {r.rpc} [{r.kind}]: no answer before its {r.deadline_s:g} s deadline"
            for r in run.records if r.phase == "fuzz" and r.code == "DEADLINE_EXCEEDED"]
    out += [f"{r.phase} {r.rpc}: answered {r.elapsed_s - r.deadline_s:.1f} s after its deadline"
            for r in run.records if r.elapsed_s > r.deadline_s + 1.0 and r.code != "HANG"]
    server_bad = {c: n for c, n in end_metrics["server_codes"].items() if c in ("INTERNAL", "UNKNOWN")}
    if server_bad:
        out.append(f"the server's own count of answers (nui_requests_total) has {server_bad}")
    if end_metrics["streams_in_flight"]:
        out.append(f"{end_metrics['streams_in_flight']:g} streams still open at the end")
    if end_metrics["queue_depth"]:
        out.append(f"{end_metrics['queue_depth']:g} items still queued at the end")
    out += run.mismatches
    tracebacks = traceback_ends(server_log)
    if tracebacks:
        out.append(f"{len(tracebacks)} tracebacks in the server log, ending in: {sorted(set(tracebacks))}")
    if exit_status != 0:
        out.append(f"the server exited with {exit_status} on SIGTERM")
    return out


def plot_rss(run: Run, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = list(range(len(run.rss_mb)))
    ax.plot(xs, [mb for _, _, mb in run.rss_mb], "o-")
    ax.set_xticks(xs, [f"{p}\n{n}" for p, n, _ in run.rss_mb], fontsize=7)
    ax.set_ylabel("server RSS (MB)")
    ax.set_xlabel("phase / calls done in it")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/fuzz.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, default=ROOT / "model_repository", help="model repository to serve")
    p.add_argument("--calls", type=int, default=1500, help="malformed calls in the fuzz phase")
    p.add_argument("--concurrency", type=int, default=8, help="fuzz calls in flight at a time")
    p.add_argument("--seed", type=int, default=0, help="draws the cases (same seed, same cases)")
    p.add_argument("--deadline-s", type=float, default=30.0, help="deadline of each fuzz / valid call")
    p.add_argument("--overload-calls", type=int, default=256, help="valid Recognize calls sent all at once")
    p.add_argument("--overload-deadline-s", type=float, default=20.0)
    p.add_argument("--overload-s", type=float, default=0.0,
                   help="keep every overload caller calling again for this long (closed loop); 0: one burst")
    p.add_argument("--max-queue-size", type=int, default=16, help="the server's queue per model version")
    p.add_argument("--max-streams", type=int, default=8, help="the server's open-stream limit")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--streaming-preset", default="tiny-streaming",
                   help="random-weight streaming model added when --repo has none; 'none': no streaming model")
    p.add_argument("--intra-op-threads", type=int, default=1)
    p.add_argument("--quick-clips", action="store_true", help="one synthesized clip instead of two")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results; the PNG goes next to it")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if min(args.calls, args.concurrency, args.overload_calls, args.max_queue_size, args.max_streams) < 1:
        print("bench/fuzz.py: error: counts and sizes must be >= 1", file=sys.stderr)
        return 1
    command = shlex.join(["python", "bench/fuzz.py", *argv])
    started = time.perf_counter()
    machine = sb.machine_info()
    run = Run()
    with fuzz_repo(args.repo, args.streaming_preset, args.seed) as (repo, tmp, streaming_source):
        clips = sb.make_clips(1 if args.quick_clips else 2, args.seed)
        streaming = streaming_source is not None
        metrics_port = free_port()
        setup = sb.ServerSetup("fuzz", args.max_batch_size, 5.0)
        extra = ["--metrics-port", str(metrics_port), "--max-queue-size", str(args.max_queue_size),
                 "--max-streams", str(args.max_streams), "--max-stream-s", "20", "--stream-idle-s", "2"]
        server = sb.ServerProcess(repo, setup, args.intra_op_threads, tmp / "server.log", extra_args=extra)
        pid = server._proc.pid
        metrics_address = f"127.0.0.1:{metrics_port}"
        try:
            inp = make_inputs(repo, clips, server.address)
            run.rss_mb.append(("start", 0, rss_mb(pid)))
            valid = valid_cases(inp, streaming)
            before = asyncio.run(run_cases(server.address, valid, 1, args.deadline_s, "before"))
            run.records += [r for r, _ in before]
            run.rss_mb.append(("before", len(valid), rss_mb(pid)))

            cases = draw_cases(args.calls, args.seed, inp, streaming)
            step = max(1, args.calls // 10)
            with tqdm(total=args.calls, desc="fuzz", unit="call", disable=None) as bar:
                done = 0

                def progress(_: int) -> None:
                    nonlocal done
                    done += 1
                    bar.update(1)
                    if done % step == 0:
                        run.rss_mb.append(("fuzz", done, rss_mb(pid)))

                fuzzed = asyncio.run(run_cases(server.address, cases, args.concurrency, args.deadline_s, "fuzz",
                                               progress))
            run.records += [r for r, _ in fuzzed]

            over = overload_cases(inp, args.overload_calls, 2 * args.max_streams, streaming)
            plain = [c for c in over if c.deadline_s is None][:1]
            unloaded = asyncio.run(run_cases(server.address, plain * 20, 1, args.overload_deadline_s,
                                             "unloaded"))
            run.records += [r for r, _ in unloaded]
            loaded = asyncio.run(run_cases(server.address, over, len(over), args.overload_deadline_s, "overload",
                                           repeat_s=args.overload_s))
            run.records += [r for r, _ in loaded]
            run.rss_mb.append(("overload", len(loaded), rss_mb(pid)))

            after = asyncio.run(run_cases(server.address, valid, 1, args.deadline_s, "after"))
            run.records += [r for r, _ in after]
            for case, (rb, b), (ra, a) in zip(valid, before, after, strict=True):
                if rb.code != "OK" or ra.code != "OK":
                    run.mismatches.append(f"valid {case.rpc} [{case.kind}]: {rb.code} before, {ra.code} after")
                elif not same_answer(answer_digest(b), answer_digest(a)):
                    run.mismatches.append(f"valid {case.rpc} [{case.kind}]: the answer changed after the abuse")
            time.sleep(0.5)  # let cancelled streams' handlers finish before reading the gauges
            end_metrics = scrape(metrics_address)
            run.rss_mb.append(("end", 0, rss_mb(pid)))
        finally:
            exit_status = server.stop()
        server_log = (tmp / "server.log").read_text(errors="replace")

    found = findings(run, end_metrics, server_log, exit_status)
    baseline_ms = [1e3 * r.elapsed_s for r in run.records if r.phase == "unloaded" and r.code == "OK"]
    over_ok = [r for r in run.records if r.phase == "overload" and r.rpc == "Speech/Recognize" and r.code == "OK"]
    over_ms = [1e3 * r.elapsed_s for r in over_ok]
    overload = {
        "recognize_calls": args.overload_calls, "streams": 2 * args.max_streams if streaming else 0,
        "codes": dict(Counter(f"{r.rpc} {r.code}" for r in run.records if r.phase == "overload")),
        "lost": sum(r.code in ("HANG", "LOST") for r in run.records if r.phase == "overload"),
        "late_answers": sum(r.elapsed_s > r.deadline_s + 1.0 for r in run.records if r.phase == "overload"),
        "seconds": args.overload_s, "calls_made": len(loaded),
        "unloaded_recognize_p50_ms": float(np.percentile(baseline_ms, 50)) if baseline_ms else math.nan,
        "unloaded_recognize_p99_ms": float(np.percentile(baseline_ms, 99)) if baseline_ms else math.nan,
        "admitted_recognize_p50_ms": float(np.percentile(over_ms, 50)) if over_ms else math.nan,
        "admitted_recognize_p99_ms": float(np.percentile(over_ms, 99)) if over_ms else math.nan,
    }
    fuzz_records = [r for r in run.records if r.phase == "fuzz"]
    after_fuzz_mb = [mb for p, _, mb in run.rss_mb if p == "fuzz"][-1] if args.calls >= 10 else math.nan
    fuzz_mb = [mb for p, _, mb in run.rss_mb if p == "fuzz"]
    rss: dict[str, Any] = {
        # a leak grows on; allocator high water levels off: growth over the fuzz phase's second half
        "fuzz_second_half_growth_mb": fuzz_mb[-1] - fuzz_mb[len(fuzz_mb) // 2 - 1] if len(fuzz_mb) >= 2 else math.nan,
        "start_mb": run.rss_mb[0][2], "after_valid_mb": run.rss_mb[1][2], "after_fuzz_mb": after_fuzz_mb,
        "after_overload_mb": next(mb for p, _, mb in run.rss_mb if p == "overload"), "end_mb": run.rss_mb[-1][2],
        "samples": run.rss_mb}
    print(f"\nFuzz phase: status codes per RPC (seed {args.seed}, {len(fuzz_records)} calls, "
          f"{args.concurrency} at a time)")
    print(table(fuzz_records))
    repeat = f", each calling again for {args.overload_s:g} s" if args.overload_s else ""
    print(f"\nOverload: {args.overload_calls} Recognize at once (queue {args.max_queue_size}), "
          f"{overload['streams']} streams (limit {args.max_streams}){repeat}")
    print(table([r for r in run.records if r.phase == "overload"]))
    print(f"lost {overload['lost']}, late {overload['late_answers']}; admitted Recognize p50/p99 "
          f"{overload['admitted_recognize_p50_ms']:.0f}/{overload['admitted_recognize_p99_ms']:.0f} ms, "
          f"unloaded (20 calls one at a time) {overload['unloaded_recognize_p50_ms']:.0f}/"
          f"{overload['unloaded_recognize_p99_ms']:.0f} ms")
    print(f"\nRSS MB: start {rss['start_mb']:.0f}, after valid {rss['after_valid_mb']:.0f}, after fuzz "
          f"{rss['after_fuzz_mb']:.0f}, after overload {rss['after_overload_mb']:.0f}, "
          f"end {rss['end_mb']:.0f}; growth over the second half of the fuzz phase "
          f"{rss['fuzz_second_half_growth_mb']:+.0f}")
    print(f"at the end: {end_metrics['streams_in_flight']:g} streams in flight, {end_metrics['queue_depth']:g} "
          f"queued; valid requests after the abuse: {len(valid) - len(run.mismatches)}/{len(valid)} same answer; "
          f"server exit status {exit_status}")
    print(f"load average {machine['load_average_at_start']} at start, {list(os.getloadavg())} at end")
    client_codes = Counter(r.code for r in run.records)
    differences = {c: (client_codes.get(c, 0), end_metrics["server_codes"].get(c, 0))
                   for c in sorted(set(client_codes) | set(end_metrics["server_codes"]))
                   if client_codes.get(c, 0) != end_metrics["server_codes"].get(c, 0)}
    # expected: CLIENT_INTERNAL (the server sent the real code), RESOURCE_EXHAUSTED of over-limit messages
    # (refused by grpc before any handler), the probes below the phases (ModelInfer per model)
    print(f"codes the client saw vs the server counted, where they differ: {differences}")
    print(f"\nFINDINGS: {len(found)}" + "".join(f"\n  {f}" for f in found[:40]))
    report = {
        "benchmark": "fuzz", "command": command, "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": git_version(), "elapsed_s": time.perf_counter() - started,
        "machine": {**machine, "load_average_at_end": list(os.getloadavg())},
        "models": {name: {"version": m.get("version"), "task": m.get("task")} for name, m in inp.manifests.items()},
        "streaming_model": streaming_source, "settings": vars(args) | {"repo": str(args.repo), "out": str(args.out)},
        "server": {"command": shlex.join(server.command), "exit_status": exit_status},
        "fuzz": {"calls": len(fuzz_records), "codes": dict(Counter(r.code for r in fuzz_records)),
                 "by_rpc": {rpc: dict(Counter(r.code for r in fuzz_records if r.rpc == rpc))
                            for rpc in sorted({r.rpc for r in fuzz_records})},
                 "by_kind": {f"{rpc} | {kind}": dict(Counter(r.code for r in fuzz_records
                                                             if (r.rpc, r.kind) == (rpc, kind)))
                             for rpc, kind in sorted({(r.rpc, r.kind) for r in fuzz_records})}},
        "overload": overload, "rss": rss, "end_metrics": end_metrics,
        "client_vs_server_codes": {c: {"client": n, "server": m} for c, (n, m) in differences.items()},
        "valid_after_abuse": {"requests": len(valid), "mismatches": run.mismatches}, "findings": found,
        "server_log_first_traceback": first_traceback(server_log),
    }
    png = args.out.with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    plot_rss(run, png, f"nui serve RSS during bench/fuzz.py (seed {args.seed}, {args.calls} calls)")
    report["plot"] = str(png)
    sb.write_json(args.out, report)
    print(f"wrote {args.out} and {png}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

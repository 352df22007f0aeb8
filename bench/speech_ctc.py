"""Speech CTC benchmark: offline real-time factor, and gRPC server throughput with the batcher on vs off.

    python bench/speech_ctc.py [--repo model_repository] [--model speech_ctc] \
        [--out bench/results/speech_ctc.json] [--quick]
    python bench/speech_ctc.py --random-preset small        # no trained model needed: random weights

Clips: a fixed, seeded set of synthesized English sentences (2-8 s, four voices of espeak-ng, flite and
festival), made at start-up, so no corpus is needed.

Part 1, offline: an in-process `OnnxRuntimeEngine` (CPU) runs the clips one at a time and in padded
batches of 8 and 16; each row reports audio seconds per wall second ("x real time"), greedy decoding
(`models.ctc_text.greedy_decode` on each valid slice) included. When the model ships an LM, a beam +
LM row is added. Warm-up runs are excluded; each row measures at least `--min-measure-s`.

Part 2, server: `python -m nui serve` is started as a subprocess twice, batching on
(`--max-batch-size 16 --max-queue-delay-ms 10`) and off (`--max-batch-size 1`). This process loads it
with a `grpc.aio` client: C workers (`--concurrency`, default 1,8,32) send greedy `Recognize` requests
(WAV bytes, clips round-robin) back to back. Throughput counts the requests that complete in the
`--duration-s` window after `--warmup-s`; latency percentiles are over the requests started in it.
Every non-OK status of the whole run (warm-up and drain included) is counted by code, and any makes
the exit status 1. Each server stops on SIGTERM.

Prints both tables, writes the JSON (numbers, machine, model, exact command) to `--out` and a PNG of
throughput and p99 latency vs concurrency next to it. Default run: about 3 minutes; `--quick`: about 1.
The client shares the CPU with the server: on a small machine its cost is part of the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import io
import json
import logging
import os
import platform
import selectors
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import soundfile as sf
import soxr
from tqdm import tqdm

from engines.engine import Engine, default_intra_op_threads, load_engine
from engines.manifest import version_dir
from models.ctc_text import greedy_decode
from proto import speech_pb2, speech_pb2_grpc
from server.speech_ctc import (
    INPUT_AUDIO,
    INPUT_LENGTHS,
    OUTPUT_LENGTHS,
    OUTPUT_LOG_PROBS,
    SpeechSpec,
    load_lm_decoder,
    pad_batch,
)
from training.speech_ctc.synth import (
    SAMPLE_RATE_HZ,
    SynthesisError,
    get_voice,
    normalize_peak,
    random_prosody,
    synthesize_many,
    trim_silence,
)

logger = logging.getLogger("bench.speech_ctc")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "speech_ctc.json"

# Sentence i is spoken by VOICES[i % len(VOICES)]; lengths are spread so the clips span 2-8 s.
SENTENCES = (
    "Turn on the kitchen lights, please.",
    "What is the weather like in Paris tomorrow morning?",
    "I have had a sore throat and a mild fever since Monday, and it is getting worse.",
    "Set a timer for twenty minutes and remind me to check the oven before the guests arrive.",
    "The quick brown fox jumps over the lazy dog.",
    "Please read me the last three messages from my sister, and then tell me what time it is in London.",
    "My left knee hurts when I walk up the stairs.",
    "Describe the picture of the dog running on the beach, and tell me whether there are any people or "
    "boats in the background.",
    "How many people live in the largest city of Canada?",
    "Play some quiet music in the living room while I read, but turn it off automatically when it gets "
    "past eleven o'clock at night.",
    "The train to the airport leaves at a quarter past seven every evening.",
    "Call the doctor's office and ask if they are open on Saturday morning, because I need to pick up my "
    "new glasses and a prescription.",
    "A small red boat is floating on a calm lake under a cloudy sky.",
    "I feel dizzy in the morning, and sometimes my hands shake a little when I have not eaten anything "
    "since the night before.",
    "Add milk, eggs, bread and two kinds of cheese to my shopping list.",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief.",
)
VOICES = ("espeak-en-us", "flite-slt", "espeak-en-gb+f3", "festival-kal_diphone")
MAX_CLIP_S = 8.0


@dataclass(frozen=True)
class ServerSetup:
    """One `nui serve` configuration under test."""

    name: str
    max_batch_size: int
    max_queue_delay_ms: float


SERVER_CONFIGS = (ServerSetup("batching on", 16, 10.0), ServerSetup("batching off", 1, 10.0))


@dataclass(frozen=True)
class Settings:
    """What one bench run measures and for how long (after --quick and explicit flags are applied)."""

    batch_sizes: tuple[int, ...]  # offline rows
    min_measure_s: float  # offline: measured seconds per row, at least
    concurrency: tuple[int, ...]  # server: concurrent client workers per run
    warmup_s: float  # server: load before the measured window, per run
    duration_s: float  # server: measured window per run
    request_timeout_s: float  # server: gRPC deadline per request
    intra_op_threads: int  # ONNX Runtime threads, offline and in the server
    clips: int
    seed: int


@dataclass(frozen=True)
class Clip:
    voice_id: str
    text: str
    samples: np.ndarray  # (S,) float32 at 16 kHz, exactly what the WAV bytes decode to
    wav: bytes  # 16-bit PCM WAV, as sent to the server

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE_HZ


@dataclass(frozen=True)
class ModelSource:
    repo: Path
    model: str
    source: str  # "repository" or "random-preset:<name>"


@dataclass(frozen=True)
class OfflineRow:
    mode: str
    batch_size: int
    decoder: str  # "greedy" or "beam+lm"
    clips_run: int
    audio_s: float  # valid audio processed in the measured runs
    wall_s: float  # padding + engine + decoding
    engine_s: float
    decode_s: float
    padding_share: float  # padded samples / all samples fed to the engine

    @property
    def x_real_time(self) -> float:
        return self.audio_s / self.wall_s

    @property
    def ms_per_clip(self) -> float:
        return 1e3 * self.wall_s / self.clips_run

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "x_real_time": self.x_real_time, "ms_per_clip": self.ms_per_clip}


@dataclass
class LoadResult:
    """Every request of one server run: (start, end, status code name, audio seconds) per request."""

    records: list[tuple[float, float, str, float]] = field(default_factory=list)
    window: tuple[float, float] = (0.0, 0.0)  # perf_counter instants of the measured window


@dataclass(frozen=True)
class ServerRow:
    config: str
    max_batch_size: int
    max_queue_delay_ms: float
    concurrency: int
    requests: int  # OK requests completed in the window
    window_s: float
    audio_s: float
    req_per_s: float
    audio_s_per_s: float
    latency_samples: int  # OK requests started in the window (they may finish after it)
    p50_ms: float
    p99_ms: float
    mean_ms: float
    errors: dict[str, int]  # non-OK status code name -> count, whole run; RESOURCE_EXHAUSTED included
    resource_exhausted: int
    total_requests: int  # every request sent, warm-up and drain included

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


# ----------------------------------------------------------------------------------------------------
# Clips and the model


def make_clips(n: int, seed: int) -> list[Clip]:
    """The first `n` of SENTENCES, synthesized with seeded prosody, trimmed, -3 dBFS peak, at most 8 s."""
    if not 1 <= n <= len(SENTENCES):
        raise ValueError(f"--clips must be in 1..{len(SENTENCES)}, got {n}")
    rng = np.random.default_rng(seed)
    audio: dict[int, np.ndarray] = {}
    for v, voice_id in enumerate(VOICES):
        voice = get_voice(voice_id)
        indices = list(range(v, n, len(VOICES)))
        if not indices:
            continue
        prosodies = [random_prosody(voice, rng) for _ in indices]
        results = synthesize_many(voice, [SENTENCES[i] for i in indices], prosodies)
        for i, result in zip(indices, results, strict=True):
            if isinstance(result, SynthesisError):
                raise SynthesisError(f"cannot synthesize the bench clips: {result}") from result
            audio[i] = normalize_peak(trim_silence(result))[: int(MAX_CLIP_S * SAMPLE_RATE_HZ)]
    clips = []
    for i in range(n):
        buf = io.BytesIO()
        sf.write(buf, audio[i], SAMPLE_RATE_HZ, format="WAV", subtype="PCM_16")
        wav = buf.getvalue()
        samples, _ = sf.read(io.BytesIO(wav), dtype="float32")
        clips.append(Clip(VOICES[i % len(VOICES)], SENTENCES[i], samples, wav))
    return clips


def publish_random_model(preset: str, repo: Path, model: str, seed: int) -> None:
    """Export `build(get_preset(preset))` with seeded random weights to `<repo>/<model>/1` (parity-gated)."""
    import torch

    from engines.export_speech import export_speech_ctc
    from models.speech_ctc import build, get_preset

    cfg = get_preset(preset)
    torch.manual_seed(seed)
    export_speech_ctc(build(cfg), repo, model, version=1)


# ----------------------------------------------------------------------------------------------------
# Part 1: offline real-time factor


def _batches(clips: Sequence[Clip], batch_size: int) -> list[list[Clip]]:
    """Consecutive groups in clip order (a mix of lengths, as a server sees them), wrapping around."""
    n_batches = -(-len(clips) // batch_size)
    return [[clips[(b * batch_size + j) % len(clips)] for j in range(batch_size)] for b in range(n_batches)]


def measure_offline(engine: Engine, clips: Sequence[Clip], batch_size: int, min_measure_s: float,
                    decode: Callable[[np.ndarray], str], decoder_name: str) -> OfflineRow:
    """Run every batch once (warm-up), then whole passes over the batches until min_measure_s is spent."""
    batches = _batches(clips, batch_size)
    padded = [pad_batch([c.samples for c in batch]) for batch in batches]
    for audio, lengths in padded:
        engine.run({INPUT_AUDIO: audio, INPUT_LENGTHS: lengths})
    clips_run, audio_s, engine_s, decode_s, wall_s = 0, 0.0, 0.0, 0.0, 0.0
    valid, total = 0, 0
    while wall_s < min_measure_s:
        for batch in batches:
            t0 = time.perf_counter()
            audio, lengths = pad_batch([c.samples for c in batch])
            out = engine.run({INPUT_AUDIO: audio, INPUT_LENGTHS: lengths})
            t1 = time.perf_counter()
            log_probs, out_lengths = out[OUTPUT_LOG_PROBS], out[OUTPUT_LENGTHS]  # (B, T', V), (B,)
            for i in range(len(batch)):
                decode(log_probs[i, : int(out_lengths[i])])
            t2 = time.perf_counter()
            engine_s += t1 - t0
            decode_s += t2 - t1
            wall_s += t2 - t0
            clips_run += len(batch)
            audio_s += sum(c.duration_s for c in batch)
            valid += int(lengths.sum())
            total += audio.size
    mode = "one clip at a time" if batch_size == 1 else f"padded batches of {batch_size}"
    return OfflineRow(mode=mode, batch_size=batch_size, decoder=decoder_name, clips_run=clips_run,
                      audio_s=audio_s, wall_s=wall_s, engine_s=engine_s, decode_s=decode_s,
                      padding_share=1.0 - valid / total)


def run_offline(engine: Engine, source: ModelSource, clips: Sequence[Clip], settings: Settings) -> list[OfflineRow]:
    """The greedy rows of --batch-sizes, plus a beam + LM row at the largest batch when the model has an LM."""
    manifest = engine.manifest
    spec = SpeechSpec.from_config(manifest.config)
    if spec.sample_rate_hz != SAMPLE_RATE_HZ:
        clips = [Clip(c.voice_id, c.text, np.asarray(soxr.resample(c.samples, SAMPLE_RATE_HZ,
                                                                   spec.sample_rate_hz), np.float32), c.wav)
                 for c in clips]
    plan: list[tuple[int, str, Callable[[np.ndarray], str]]] = [
        (b, "greedy", greedy_decode) for b in settings.batch_sizes]
    lm = load_lm_decoder(version_dir(source.repo, source.model, engine.version), manifest)
    if lm is not None:
        def beam(log_probs: np.ndarray) -> str:
            return lm.decode(log_probs, spec.frame_s, words=False, max_alternatives=1)[0].transcript
        plan.append((max(settings.batch_sizes), "beam+lm", beam))
    rows = []
    with tqdm(plan, desc="offline", unit="row", leave=False, disable=None) as bar:
        for batch_size, name, decode in bar:
            bar.set_postfix_str(f"batch {batch_size}, {name}")
            rows.append(measure_offline(engine, clips, batch_size, settings.min_measure_s, decode, name))
    return rows


# ----------------------------------------------------------------------------------------------------
# Part 2: the server under load


class ServerProcess:
    """`python -m nui serve` on 127.0.0.1, port 0; the address is read from its `listening on` line."""

    def __init__(self, repo: Path, config: ServerSetup, intra_op_threads: int, log_path: Path,
                 start_timeout_s: float = 120.0, extra_args: Sequence[str] = (),
                 command: Sequence[str] | None = None, env: dict[str, str] | None = None) -> None:
        """`command` replaces `nui serve` with a peer server that prints the same `listening on` line."""
        self.command = list(command) if command is not None else [
            sys.executable, "-m", "nui", "serve", "--repo", str(repo), "--host", "127.0.0.1",
            "--port", "0", "--max-batch-size", str(config.max_batch_size),
            "--max-queue-delay-ms", f"{config.max_queue_delay_ms:g}",
            "--intra-op-threads", str(intra_op_threads), "--log-level", "WARNING",
            "--max-queue-wait-ms", "0",  # closed-loop throughput: no shedding by predicted wait (bench/overload.py)
            *extra_args]
        self._log_path = log_path
        self._log = log_path.open("wb")
        self._proc = subprocess.Popen(self.command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=self._log, env=env)
        try:
            line = self._read_line(start_timeout_s)
            if not line.startswith("listening on "):
                raise RuntimeError(f"unexpected first line from the server: {line!r}")
            self.address = line.split()[-1]
        except BaseException:
            self._proc.kill()
            self._proc.wait()
            self._log.close()
            raise

    def _read_line(self, timeout_s: float) -> str:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    raise RuntimeError(f"the server did not report ready within {timeout_s:g} s; "
                                       f"log: {self.log_tail()}")
                chunk = os.read(fd, 4096)
                if not chunk:
                    code = self._proc.wait()
                    raise RuntimeError(f"the server exited with {code} before it was ready: {self.log_tail()}")
                buf += chunk
        return buf.split(b"\n", 1)[0].decode(errors="replace").strip()

    def cpu_s(self) -> float:
        """CPU seconds (user + system, all threads) the server has used so far: a measure of its work that
        other processes on a shared machine do not inflate, unlike wall time."""
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, n_chars: int = 2000) -> str:
        if not self._log.closed:
            self._log.flush()
        return self._log_path.read_text(errors="replace")[-n_chars:]

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait (graceful shutdown); SIGKILL after timeout_s. The exit status (0: clean)."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("server did not stop within %g s of SIGTERM; killing it", timeout_s)
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._log.close()
        return int(self._proc.returncode)


async def closed_loop(send: Callable[[int], Awaitable[object]], audio_s: Sequence[float], concurrency: int,
                      warmup_s: float, duration_s: float,
                      on_progress: Callable[[int, float], None] | None = None) -> LoadResult:
    """C workers call `send(clip index)` back to back until warmup_s + duration_s have passed, then wait
    for the calls in flight. A gRPC error is recorded by its code name; any other exception propagates.
    Worker w starts at clip w, so a batch holds a mix of lengths."""
    result = LoadResult()
    start = time.perf_counter()
    result.window = (start + warmup_s, start + warmup_s + duration_s)
    end = result.window[1]

    async def worker(index: int) -> None:
        k = index
        while time.perf_counter() < end:
            clip = k % len(audio_s)
            k += 1
            t0 = time.perf_counter()
            try:
                await send(clip)
                code = "OK"
            except grpc.aio.AioRpcError as e:
                code = e.code().name
            result.records.append((t0, time.perf_counter(), code, audio_s[clip]))

    async def ticker() -> None:
        while True:
            await asyncio.sleep(0.5)
            if on_progress is not None:
                on_progress(len(result.records), time.perf_counter() - start)

    tick = asyncio.create_task(ticker())
    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        tick.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tick
    return result


async def drive_load(address: str, requests: Sequence[tuple[speech_pb2.RecognizeRequest, float]],
                     concurrency: int, warmup_s: float, duration_s: float, timeout_s: float,
                     on_progress: Callable[[int, float], None] | None = None) -> LoadResult:
    """`closed_loop` of `Recognize` calls over one gRPC channel, each bounded by timeout_s."""
    options = [("grpc.max_receive_message_length", 32 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        stub = speech_pb2_grpc.SpeechStub(channel)

        async def send(clip: int) -> object:
            return await stub.Recognize(requests[clip][0], timeout=timeout_s)

        return await closed_loop(send, [audio_s for _, audio_s in requests], concurrency, warmup_s,
                                 duration_s, on_progress)


def summarize(config: ServerSetup, concurrency: int, result: LoadResult) -> ServerRow:
    """Throughput: OK requests completed inside the window. Latency: OK requests started inside it (in a
    closed loop those all queued behind a full set of C requests, so the start-up ramp is left out)."""
    t0, t1 = result.window
    completed = [r for r in result.records if r[2] == "OK" and t0 <= r[1] < t1]
    started = [r for r in result.records if r[2] == "OK" and t0 <= r[0] < t1]
    latencies_ms = np.array([1e3 * (end - start) for start, end, _, _ in started])
    errors = Counter(code for _, _, code, _ in result.records if code != "OK")
    audio_s = sum(r[3] for r in completed)
    window_s = t1 - t0
    p50, p99 = np.percentile(latencies_ms, [50, 99]).tolist() if len(latencies_ms) else [float("nan")] * 2
    return ServerRow(config=config.name, max_batch_size=config.max_batch_size,
                     max_queue_delay_ms=config.max_queue_delay_ms, concurrency=concurrency,
                     requests=len(completed), window_s=window_s, audio_s=audio_s,
                     req_per_s=len(completed) / window_s, audio_s_per_s=audio_s / window_s,
                     latency_samples=len(latencies_ms), p50_ms=float(p50), p99_ms=float(p99),
                     mean_ms=float(latencies_ms.mean()) if len(latencies_ms) else float("nan"),
                     errors=dict(sorted(errors.items())), resource_exhausted=errors.get("RESOURCE_EXHAUSTED", 0),
                     total_requests=len(result.records))


def _show_progress(bar: tqdm, n_done: int, elapsed_s: float) -> None:
    bar.n = min(bar.total, elapsed_s)
    bar.set_postfix_str(f"{n_done} requests", refresh=True)


def run_server(source: ModelSource, clips: Sequence[Clip], settings: Settings,
               workdir: Path) -> tuple[list[ServerRow], list[dict[str, Any]]]:
    """Every server configuration x concurrency; the rows and, per configuration, its command and exit code."""
    config = speech_pb2.RecognitionConfig(decoder=speech_pb2.DECODER_GREEDY, model=source.model)
    requests = [(speech_pb2.RecognizeRequest(config=config, audio=c.wav), c.duration_s) for c in clips]
    rows: list[ServerRow] = []
    servers: list[dict[str, Any]] = []
    for server_config in SERVER_CONFIGS:
        log_path = workdir / f"server-{server_config.max_batch_size}.log"
        server = ServerProcess(source.repo, server_config, settings.intra_op_threads, log_path)
        try:
            for concurrency in settings.concurrency:
                total_s = settings.warmup_s + settings.duration_s
                desc = f"{server_config.name}, C={concurrency}"
                with tqdm(total=round(total_s, 1), desc=desc, unit="s", leave=False, disable=None,
                          bar_format="{desc}: {bar} {n:.1f}/{total:.1f} s{postfix}") as bar:
                    result = asyncio.run(drive_load(server.address, requests, concurrency, settings.warmup_s,
                                                    settings.duration_s, settings.request_timeout_s,
                                                    functools.partial(_show_progress, bar)))
                row = summarize(server_config, concurrency, result)
                rows.append(row)
                logger.info("%s C=%d: %.1f req/s, p99 %.0f ms, %d errors", row.config, concurrency,
                            row.req_per_s, row.p99_ms, row.error_count)
        finally:
            exit_code = server.stop()
        if exit_code != 0:
            logger.warning("%s: the server exited with %d: %s", server_config.name, exit_code, server.log_tail())
        servers.append({**asdict(server_config), "command": shlex.join(server.command), "exit_code": exit_code})
    return rows, servers


# ----------------------------------------------------------------------------------------------------
# Report


def format_tables(offline: Sequence[OfflineRow], server: Sequence[ServerRow]) -> str:
    lines = ["Offline (ONNX Runtime in process, decoding included)",
             f"{'run':<26} {'decoder':<8} {'x real time':>11} {'ms/clip':>8} {'decode %':>8} {'padding %':>9}"]
    for r in offline:
        lines.append(f"{r.mode:<26} {r.decoder:<8} {r.x_real_time:>11.1f} {r.ms_per_clip:>8.1f} "
                     f"{100 * r.decode_s / r.wall_s:>8.1f} {100 * r.padding_share:>9.1f}")
    lines += ["", "Server (gRPC Recognize, greedy; errors: all non-OK, of which RESOURCE_EXHAUSTED in brackets)",
              f"{'config':<14} {'C':>3} {'req/s':>8} {'audio s/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>10}"]
    for s in server:
        errors = f"{s.error_count} ({s.resource_exhausted})"
        lines.append(f"{s.config:<14} {s.concurrency:>3} {s.req_per_s:>8.1f} {s.audio_s_per_s:>10.1f} "
                     f"{s.p50_ms:>8.0f} {s.p99_ms:>8.0f} {errors:>10}")
    return "\n".join(lines)


def plot(rows: Sequence[ServerRow], path: Path, title: str) -> None:
    """Throughput and p99 latency vs concurrency, one line per server configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, (ax_tp, ax_lat) = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(r.config for r in rows):
        mine = [r for r in rows if r.config == name]
        cs = [r.concurrency for r in mine]
        ax_tp.plot(cs, [r.audio_s_per_s for r in mine], marker="o", label=name)
        ax_lat.plot(cs, [r.p99_ms for r in mine], marker="o", label=name)
    for ax, ylabel in ((ax_tp, "throughput (audio s / s)"), (ax_lat, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r.concurrency for r in rows}), [str(c) for c in sorted({r.concurrency for r in rows})])
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax_tp.set_ylim(bottom=0)
    ax_lat.set_yscale("log")
    plain = FuncFormatter(lambda value, _pos: f"{value:g}")
    ax_lat.yaxis.set_major_formatter(plain)
    ax_lat.yaxis.set_minor_formatter(plain)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine_info() -> dict[str, Any]:
    cpu_model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {"cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)), "cpu_model": cpu_model,
            "platform": platform.platform(), "python": platform.python_version(),
            "onnxruntime": ort.__version__, "numpy": np.__version__, "grpcio": grpc.__version__,
            "load_average_at_start": list(os.getloadavg())}


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------
# Command line


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/speech_ctc.py",
                                description="Benchmark speech CTC: offline real-time factor and gRPC server "
                                            "throughput with dynamic batching on vs off.")
    p.add_argument("--repo", type=Path, default=None,
                   help="model repository (default: the bundled model_repository)")
    p.add_argument("--model", default="speech_ctc", help="model name in the repository (default %(default)s)")
    p.add_argument("--random-preset", default=None, metavar="PRESET",
                   help="benchmark a freshly exported model of this preset with random weights instead "
                        "(e.g. small); no repository needed")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results; the PNG goes next to it")
    p.add_argument("--quick", action="store_true",
                   help="shorter measurements: 4 s server windows, 1 s offline rows, 1 s warm-up")
    p.add_argument("--duration-s", type=float, default=None, help="server: measured seconds per run (15)")
    p.add_argument("--warmup-s", type=float, default=None, help="server: warm-up seconds per run (2)")
    p.add_argument("--min-measure-s", type=float, default=None, help="offline: measured seconds per row (3)")
    p.add_argument("--concurrency", type=_int_list, default=(1, 8, 32), help="server: e.g. 1,8,32")
    p.add_argument("--batch-sizes", type=_int_list, default=(1, 8, 16), help="offline: e.g. 1,8,16")
    p.add_argument("--request-timeout-s", type=float, default=60.0, help="server: deadline per request")
    p.add_argument("--intra-op-threads", type=int, default=None,
                   help="ONNX Runtime threads, offline and in the server (default: all cores, at most 4)")
    p.add_argument("--clips", type=int, default=len(SENTENCES), help="how many of the 16 clips to use")
    p.add_argument("--seed", type=int, default=0, help="prosody of the clips and random weights")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    def pick(value: float | None, full: float, quick: float, flag: str) -> float:
        chosen = value if value is not None else (quick if args.quick else full)
        if chosen < 0 or (chosen == 0 and flag != "--warmup-s"):
            raise ValueError(f"{flag} must be positive, got {chosen}")
        return chosen

    if args.request_timeout_s <= 0:
        raise ValueError(f"--request-timeout-s must be positive, got {args.request_timeout_s}")
    threads = args.intra_op_threads if args.intra_op_threads is not None else default_intra_op_threads()
    if threads < 1:
        raise ValueError(f"--intra-op-threads must be >= 1, got {threads}")
    return Settings(batch_sizes=args.batch_sizes, min_measure_s=pick(args.min_measure_s, 3.0, 1.0, "--min-measure-s"),
                    concurrency=args.concurrency, warmup_s=pick(args.warmup_s, 2.0, 1.0, "--warmup-s"),
                    duration_s=pick(args.duration_s, 15.0, 4.0, "--duration-s"),
                    request_timeout_s=args.request_timeout_s, intra_op_threads=threads, clips=args.clips,
                    seed=args.seed)


@contextlib.contextmanager
def model_source(args: argparse.Namespace, seed: int) -> Iterator[ModelSource]:
    """The repository to benchmark: a temporary one for --random-preset, else --repo or the bundled one."""
    if args.random_preset is not None:
        if args.repo is not None:
            raise ValueError("give --repo or --random-preset, not both")
        with tempfile.TemporaryDirectory(prefix="nui-bench-repo-") as tmp:
            logger.info("exporting a random-weight %r model", args.random_preset)
            publish_random_model(args.random_preset, Path(tmp), args.model, seed)
            yield ModelSource(Path(tmp), args.model, f"random-preset:{args.random_preset}")
        return
    repo = args.repo if args.repo is not None else ROOT / "model_repository"
    if not (repo / args.model).is_dir():
        raise ValueError(f"{repo / args.model} does not exist; export a model there (nui export speech ...) or "
                         "benchmark random weights with --random-preset small")
    yield ModelSource(repo, args.model, "repository")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = shlex.join(["python", "bench/speech_ctc.py", *argv])
    try:
        settings = settings_from_args(args)
        started = time.perf_counter()
        machine = machine_info()
        with model_source(args, settings.seed) as source, \
                tempfile.TemporaryDirectory(prefix="nui-bench-") as workdir:
            t0 = time.perf_counter()
            clips = make_clips(settings.clips, settings.seed)
            logger.info("synthesized %d clips, %.1f s of audio, in %.1f s", len(clips),
                        sum(c.duration_s for c in clips), time.perf_counter() - t0)
            engine = load_engine(source.repo, source.model, intra_op_threads=settings.intra_op_threads)
            model_info = {"repo": str(source.repo), "name": source.model, "version": engine.version,
                          "source": source.source, "precision": engine.manifest.precision,
                          "config": engine.manifest.config,
                          "has_lm": "lm" in engine.manifest.extras,
                          "source_checkpoint_sha256": engine.manifest.source_checkpoint_sha256}
            offline = run_offline(engine, source, clips, settings)
            del engine  # its threads would compete with the server's
            server, servers = run_server(source, clips, settings, Path(workdir))
    except (ValueError, OSError, RuntimeError) as e:  # bad flags or repository, synthesis, server start-up
        print(f"bench/speech_ctc.py: error: {e}", file=sys.stderr)
        return 1
    print(format_tables(offline, server))
    report = {
        "benchmark": "speech_ctc", "command": command, "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "elapsed_s": time.perf_counter() - started,
        "machine": {**machine, "load_average_at_end": list(os.getloadavg())},
        "model": model_info, "settings": asdict(settings),
        "clips": [{"voice": c.voice_id, "text": c.text, "duration_s": c.duration_s} for c in clips],
        "offline": [r.to_dict() for r in offline],
        "server_configs": servers,
        "server": [{**asdict(r), "error_count": r.error_count} for r in server],
    }
    png = args.out.with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    try:
        plot(server, png, f"{source.model} v{model_info['version']} ({source.source}), "
                          f"{machine['cpus_usable']} CPUs")
        report["plot"] = str(png)
    except ImportError:
        logger.warning("matplotlib is not installed (pip install -e '.[train]'); no plot")
        report["plot"] = None
    write_json(args.out, report)
    print(f"\nwrote {args.out}" + (f" and {png}" if report["plot"] else ""))
    total_errors = sum(r.error_count for r in server)
    if total_errors:
        print(f"bench/speech_ctc.py: {total_errors} requests failed (see 'errors' in the JSON)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

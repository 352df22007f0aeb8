"""Streaming benchmark: N concurrent real-time streams against `nui serve` → latency from end of audio to
the final result, and the largest N that stays real time.

    python bench/streaming.py [--repo model_repository --model speech_ctc_streaming] \
        [--random-preset small-streaming] [--streams 8,16,32,48,64] [--audio-s 8] \
        [--out bench/results/streaming.json] [--quick]

Without --repo, the `--random-preset` (default small-streaming) is exported with seeded random weights
through the real streaming export (same graph and cost as a trained model; no LM, so finals are
greedy). The server runs as a subprocess (`nui serve`, port 0, --max-batch-size 64). For each N, this
process opens N `StreamingRecognize` streams with a `grpc.aio` client; stream i starts at a random
offset within the first second and sends 100 ms LINEAR_PCM chunks on an absolute real-time schedule
(interim results on, default endpointing). The audio is seeded speech-like noise without pauses, or with
`--speech-manifest` (a JSONL manifest such as data/speech/test.jsonl) real speech: held-out clips, a
seeded sample per stream, joined until the stream has --audio-s seconds; their transcripts are scored
(WER, jiwer) against the manifest text. Use real speech for a trained model: on noise a trained model's
output is flat, and beam search + LM then costs about 10x what it costs on speech. Per stream it records
- end-to-final latency: from sending the last chunk and half-closing to receiving the last final
  result (0 when the endpointer had already finalized all the speech before the audio ended);
- interim lag: audio sent so far minus `result_end_s` of each interim result (the pipeline's own lag,
  lag_frames x frame, is part of it).
"Real time" at N means no stream failed, p99 end-to-final latency <= --realtime-p99-ms (default 500)
and p99 interim lag <= --realtime-lag-p99-ms (default 1500: the server never fell far behind the
audio). N grows through --streams and stops at the first N that is not real time.

Prints a table, writes JSON (numbers, machine, exact command) to --out and a PNG next to it. The client
shares the CPUs with the server: on a small machine its cost is part of the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shlex
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from proto import speech_pb2, speech_pb2_grpc

logger = logging.getLogger("bench.streaming")

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # in place of bench/ when run as a script: `bench` is a package
from bench import speech_ctc as speech_bench  # noqa: E402

SAMPLE_RATE_HZ = 16000
CHUNK_S = 0.1


def speechlike(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    x = 0.3 * np.sin(2 * np.pi * (120 + 15 * (seed % 20)) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (x + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def read_manifest(manifest: Path) -> list[dict[str, Any]]:
    """A JSONL manifest's entries (audio_filepath relative to the manifest's folder, text)."""
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]


def speech_clips(manifest: Path, entries: Sequence[dict[str, Any]], seconds: float,
                 seed: int) -> tuple[np.ndarray, str]:
    """Seeded clips of `manifest`'s `entries`, joined to >= `seconds`, and their texts joined."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    waves: list[np.ndarray] = []
    texts: list[str] = []
    while sum(len(w) for w in waves) < seconds * SAMPLE_RATE_HZ:
        entry = entries[int(rng.integers(len(entries)))]
        audio, rate = sf.read(manifest.parent / entry["audio_filepath"], dtype="float32")
        if rate != SAMPLE_RATE_HZ or audio.ndim != 1:
            raise ValueError(f"{entry['audio_filepath']}: expected 16 kHz mono, got {rate} Hz, shape {audio.shape}")
        waves.append(audio)
        texts.append(entry["text"])
    return np.concatenate(waves), " ".join(texts)


@dataclass
class StreamRecord:
    start_offset_s: float
    final_latency_s: float | None = None  # None: the stream failed
    interim_lags_s: list[float] = field(default_factory=list)
    error: str = ""
    transcript: str = ""  # the final results joined


@dataclass
class Row:
    streams: int
    ok: int
    failed: int
    p50_final_ms: float
    p99_final_ms: float
    max_final_ms: float
    p50_interim_lag_ms: float
    p99_interim_lag_ms: float
    real_time: bool
    wer_percent: float | None = None  # with --speech-manifest: finals vs the manifest text


async def one_stream(stub: speech_pb2_grpc.SpeechStub, audio: np.ndarray, start_offset_s: float,
                     t0: float) -> StreamRecord:
    record = StreamRecord(start_offset_s)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = int(CHUNK_S * SAMPLE_RATE_HZ) * 2
    chunks = [pcm[i: i + step] for i in range(0, len(pcm), step)]
    sent_s = 0.0
    end_sent = 0.0
    config = speech_pb2.RecognitionConfig(encoding=speech_pb2.LINEAR_PCM, sample_rate_hertz=SAMPLE_RATE_HZ,
                                          interim_results=True)

    async def requests() -> AsyncIterator[speech_pb2.StreamingRecognizeRequest]:
        nonlocal sent_s, end_sent
        yield speech_pb2.StreamingRecognizeRequest(config=config)
        for k, chunk in enumerate(chunks):
            due = t0 + start_offset_s + (k + 1) * CHUNK_S  # a chunk leaves once it has been "recorded"
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            sent_s += len(chunk) / 2 / SAMPLE_RATE_HZ
            yield speech_pb2.StreamingRecognizeRequest(audio=chunk)
        end_sent = time.monotonic()

    last_final = None
    finals: list[str] = []
    try:
        async for response in stub.StreamingRecognize(requests(), timeout=len(audio) / SAMPLE_RATE_HZ + 60):
            for result in response.results:
                if result.is_final:
                    last_final = time.monotonic()
                    finals.append(result.alternatives[0].transcript if result.alternatives else "")
                else:
                    record.interim_lags_s.append(sent_s - result.result_end_s)
    except grpc.aio.AioRpcError as e:
        record.error = e.code().name
        return record
    if last_final is None or not end_sent:
        record.error = "no final result" if last_final is None else "stream ended before the audio"
        return record
    record.final_latency_s = max(0.0, last_final - end_sent)
    record.transcript = " ".join(t for t in finals if t)
    return record


async def run_level(address: str, audios: Sequence[np.ndarray], seed: int) -> list[StreamRecord]:
    rng = np.random.default_rng(seed + len(audios))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = speech_pb2_grpc.SpeechStub(channel)
        t0 = time.monotonic() + 0.2
        return list(await asyncio.gather(*(
            one_stream(stub, audio, float(rng.uniform(0, 1.0)), t0) for audio in audios)))


def summarize(n: int, records: Sequence[StreamRecord], p99_limit_ms: float,
              lag_p99_limit_ms: float, references: Sequence[str] | None = None) -> Row:
    finals = np.array([r.final_latency_s for r in records if r.final_latency_s is not None]) * 1e3
    lags = np.array([lag for r in records for lag in r.interim_lags_s]) * 1e3
    failed = sum(r.final_latency_s is None for r in records)

    def pct(x: np.ndarray, q: float) -> float:
        return float(np.percentile(x, q)) if len(x) else float("nan")

    p99, lag_p99 = pct(finals, 99), pct(lags, 99)
    real_time = failed == 0 and p99 <= p99_limit_ms and not lag_p99 > lag_p99_limit_ms  # no interims: no lag
    wer = None
    if references is not None:
        import jiwer

        wer = 100 * float(jiwer.wer(list(references), [r.transcript for r in records]))
    return Row(n, len(finals), failed, pct(finals, 50), p99, float(finals.max()) if len(finals) else float("nan"),
               pct(lags, 50), lag_p99, real_time, wer)


def format_table(rows: Sequence[Row]) -> str:
    head = (f"{'streams':>7} {'ok':>4} {'fail':>4} {'final p50 ms':>12} {'final p99 ms':>12} {'max ms':>8} "
            f"{'interim lag p50 ms':>18} {'p99 ms':>7} {'real time':>9} {'WER %':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.streams:>7} {r.ok:>4} {r.failed:>4} {r.p50_final_ms:>12.1f} {r.p99_final_ms:>12.1f} "
                     f"{r.max_final_ms:>8.1f} {r.p50_interim_lag_ms:>18.1f} {r.p99_interim_lag_ms:>7.1f} "
                     f"{'yes' if r.real_time else 'NO':>9} "
                     f"{'-' if r.wer_percent is None else f'{r.wer_percent:.1f}':>6}")
    return "\n".join(lines)


def plot(rows: Sequence[Row], path: Path, title: str, p99_limit_ms: float) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed; no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    n = [r.streams for r in rows]
    ax.plot(n, [r.p50_final_ms for r in rows], "o-", label="end of audio → final, p50")
    ax.plot(n, [r.p99_final_ms for r in rows], "s-", label="end of audio → final, p99")
    ax.plot(n, [r.p99_interim_lag_ms for r in rows], "^--", label="interim lag, p99")
    ax.axhline(p99_limit_ms, color="grey", linestyle=":", label=f"real-time bound ({p99_limit_ms:g} ms)")
    ax.set_xlabel("concurrent real-time streams")
    ax.set_ylabel("ms")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _int_list(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 8,32, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, help="repository with a streaming model (default: a random-weight export)")
    p.add_argument("--model", default="speech_ctc_streaming")
    p.add_argument("--random-preset", default="small-streaming")
    p.add_argument("--chunk-ms", type=float, default=120.0, help="engine chunk for the random-weight export")
    p.add_argument("--streams", type=_int_list, default=(8, 16, 32, 48, 64))
    p.add_argument("--audio-s", type=float, default=8.0, help="audio per stream")
    p.add_argument("--speech-manifest", type=Path,
                   help="stream real speech from this JSONL manifest (e.g. data/speech/test.jsonl), not noise")
    p.add_argument("--realtime-p99-ms", type=float, default=500.0)
    p.add_argument("--realtime-lag-p99-ms", type=float, default=1500.0)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    p.add_argument("--intra-op-threads", type=int, default=None)
    p.add_argument("--decode-workers", type=int, default=None,
                   help="the server's --decode-workers (beam + LM decoding processes; default: the server's)")
    p.add_argument("--lm-lookahead-s", type=float, default=None,
                   help="the server's --stream-lm-lookahead-s (0: LM finals decoded whole at the end; default: "
                        "the server's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "streaming.json")
    p.add_argument("--quick", action="store_true", help="--streams 8,32 --audio-s 4")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.quick:
        args.streams, args.audio_s = (8, 32), 4.0
    with tempfile.TemporaryDirectory(prefix="nui-bench-streaming-") as tmp:
        repo = args.repo
        source = f"{args.repo}/{args.model}"
        if repo is None:
            import torch

            from engines.export_speech_streaming import export_speech_ctc_streaming
            from models.speech_ctc import build, get_preset

            torch.manual_seed(args.seed)
            repo = Path(tmp) / "repo"
            export_speech_ctc_streaming(build(get_preset(args.random_preset)).eval(), repo, args.model, 1,
                                        chunk_ms=args.chunk_ms)
            source = f"random weights, preset {args.random_preset}, chunk {args.chunk_ms:g} ms"
        setup = speech_bench.ServerSetup("streaming", args.max_batch_size, args.max_queue_delay_ms)
        threads = args.intra_op_threads or speech_bench.default_intra_op_threads()
        extra = [] if args.decode_workers is None else ["--decode-workers", str(args.decode_workers)]
        if args.lm_lookahead_s is not None:
            extra += ["--stream-lm-lookahead-s", f"{args.lm_lookahead_s:g}"]
        server = speech_bench.ServerProcess(repo, setup, threads, Path(tmp) / "server.log", extra_args=extra)
        rows: list[Row] = []
        entries = read_manifest(args.speech_manifest) if args.speech_manifest is not None else []
        try:
            for n in args.streams:
                logger.info("%d streams of %.1f s ...", n, args.audio_s)
                if args.speech_manifest is None:
                    audios, references = [speechlike(args.audio_s, args.seed + i) for i in range(n)], None
                else:
                    pairs = [speech_clips(args.speech_manifest, entries, args.audio_s, args.seed + i)
                             for i in range(n)]
                    audios, references = [a for a, _ in pairs], [t for _, t in pairs]
                records = asyncio.run(run_level(server.address, audios, args.seed))
                errors = sorted({r.error for r in records if r.error})
                if errors:
                    logger.warning("%d streams failed: %s", sum(bool(r.error) for r in records), errors)
                row = summarize(n, records, args.realtime_p99_ms, args.realtime_lag_p99_ms, references)
                rows.append(row)
                print(format_table(rows[-1:]).splitlines()[-1], flush=True)
                if not row.real_time:
                    break
        finally:
            status = server.stop()
    max_n = max((r.streams for r in rows if r.real_time), default=0)
    audio = "speech-like noise" if args.speech_manifest is None else f"speech from {args.speech_manifest}"
    title = f"nui streaming, {source}; {args.audio_s:g} s streams of {audio}"
    print(f"\n{title}\n{format_table(rows)}\nlargest N that stayed real time: {max_n} "
          f"(p99 end-to-final <= {args.realtime_p99_ms:g} ms, p99 interim lag <= {args.realtime_lag_p99_ms:g} ms, "
          "no failures)")
    report: dict[str, Any] = {
        "command": shlex.join([sys.executable, *sys.argv]), "source": source, "audio_s": args.audio_s,
        "audio": audio,
        "chunk_s_sent": CHUNK_S, "realtime_p99_ms": args.realtime_p99_ms,
        "realtime_lag_p99_ms": args.realtime_lag_p99_ms, "max_realtime_streams": max_n,
        "server": {"max_batch_size": args.max_batch_size, "max_queue_delay_ms": args.max_queue_delay_ms,
                   "intra_op_threads": threads, "decode_workers": args.decode_workers,
                   "lm_lookahead_s": args.lm_lookahead_s, "exit_status": status},
        "rows": [asdict(r) for r in rows], "machine": speech_bench.machine_info(),
    }
    speech_bench.write_json(args.out, report)
    plot(rows, args.out.with_suffix(".png"), title, args.realtime_p99_ms)
    print(f"wrote {args.out}")
    return 0 if rows and status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

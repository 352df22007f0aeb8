"""Batch-forming policies of nui's speech batcher, in process: engine cost per audio second and padding.

    python bench/speech_batching.py                       # bundled speech_ctc, 1 ORT thread, ~1 min quiet
    python bench/speech_batching.py --intra-op-threads 2 --reps 3

The real `DynamicBatcher` (server/batcher.py) runs the real `SpeechCTCModel.run_batch` (ONNX Runtime +
greedy decoding) on the 16 bench clips (bench/speech_ctc.py, 2-7.6 s) under each policy:
- one at a time (`max_batch_size` 1, what `nui serve --max-batch-size 1` does);
- first in, first out, up to 16 per run (padded to the longest clip of the run);
- similar sizes (`size_of` = samples): the oldest clip and the clips nearest its length, up to 16, while
  the padding waste stays within the cap (1.0 = no cap: only the choice of batch-mates changes);
- "2 at once": two batches run at the same time (`max_concurrent_runs` 2), each on its own thread.
Arrivals: `burst` submits 32 requests at once (a deep queue, as with 32 clients); `waves` submits 16
together and waits for all of them, twice (16 clients that were answered by one batch).

Per policy and arrival: runs, mean batch size, padding waste (share of padded samples), process CPU ms
per audio second (every thread: ONNX Runtime's and decoding's) and wall ms per audio second; of `--reps`
alternating repetitions the fastest (wall) counts (the machine is shared). Also greedy and beam + LM decoding CPU ms per
clip. Prints a table, writes `--out` JSON (machine, load average, command).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # in place of bench/ when run as a script: `bench` is a package
from bench import speech_ctc as speech_bench  # noqa: E402
from engines.engine import load_engine  # noqa: E402
from engines.manifest import version_dir  # noqa: E402
from server.audio import AudioEncoding, AudioLimits  # noqa: E402
from server.batcher import DynamicBatcher  # noqa: E402
from server.speech_ctc import DecodeOptions, Recognition, SpeechCTCModel, Utterance, load_lm_decoder  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "speech_batching.json"


@dataclass(frozen=True)
class Policy:
    name: str
    max_batch_size: int
    sized: bool  # size_of = samples
    max_padding_waste: float = 1.0
    runs_at_once: int = 1  # DynamicBatcher max_concurrent_runs


POLICIES = (Policy("one at a time", 1, False), Policy("FIFO 16", 16, False),
            Policy("similar, no cap", 16, True), Policy("similar, cap 0.2", 16, True, 0.2),
            Policy("similar, cap 0.1", 16, True, 0.1),
            Policy("one at a time, 2 at once", 1, False, runs_at_once=2),
            Policy("similar, cap 0.2, 2 at once", 16, True, 0.2, runs_at_once=2))
ARRIVALS = {"burst": (32, 1), "waves": (16, 2)}  # name -> (requests submitted together, times)


@dataclass
class Row:
    policy: str
    arrival: str
    runs: int
    mean_batch: float
    padding_waste: float
    cpu_ms_per_audio_s: float
    wall_ms_per_audio_s: float


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(model: SpeechCTCModel, utterances: list[Utterance], policy: Policy, arrival: str) -> Row:
    together, times = ARRIVALS[arrival]
    batcher: DynamicBatcher[Utterance, Recognition | Exception] = DynamicBatcher(
        model.run_batch, policy.max_batch_size, 0.0, 256, name="bench",
        size_of=SpeechCTCModel.padded_size if policy.sized else None, max_padding_waste=policy.max_padding_waste,
        max_concurrent_runs=policy.runs_at_once)
    cpu0, wall0 = _cpu_s(), time.perf_counter()
    audio_s, k = 0.0, 0
    for _ in range(times):
        wave = [utterances[(k + i) % len(utterances)] for i in range(together)]
        k += together
        audio_s += sum(u.audio_duration_s for u in wave)
        await asyncio.gather(*(batcher.submit(u) for u in wave))
    cpu_s, wall_s = _cpu_s() - cpu0, time.perf_counter() - wall0
    await batcher.close()
    stats = batcher.stats
    sizes = [n for n, count in stats.batch_sizes.items() for _ in range(count)]
    # without size_of the batcher does not see sizes: the waste of FIFO runs is computed from the batches
    waste = stats.padding_waste if policy.sized else _fifo_waste(utterances, together, times, policy.max_batch_size)
    return Row(policy.name, arrival, stats.runs, sum(sizes) / len(sizes), waste, 1e3 * cpu_s / audio_s,
               1e3 * wall_s / audio_s)


def _fifo_waste(utterances: list[Utterance], together: int, times: int, max_batch_size: int) -> float:
    """Padding share of first-in-first-out batches of the same arrivals (every wave splits into runs of
    max_batch_size in submission order)."""
    real = padded = 0
    k = 0
    for _ in range(times):
        lengths = [len(utterances[(k + i) % len(utterances)].samples) for i in range(together)]
        k += together
        for start in range(0, together, max_batch_size):
            run = lengths[start:start + max_batch_size]
            real += sum(run)
            padded += len(run) * max(run)
    return 1.0 - real / padded


def decode_ms(model: SpeechCTCModel, utterances: list[Utterance]) -> dict[str, float]:
    """CPU ms per clip of greedy and (when the model has an LM) beam + LM decoding of its log-probs."""
    log_probs, out_lengths = model._infer([u.samples for u in utterances])  # the engine alone
    slices = [log_probs[i, : int(out_lengths[i])] for i in range(len(utterances))]
    decoders = {"greedy": model.greedy, **({"beam+lm": model.lm_decoder} if model.lm_decoder is not None else {})}
    out = {}
    for name, decoder in decoders.items():
        decoder.decode(slices[0], model.spec.frame_s, words=False, max_alternatives=1)  # warm-up
        t0 = time.thread_time()
        for s in slices:
            decoder.decode(s, model.spec.frame_s, words=False, max_alternatives=1)
        out[name] = 1e3 * (time.thread_time() - t0) / len(slices)
    return out


def format_table(rows: list[Row]) -> str:
    lines = [f"{'policy':<28} {'arrival':<6} {'runs':>5} {'batch':>6} {'padding':>8} {'CPU ms/audio s':>15} "
             f"{'wall ms/audio s':>16}"]
    lines += [f"{r.policy:<28} {r.arrival:<6} {r.runs:>5} {r.mean_batch:>6.1f} {r.padding_waste:>8.0%} "
              f"{r.cpu_ms_per_audio_s:>15.1f} {r.wall_ms_per_audio_s:>16.1f}" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="bench/speech_batching.py", description=__doc__.split("\n")[0])
    p.add_argument("--repo", type=Path, default=ROOT / "model_repository")
    p.add_argument("--model", default="speech_ctc")
    p.add_argument("--intra-op-threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=2, help="alternating repetitions; the best counts")
    p.add_argument("--policies", default=None, help="';'-separated policy names (default: all)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.reps < 1 or args.intra_op_threads < 1:
        print("bench/speech_batching.py: error: --reps and --intra-op-threads must be >= 1", file=sys.stderr)
        return 1
    machine = speech_bench.machine_info()
    engine = load_engine(args.repo, args.model, intra_op_threads=args.intra_op_threads)
    model = SpeechCTCModel(engine, load_lm_decoder(version_dir(args.repo, args.model, engine.version),
                                                   engine.manifest))
    clips = speech_bench.make_clips(16, 0)
    greedy = DecodeOptions(use_lm=False)
    utterances = [model.prepare(c.wav, AudioEncoding.AUTO, 0, greedy, AudioLimits(), f"clip-{i}")
                  for i, c in enumerate(clips)]
    model.run_batch(utterances[:2])  # warm-up
    policies = POLICIES if args.policies is None else tuple(
        p for p in POLICIES if p.name in {n.strip() for n in args.policies.split(";")})
    best: dict[tuple[str, str], Row] = {}
    with tqdm(total=args.reps * len(policies) * len(ARRIVALS), desc="policies", unit="run") as bar:
        for _ in range(args.reps):
            for policy in policies:
                for arrival in ARRIVALS:
                    row = asyncio.run(_measure(model, utterances, policy, arrival))
                    key = (policy.name, arrival)
                    if key not in best or row.wall_ms_per_audio_s < best[key].wall_ms_per_audio_s:
                        best[key] = row
                    bar.update()
    rows = [best[(p.name, a)] for p in policies for a in ARRIVALS]
    decoding = decode_ms(model, utterances)
    print(format_table(rows))
    print("decoding CPU ms per clip: " + ", ".join(f"{k} {v:.1f}" for k, v in decoding.items()))
    report: dict[str, Any] = {
        "benchmark": "speech_batching", "command": shlex.join(["python", "bench/speech_batching.py", *argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {**machine, "load_average_at_end": list(os.getloadavg())},
        "model": {"name": args.model, "version": engine.version, "precision": engine.manifest.precision},
        "intra_op_threads": args.intra_op_threads, "reps": args.reps,
        "clips_s": [round(u.audio_duration_s, 3) for u in utterances],
        "rows": [asdict(r) for r in rows], "decoding_cpu_ms_per_clip": decoding,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"load average (1 min) {machine['load_average_at_start'][0]:.1f} at start, {os.getloadavg()[0]:.1f} "
          f"at end; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

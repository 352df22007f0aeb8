"""Batch-forming policies of `DynamicBatcher` under closed-loop load, with a simulated engine (no CPU).

    python bench/batcher_policies.py            # ~2 min; any machine load is fine: the engine only sleeps
    python bench/batcher_policies.py --clients 8,32,64 --duration-s 6

The real batcher (server/batcher.py) runs a stand-in engine that sleeps n_items x longest clip x
`--ms-per-audio-s` per run: the cost measured for speech_ctc v2 on the CPU, where a batch saves nothing
per clip and pays for its padding (bench/results/batching_profile.md). Two runs may be in flight
(`max_concurrent_runs` 2, as on 2 cores). C clients send the 16 bench clip lengths round-robin back to
back; throughput counts the requests completed in the window, latency percentiles every request sent in
it (a starved one finishes late, after the window). Policies: batching off (batch 1), first in first out
(16 / 4), similar sizes with the padding cap 0.2 (16 / 4). (Run against the batcher of commit c71c57f,
which picked batch-mates from the whole queue, it gives that design's figures.) Prints a table and
writes `--out` JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/batcher_policies.py` from the repository root
    sys.path.insert(0, str(ROOT))

from server.batcher import DynamicBatcher  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "batching" / "batcher_policies.json"
CLIP_S = (2.01, 2.89, 3.98, 4.7, 3.19, 4.96, 2.55, 5.6, 2.5, 6.26, 4.17, 7.55, 3.37, 5.8, 3.59, 7.15)  # bench clips


@dataclass(frozen=True)
class Policy:
    name: str
    max_batch_size: int
    sized: bool
    max_padding_waste: float = 1.0


# FIFO rows: sized with no cap, the `max_batch_size` oldest are exactly the next FIFO batch (padding counted)
POLICIES = (Policy("off", 1, False), Policy("FIFO 16", 16, True), Policy("FIFO 4", 4, True),
            Policy("similar 16, cap 0.2", 16, True, 0.2), Policy("similar 4, cap 0.2", 4, True, 0.2))


@dataclass
class Row:
    policy: str
    clients: int
    req_per_s: float
    p50_ms: float
    p99_ms: float
    padding_waste: float


def _engine(ms_per_audio_s: float) -> Callable[[list[float]], list[float]]:
    def run(clips_s: list[float]) -> list[float]:
        time.sleep(len(clips_s) * max(clips_s) * ms_per_audio_s / 1e3)
        return clips_s
    return run


async def trial(policy: Policy, clients: int, duration_s: float, ms_per_audio_s: float) -> Row:
    batcher: DynamicBatcher[float, float] = DynamicBatcher(
        _engine(ms_per_audio_s), policy.max_batch_size, 10.0, 256,
                  size_of=(lambda s: int(s * 1000)) if policy.sized else None,
                  max_padding_waste=policy.max_padding_waste, max_concurrent_runs=2)
    latencies: list[float] = []  # of the requests sent in the window, however late they finish
    done_in_window = 0
    stop = time.monotonic() + duration_s
    sent = [0]

    async def client() -> None:
        nonlocal done_in_window
        while time.monotonic() < stop:
            clip = CLIP_S[sent[0] % len(CLIP_S)]
            sent[0] += 1
            t0 = time.monotonic()
            await batcher.submit(clip)
            latencies.append(time.monotonic() - t0)
            done_in_window += time.monotonic() <= stop

    await asyncio.gather(*(client() for _ in range(clients)))
    await batcher.close()
    ms = np.array(latencies) * 1e3
    return Row(policy.name, clients, done_in_window / duration_s, float(np.percentile(ms, 50)),
               float(np.percentile(ms, 99)), batcher.stats.padding_waste)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/batcher_policies.py", description=__doc__.split("\n")[0])
    p.add_argument("--clients", default="8,32,64")
    p.add_argument("--duration-s", type=float, default=6.0)
    p.add_argument("--ms-per-audio-s", type=float, default=32.0,
                   help="engine ms per padded audio second (default: 4x the CPU's 8, so sleeps dwarf the loop)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    rows = [asyncio.run(trial(policy, int(c), args.duration_s, args.ms_per_audio_s))
            for c in args.clients.split(",") for policy in POLICIES]
    print(f"{'policy':<20} {'C':>3} {'req/s':>6} {'p50 ms':>7} {'p99 ms':>7} {'padding':>8}")
    for r in rows:
        print(f"{r.policy:<20} {r.clients:>3} {r.req_per_s:>6.1f} {r.p50_ms:>7.0f} {r.p99_ms:>7.0f} "
              f"{r.padding_waste:>8.0%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "batcher_policies", "command": " ".join(["python", *sys.argv]),
                                    "ms_per_audio_s": args.ms_per_audio_s, "duration_s": args.duration_s,
                                    "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

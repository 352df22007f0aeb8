"""Overload benchmark: `Recognize` at a multiple of the server's measured capacity, open loop, for a while.

    python bench/overload.py                                     # bundled model_repository, 4x for 20 s, ~1 min
    python bench/overload.py --overload-s 60 --budgets-ms 25,0   # the issue's 60 s at ~4x; with and without
                                                                 # the queue-wait budget (0: count bound only)
    python bench/overload.py --multiple 4 --overload-s 60 --out bench/results/overload-60s.json
    python bench/overload.py --serve-args "--max-batch-size 1"  # any other `nui serve` flags

For each `--budgets-ms` value, `nui serve` (its default threading; `--max-queue-wait-ms` set to the value)
runs as a subprocess on 127.0.0.1 with metrics on, and this process (a grpc.aio client on the same CPUs)
measures, with `--clips` synthesized sentences of mixed length (bench/speech_ctc.py):

1. unloaded: `--unloaded-calls` Recognize one at a time -> p50 / p99 latency;
2. capacity: `--capacity-callers` closed-loop callers for `--capacity-s` (a refused caller backs off
   20 ms) -> OK answers per second, the server's capacity;
3. overload: arrivals at `--multiple` x capacity, Poisson (seeded), for `--overload-s`, each call with a
   `--deadline-s` deadline, whatever the server answers -> OK / RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED
   counts, admitted (OK) p50 / p99 latency and its ratio to the unloaded p99 (the issue's target: within
   2x), OK answers per second, calls lost (no answer by deadline + 5 s);
4. the server's RSS before and after, what it counted during the overload (nui_shed_requests_total by
   reason, nui_expired_requests_total, mean queue wait and run time from its histograms) and its exit
   status after SIGTERM.

The load average at start and end goes into the JSON: on a shared machine the figures are indicative.
Prints a table, writes JSON (+ the git commit, the exact command) to `--out` and a PNG next to it
(admitted latency over the overload window, and unloaded vs admitted p50 / p99 per budget).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm

from proto import speech_pb2, speech_pb2_grpc

logger = logging.getLogger("bench.overload")

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # in place of bench/ when run as a script: `bench` is a package
from bench import speech_ctc as sb  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "overload.json"
BACKOFF_S = 0.02  # a closed-loop caller refused by the server waits this long before calling again
GUARD_S = 5.0  # a call with no answer by its deadline + this is lost


@dataclass(frozen=True)
class Call:
    start_s: float  # since the phase began
    latency_s: float
    code: str  # gRPC status name, or LOST


@dataclass
class BudgetResult:
    """Everything measured against one server (one --max-queue-wait-ms)."""

    budget_ms: float  # 0: the count bound only
    unloaded: list[Call] = field(default_factory=list)
    capacity_rps: float = 0.0
    offered_rps: float = 0.0
    overload: list[Call] = field(default_factory=list)
    overload_s: float = 0.0
    rss_mb: dict[str, float] = field(default_factory=dict)
    server_counters: dict[str, float] = field(default_factory=dict)  # during the overload
    server_counters_unloaded: dict[str, float] = field(default_factory=dict)  # during the unloaded calls
    exit_status: int | None = None

    def summary(self) -> dict[str, Any]:
        unloaded = [c.latency_s for c in self.unloaded if c.code == "OK"]
        admitted = [c.latency_s for c in self.overload if c.code == "OK"]
        codes = Counter(c.code for c in self.overload)
        u99 = _pct(unloaded, 99)
        a99 = _pct(admitted, 99)
        return {
            "budget_ms": self.budget_ms, "unloaded_p50_ms": 1e3 * _pct(unloaded, 50), "unloaded_p99_ms": 1e3 * u99,
            "capacity_rps": self.capacity_rps, "offered_rps": self.offered_rps,
            "offered_x_capacity": self.offered_rps / self.capacity_rps if self.capacity_rps else 0.0,
            "calls": len(self.overload), "codes": dict(codes.most_common()), "ok": codes["OK"],
            "shed": codes["RESOURCE_EXHAUSTED"], "deadline_exceeded": codes["DEADLINE_EXCEEDED"],
            "lost": codes["LOST"], "admitted_p50_ms": 1e3 * _pct(admitted, 50), "admitted_p99_ms": 1e3 * a99,
            "admitted_p99_x_unloaded_p99": a99 / u99 if u99 else 0.0,
            "ok_rps_during_overload": codes["OK"] / self.overload_s if self.overload_s else 0.0,
            "rss_mb": self.rss_mb, "server_counters": self.server_counters,
            "server_counters_unloaded": self.server_counters_unloaded, "exit_status": self.exit_status,
        }


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def _call(stub: speech_pb2_grpc.SpeechStub, request: speech_pb2.RecognizeRequest, deadline_s: float,
                t0: float) -> Call:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(deadline_s + GUARD_S):
            await stub.Recognize(request, timeout=deadline_s)
        code = "OK"
    except grpc.aio.AioRpcError as e:
        code = e.code().name
    except TimeoutError:
        code = "LOST"
    return Call(started - t0, time.perf_counter() - started, code)


async def unloaded_phase(stub: speech_pb2_grpc.SpeechStub, requests: Sequence[speech_pb2.RecognizeRequest],
                         n_calls: int, deadline_s: float) -> list[Call]:
    t0 = time.perf_counter()
    return [await _call(stub, requests[i % len(requests)], deadline_s, t0) for i in range(n_calls)]


async def capacity_phase(stub: speech_pb2_grpc.SpeechStub, requests: Sequence[speech_pb2.RecognizeRequest],
                         callers: int, seconds: float, deadline_s: float) -> float:
    """OK answers per second of `callers` closed-loop callers (the second half of the window only, so the
    service-time estimate and the queue have settled)."""
    t0 = time.perf_counter()
    end = t0 + seconds
    calls: list[Call] = []

    async def caller(k: int) -> None:
        while time.perf_counter() < end:
            call = await _call(stub, requests[k % len(requests)], deadline_s, t0)
            calls.append(call)
            k += callers
            if call.code != "OK":
                await asyncio.sleep(BACKOFF_S)

    await asyncio.gather(*(caller(k) for k in range(callers)))
    settled = [c for c in calls if c.code == "OK" and c.start_s + c.latency_s >= seconds / 2]
    return len(settled) / (seconds / 2)


async def overload_phase(stub: speech_pb2_grpc.SpeechStub, requests: Sequence[speech_pb2.RecognizeRequest],
                         rate_rps: float, seconds: float, deadline_s: float, seed: int) -> list[Call]:
    """Open loop: Poisson arrivals at `rate_rps` for `seconds`, each call independent of the answers."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    tasks: list[asyncio.Task[Call]] = []
    next_s = 0.0
    with tqdm(total=round(seconds), desc=f"overload {rate_rps:.0f} req/s", unit="s", leave=False) as bar:
        while next_s < seconds:
            delay = t0 + next_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_call(stub, requests[len(tasks) % len(requests)], deadline_s, t0)))
            next_s += float(rng.exponential(1.0 / rate_rps))
            if int(next_s) > bar.n and next_s <= seconds:
                bar.update(int(next_s) - bar.n)
    return list(await asyncio.gather(*tasks))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


_SERVER_SAMPLES = {"nui_queue_duration_seconds_sum": "queue_s", "nui_queue_duration_seconds_count": "queued",
                   "nui_compute_duration_seconds_sum": "compute_s", "nui_compute_duration_seconds_count": "runs",
                   "nui_batch_size_sum": "items_run", "nui_expired_requests_total": "expired"}


def server_counters(metrics_port: int) -> dict[str, float]:
    """The server's shed counts by reason, expired count, and its queue / compute time sums and counts,
    summed over models (the speech model is the only one loaded)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    counters: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = f"shed_{s.labels['reason']}" if s.name == "nui_shed_requests_total" else _SERVER_SAMPLES.get(s.name)
            if key is not None:
                counters[key] = counters.get(key, 0.0) + s.value
    return counters


def overload_counters(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What the server counted between two scrapes (the overload, or the unloaded calls): drops, its mean
    queue wait per item and mean run time (the client's latency minus these is transport, decoding and
    the client's own delay)."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in sorted(set(after) | set(before))}
    out = {k: d[k] for k in d if k.startswith("shed_") or k == "expired"}
    out["server_mean_queue_ms"] = 1e3 * d.get("queue_s", 0) / d["queued"] if d.get("queued") else 0.0
    out["server_mean_run_ms"] = 1e3 * d.get("compute_s", 0) / d["runs"] if d.get("runs") else 0.0
    out["server_mean_batch"] = d.get("items_run", 0) / d["runs"] if d.get("runs") else 0.0
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def measure(address: str, requests: Sequence[speech_pb2.RecognizeRequest], args: argparse.Namespace,
                  result: BudgetResult, pid: int, metrics_port: int) -> None:
    options = [("grpc.max_receive_message_length", 32 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        stub = speech_pb2_grpc.SpeechStub(channel)
        await unloaded_phase(stub, requests, len(requests), args.deadline_s)  # warm caches and the estimate
        before = await asyncio.to_thread(server_counters, metrics_port)
        result.unloaded = await unloaded_phase(stub, requests, args.unloaded_calls, args.deadline_s)
        result.server_counters_unloaded = overload_counters(
            before, await asyncio.to_thread(server_counters, metrics_port))
        result.capacity_rps = await capacity_phase(stub, requests, args.capacity_callers, args.capacity_s,
                                                   args.deadline_s)
        result.offered_rps = args.multiple * result.capacity_rps
        result.rss_mb["before_overload"] = rss_mb(pid)
        before = await asyncio.to_thread(server_counters, metrics_port)
        started = time.perf_counter()
        result.overload = await overload_phase(stub, requests, result.offered_rps, args.overload_s,
                                               args.deadline_s, args.seed)
        result.overload_s = time.perf_counter() - started
        result.rss_mb["after_overload"] = rss_mb(pid)
        result.server_counters = overload_counters(before, await asyncio.to_thread(server_counters, metrics_port))


def run_budget(sb: ModuleType, budget_ms: float, requests: Sequence[speech_pb2.RecognizeRequest],
               args: argparse.Namespace, log_path: Path) -> BudgetResult:
    metrics_port = free_port()
    command = [sys.executable, "-m", "nui", "serve", "--repo", str(args.repo), "--host", "127.0.0.1",
               "--port", "0", "--metrics-port", str(metrics_port), "--max-queue-wait-ms", f"{budget_ms:g}",
               "--log-level", "WARNING", *shlex.split(args.serve_args)]
    result = BudgetResult(budget_ms)
    server = sb.ServerProcess(args.repo, sb.ServerSetup("default", 16, 5.0), 0, log_path, command=command)
    try:
        pid = server._proc.pid  # bench/speech_ctc.py's ServerProcess keeps its Popen private
        result.rss_mb["start"] = rss_mb(pid)
        asyncio.run(measure(server.address, requests, args, result, pid, metrics_port))
    finally:
        result.exit_status = server.stop()
    return result


def table(rows: Sequence[dict[str, Any]]) -> str:
    head = (f"{'budget':>8} {'unloaded p50/p99':>17} {'capacity':>9} {'offered':>13} {'ok':>6} {'shed':>6} "
            f"{'deadline':>8} {'lost':>4} {'admitted p50/p99':>17} {'p99 x':>6} {'ok/s':>6} {'RSS MB':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        budget = f"{r['budget_ms']:g} ms" if r["budget_ms"] else "off"
        lines.append(
            f"{budget:>8} {r['unloaded_p50_ms']:>7.0f}/{r['unloaded_p99_ms']:<6.0f}ms {r['capacity_rps']:>5.1f}/s "
            f"{r['offered_rps']:>5.0f}/s {r['offered_x_capacity']:>4.1f}x {r['ok']:>6} {r['shed']:>6} "
            f"{r['deadline_exceeded']:>8} {r['lost']:>4} {r['admitted_p50_ms']:>7.0f}/{r['admitted_p99_ms']:<6.0f}ms "
            f"{r['admitted_p99_x_unloaded_p99']:>5.1f}x {r['ok_rps_during_overload']:>6.1f} "
            f"{r['rss_mb'].get('before_overload', 0):>5.0f}>{r['rss_mb'].get('after_overload', 0):<5.0f}")
    return "\n".join(lines)


def plot(results: Sequence[BudgetResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_p) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [2, 1]})
    for r in results:
        s = r.summary()
        label = f"budget {r.budget_ms:g} ms" if r.budget_ms else "count bound only"
        ok = [c for c in r.overload if c.code == "OK"]
        points = ax_t.scatter([c.start_s for c in ok], [1e3 * c.latency_s for c in ok], s=3, alpha=0.5,
                              label=f"{label}: admitted")
        ax_t.axhline(2 * s["unloaded_p99_ms"], color=points.get_facecolor()[0], ls="--", lw=1,
                     label=f"{label}: 2x unloaded p99")
    ax_t.set(xlabel="seconds into the overload", ylabel="Recognize latency (ms)", yscale="log",
             title=f"admitted calls at ~{results[0].summary()['offered_x_capacity']:.1f}x capacity")
    ax_t.legend(fontsize=8)
    names = [f"{r.budget_ms:g} ms" if r.budget_ms else "off" for r in results]
    x = np.arange(len(results))
    for k, (key, label) in enumerate((("unloaded_p50_ms", "unloaded p50"), ("unloaded_p99_ms", "unloaded p99"),
                                      ("admitted_p50_ms", "admitted p50"), ("admitted_p99_ms", "admitted p99"))):
        ax_p.bar(x + (k - 1.5) * 0.2, [r.summary()[key] for r in results], 0.2, label=label)
    ax_p.set(xticks=x, xticklabels=names, xlabel="--max-queue-wait-ms", ylabel="ms", yscale="log",
             title="latency: unloaded vs admitted under overload")
    ax_p.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/overload.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, default=ROOT / "model_repository", help="model repository to serve")
    p.add_argument("--budgets-ms", default="25",
                   help="comma-separated --max-queue-wait-ms values, one server each; 0: count bound only")
    p.add_argument("--multiple", type=float, default=4.0, help="offered load as a multiple of the capacity")
    p.add_argument("--overload-s", type=float, default=20.0)
    p.add_argument("--capacity-s", type=float, default=10.0)
    p.add_argument("--capacity-callers", type=int, default=8)
    p.add_argument("--unloaded-calls", type=int, default=40)
    p.add_argument("--deadline-s", type=float, default=5.0, help="gRPC deadline of every call")
    p.add_argument("--clips", type=int, default=4, help="synthesized sentences, sent in turn (2-8 s each)")
    p.add_argument("--serve-args", default="", help="more `nui serve` flags, e.g. '--max-batch-size 1'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results; the PNG goes next to it")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        budgets = [float(b) for b in args.budgets_ms.split(",") if b.strip()]
    except ValueError:
        print(f"bench/overload.py: error: --budgets-ms takes numbers, got {args.budgets_ms!r}", file=sys.stderr)
        return 1
    if not budgets or min(budgets) < 0 or args.multiple <= 0 or min(args.overload_s, args.capacity_s) <= 0:
        print("bench/overload.py: error: budgets >= 0, a positive --multiple and durations needed", file=sys.stderr)
        return 1
    machine = sb.machine_info()
    clips = sb.make_clips(args.clips, args.seed)
    config = speech_pb2.RecognitionConfig(decoder=speech_pb2.DECODER_GREEDY)
    requests = [speech_pb2.RecognizeRequest(config=config, audio=c.wav) for c in clips]
    results = []
    for budget in budgets:
        logger.info("server with --max-queue-wait-ms %g", budget)
        log_path = Path(tempfile.gettempdir()) / f"nui-bench-overload-{os.getpid()}-{budget:g}.log"
        results.append(run_budget(sb, budget, requests, args, log_path))
    rows = [r.summary() for r in results]
    print(f"\nRecognize, {len(clips)} clips of {min(c.duration_s for c in clips):.1f}-"
          f"{max(c.duration_s for c in clips):.1f} s in turn, open-loop Poisson arrivals at {args.multiple:g}x "
          f"the measured capacity for {args.overload_s:g} s, deadline {args.deadline_s:g} s; "
          f"load average {os.getloadavg()[0]:.1f} (at start {machine['load_average_at_start'][0]:.1f})")
    print(table(rows))
    for r in rows:
        unloaded = r["server_counters_unloaded"]
        print(f"budget {r['budget_ms']:g} ms: server mean run {unloaded.get('server_mean_run_ms', 0):.0f} ms unloaded, "
              f"{r['server_counters'].get('server_mean_run_ms', 0):.0f} ms in the overload")
        print(f"budget {r['budget_ms']:g} ms: codes {r['codes']}; server counters {r['server_counters']}; "
              f"exit status {r['exit_status']}")
    machine["load_average_at_end"] = list(os.getloadavg())
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    report = {"command": shlex.join(["python", "bench/overload.py", *argv]), "commit": commit,
              "machine": machine, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "clips_s": [round(c.duration_s, 2) for c in clips], "results": rows}
    sb.write_json(args.out, report)
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 1 if any(r["lost"] or r["exit_status"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

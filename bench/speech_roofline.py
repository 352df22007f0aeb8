"""How much can batching save the speech engine on this CPU? Its arithmetic rate per batch size vs the CPU's peak.

    python bench/speech_roofline.py                  # bundled speech_ctc, 1 ORT thread, ~1 min quiet
    python bench/speech_roofline.py --batch-sizes 1,8 --seconds 2
    python bench/speech_roofline.py --random-preset ds2 --seconds 2 --batch-sizes 1,4,16,32   # DS2 size, ~1.5 min

Batching pays when one run of a batch does the batch's arithmetic faster than the runs of its items
one at a time: on a GPU (or a CPU at batch 1 held up by memory bandwidth), a batch turns matrix-vector
work into matrix-matrix work. This measures whether that headroom exists here:

- **Peak**: ONNX Runtime (the same settings as the server's engines, `engines.engine`) running one
  1024 x 1024 x 1024 fp32 MatMul: the rate its GEMM kernels reach on this CPU with `--intra-op-threads`.
- **Engine**: the speech model (`--repo`/`--model`) on `--seconds` of seeded noise (its cost does not depend
  on the content), the same clip `B` times (no padding), for each batch size; ONNX Runtime's profiler
  gives each node's input shapes, from which the Conv, GRU, MatMul and Gemm floating-point operations are
  counted (2 per multiply-add). Reported: CPU ms per clip (the process's, over every thread), GFLOP/s,
  the share of the peak, and the speed-up over batch 1.

The largest speed-up batching could give the engine is about peak / (rate at batch 1); the measured
one is next to it. Prints a table, writes `--out` JSON and a PNG beside it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # in place of bench/ when run as a script: `bench` is a package
from bench import speech_ctc as speech_bench  # noqa: E402
from engines.engine import session_options  # noqa: E402
from engines.manifest import read_manifest, version_dir  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "speech_roofline.json"
COUNTED_OPS = ("Conv", "FusedConv", "GRU", "MatMul", "FusedMatMul", "Gemm")


@dataclass
class Row:
    batch: int
    cpu_ms_per_clip: float
    wall_ms_per_clip: float
    gflops_per_clip: float
    gflop_per_s: float
    share_of_peak: float
    speedup_vs_batch_1: float


def _shape(entry: dict[str, list[int]]) -> list[int]:
    [dims] = entry.values()
    return list(dims)


def node_flops(op: str, inputs: list[list[int]], outputs: list[list[int]]) -> float:
    """Floating-point operations (2 per multiply-add) of one counted node, from the shapes ONNX Runtime's
    profiler records (it leaves out constant weights it has pre-packed, so they are read from the outputs)."""
    if op in ("Conv", "FusedConv"):  # W: (out, in / groups, k...); output: (N, out, spatial...)
        weight, out = inputs[1], outputs[0]
        return 2.0 * float(np.prod(out)) * float(np.prod(weight[1:]))
    if op == "GRU":  # X: (T, N, I); Y: (T, dirs, N, H); 3 gates over [x, h]
        (t, n, i), (_, dirs, _, h) = inputs[0], outputs[0]
        return 2.0 * t * n * dirs * 3 * h * (i + h)
    if op in ("MatMul", "FusedMatMul", "Gemm"):  # A: (..., M, K) or its transpose; B constant; out: (..., M, N)
        out = outputs[0]
        k = float(np.prod(inputs[0])) * out[-1] / float(np.prod(out))
        return 2.0 * float(np.prod(out)) * k
    raise ValueError(op)


def profiled_flops(profile: Path) -> tuple[float, dict[str, float]]:
    """Total counted FLOPs of the profiled runs' last run, and their split by operator type."""
    events = json.loads(profile.read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
             and e.get("args", {}).get("op_name") in COUNTED_OPS]
    last: dict[str, dict[str, Any]] = {}
    for e in nodes:  # the same node name again = a later run; keep the last
        last[e["name"]] = e
    by_op: dict[str, float] = defaultdict(float)
    for e in last.values():
        args = e["args"]
        inputs = [_shape(x) for x in args["input_type_shape"]]
        outputs = [_shape(x) for x in args["output_type_shape"]]
        by_op[args["op_name"]] += node_flops(args["op_name"], inputs, outputs)
    return sum(by_op.values()), dict(by_op)


def _timed(session: ort.InferenceSession, feeds: dict[str, np.ndarray], min_s: float) -> tuple[float, float]:
    """CPU and wall seconds per run, over at least `min_s` of runs (after one warm-up)."""
    session.run(None, feeds)
    runs, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - wall0 < min_s or runs < 3:
        session.run(None, feeds)
        runs += 1
    return (time.process_time() - cpu0) / runs, (time.perf_counter() - wall0) / runs


def gemm_peak(threads: int, min_s: float) -> float:
    """GFLOP/s of ONNX Runtime's fp32 MatMul, 1024 x 1024 x 1024, with the engines' session settings."""
    from onnx import TensorProto, helper

    size = 1024
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((size, size)).astype(np.float32) for n in ("a", "b")}
    _, wall = _timed(session, feeds, min_s)
    return 2.0 * size ** 3 / wall / 1e9


def engine_feeds(batch: int, samples: int, seed: int) -> dict[str, np.ndarray]:
    clip = (np.random.default_rng(seed).standard_normal(samples) * 0.05).astype(np.float32)
    return {"audio": np.tile(clip, (batch, 1)), "audio_lengths": np.full(batch, samples, np.int64)}


def measure_engine(model_path: Path, threads: int, batch: int, samples: int, min_s: float,
                   tmp: Path) -> tuple[float, float, float, dict[str, float]]:
    """(CPU s, wall s, counted FLOPs, FLOPs by op) of one run at `batch`."""
    opts = session_options(threads)
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp / f"b{batch}")
    profiled = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    feeds = engine_feeds(batch, samples, seed=batch)
    profiled.run(None, feeds)
    flops, by_op = profiled_flops(Path(profiled.end_profiling()))
    session = ort.InferenceSession(str(model_path), session_options(threads), providers=["CPUExecutionProvider"])
    cpu, wall = _timed(session, feeds, min_s)
    return cpu, wall, flops, by_op


def plot(rows: list[Row], peak: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot([r.batch for r in rows], [r.gflop_per_s for r in rows], "o-", label="speech engine")
    ax.axhline(peak, color="tab:red", linestyle="--", label=f"ORT fp32 GEMM peak ({peak:.0f})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (same clip, no padding)")
    ax.set_ylabel("GFLOP/s")
    ax.set_ylim(0, peak * 1.15)
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="bench/speech_roofline.py", description=__doc__.split("\n")[0])
    p.add_argument("--repo", type=Path, default=ROOT / "model_repository")
    p.add_argument("--model", default="speech_ctc")
    p.add_argument("--version", type=int, default=0, help="0: the highest")
    p.add_argument("--random-preset", default=None, metavar="PRESET",
                   help="export this models.speech_ctc preset with seeded random weights instead of --repo "
                        "(the cost does not depend on the weights; needs torch)")
    p.add_argument("--intra-op-threads", type=int, default=1)
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    p.add_argument("--seconds", type=float, default=4.0, help="clip length")
    p.add_argument("--min-measure-s", type=float, default=3.0, help="timed runs per row last at least this")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    if args.intra_op_threads < 1 or args.seconds <= 0 or min(batches) < 1:
        print("bench/speech_roofline.py: error: threads, seconds and batch sizes must be positive", file=sys.stderr)
        return 1
    machine = speech_bench.machine_info()
    with tempfile.TemporaryDirectory(prefix="nui-roofline-") as tmp:
        repo = args.repo
        if args.random_preset is not None:
            repo = Path(tmp) / "repo"
            speech_bench.publish_random_model(args.random_preset, repo, args.model, seed=0)
        return _run(args, argv, machine, version_dir(repo, args.model, args.version or None), Path(tmp))


def _run(args: argparse.Namespace, argv: list[str], machine: dict[str, Any], folder: Path, tmp: Path) -> int:
    batches = [int(b) for b in args.batch_sizes.split(",")]
    manifest = read_manifest(folder)
    version = int(folder.name)
    rate = int(manifest.config["sample_rate_hz"])
    samples = round(args.seconds * rate)
    peak = gemm_peak(args.intra_op_threads, args.min_measure_s)
    rows: list[Row] = []
    split: dict[str, float] = {}
    for batch in tqdm(batches, desc="batch sizes", unit="size"):
        cpu, wall, flops, by_op = measure_engine(folder / "model.onnx", args.intra_op_threads, batch, samples,
                                                 args.min_measure_s, tmp)
        rate_gflops = flops / wall / 1e9
        base = rows[0].wall_ms_per_clip if rows else wall * 1e3 / batch
        rows.append(Row(batch, cpu * 1e3 / batch, wall * 1e3 / batch, flops / batch / 1e9, rate_gflops,
                        rate_gflops / peak, base / (wall * 1e3 / batch)))
        if batch == batches[0]:
            split = {op: f / flops for op, f in by_op.items()}
    print(f"ONNX Runtime fp32 GEMM peak, {args.intra_op_threads} thread(s): {peak:.1f} GFLOP/s")
    print(f"{args.model} v{version}, {args.seconds:g} s clip: counted work by op "
          + ", ".join(f"{op} {share:.0%}" for op, share in sorted(split.items(), key=lambda kv: -kv[1])))
    print(f"{'batch':>5} {'CPU ms/clip':>11} {'wall ms/clip':>12} {'GFLOP/clip':>10} {'GFLOP/s':>8} "
          f"{'of peak':>7} {'speed-up':>8}")
    for r in rows:
        print(f"{r.batch:>5} {r.cpu_ms_per_clip:>11.1f} {r.wall_ms_per_clip:>12.1f} {r.gflops_per_clip:>10.3f} "
              f"{r.gflop_per_s:>8.1f} {r.share_of_peak:>7.0%} {r.speedup_vs_batch_1:>7.2f}x")
    ceiling = peak / rows[0].gflop_per_s
    print(f"ceiling on batching's speed-up of the engine: peak / batch-{rows[0].batch} rate = {ceiling:.2f}x; "
          f"best measured {max(r.speedup_vs_batch_1 for r in rows):.2f}x")
    report: dict[str, Any] = {
        "benchmark": "speech_roofline", "command": shlex.join(["python", "bench/speech_roofline.py", *argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {**machine, "load_average_at_end": list(os.getloadavg())},
        "model": {"name": args.model, "version": version, "precision": manifest.precision,
                  "random_preset": args.random_preset, "config": manifest.config},
        "intra_op_threads": args.intra_op_threads, "clip_s": args.seconds,
        "gemm_peak_gflop_per_s": peak, "flops_share_by_op": split, "speedup_ceiling": ceiling,
        "rows": [asdict(r) for r in rows],
    }
    speech_bench.write_json(args.out, report)
    png = args.out.with_suffix(".png")
    plot(rows, peak, png, f"{args.model} v{version}: arithmetic rate per batch size, "
                          f"{args.intra_op_threads} ORT thread(s), {machine['cpu_model']}")
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

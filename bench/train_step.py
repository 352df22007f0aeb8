"""Speech training-step efficiency: achieved TFLOP/s and % of the card's dense FP16 peak, per variant.

    python bench/train_step.py --preset ds2 --batch 64 --audio-s 8          # on a GPU (issue 7, part 5)
    python bench/train_step.py --preset tiny --batch 4 --audio-s 2 --device cpu --steps 3 --warmup 1

One step is what `training.speech_ctc` does per batch: forward under autocast, FP32 CTC loss, scaled
backward, unscale, gradient clipping, AdamW step (training.common.amp / optim), on a synthetic batch of
`--batch` clips of `--audio-s` seconds with 15 characters per second of targets. Variants, timed side
by side in one run (`--variants`):

- `fp32`: no autocast (the baseline the FP16 speed-up is measured against);
- `amp`: the training default (FP16 autocast + GradScaler on CUDA, bf16 on CPU), AdamW (foreach);
- `amp-fused`: the same with fused AdamW (`fused=True`, one kernel for the whole update; CUDA only);
- `amp-cudnn-bench`: `amp-fused` with `torch.backends.cudnn.benchmark` (algorithm search per shape).

FLOPs of one step are counted once with `torch.utils.flop_counter` on the CPU for one 2 s clip (there
nn.GRU decomposes into matmuls, so the recurrent layers are counted; cuDNN's fused RNN kernel is
invisible to the counter on CUDA), scaled by output frames to `--audio-s` and by the batch. Peak = the
card's dense FP16 tensor-core figure from its datasheet (table below, by device name; none for CPUs); "% mm"
is the share of an 8192^3 FP16 matmul measured on the same card in the same run. `--hidden` / `--layers`
resize the preset's GRU stack; `--profile` adds the top kernels of one step of the last variant. Prints a
table and writes `--out` JSON (+ PNG of TFLOP/s per variant) with the device, torch/CUDA versions and the
command.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the repository root, in place of bench/ (whose triton/ folder would shadow the triton package)
sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from tqdm import tqdm  # noqa: E402

from models.speech_ctc import SpeechCTC, SpeechCTCConfig, get_preset, output_lengths  # noqa: E402
from training.common.amp import autocast, make_scaler, resolve_amp  # noqa: E402

# dense FP16 tensor-core TFLOP/s (no sparsity), by a substring of torch.cuda.get_device_name()
PEAK_FP16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0,
                    "L40S": 362.0, "A10": 125.0, "L4": 121.0, "V100": 125.0, "T4": 65.0}
VARIANTS = ("fp32", "amp", "amp-fused", "amp-cudnn-bench")
CHARS_PER_S = 15


def matmul_ceiling_tflops(device: torch.device, n: int = 8192, reps: int = 10) -> float | None:
    """Measured FP16 dense matmul rate (n x n x n on random data, CUDA events, after warm-up): the ceiling
    a training step can approach on this card, beside the datasheet figure."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(n, n, device=device, dtype=torch.float16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (start.elapsed_time(end) / 1000) / 1e12


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FP16_TFLOPS.items() if k in name), None)


def synthetic_batch(batch: int, audio_s: float, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    samples = int(audio_s * 16000)
    n_chars = int(audio_s * CHARS_PER_S)
    return {"audio": torch.randn(batch, samples, generator=g) * 0.1,
            "audio_lengths": torch.full((batch,), samples, dtype=torch.int64),
            "targets": torch.randint(1, vocab, (batch, n_chars), generator=g),
            "target_lengths": torch.full((batch,), n_chars, dtype=torch.int64)}


def make_step(model: SpeechCTC, device: torch.device, amp: str,
              fused: bool) -> Callable[[dict[str, torch.Tensor]], None]:
    mode = resolve_amp("auto", device) if amp == "auto" else "none"
    scaler = make_scaler(mode, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)

    def step(b: dict[str, torch.Tensor]) -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(mode, device):
            log_probs, out_lengths = model(b["audio"], b["audio_lengths"])
        loss = F.ctc_loss(log_probs.float().transpose(0, 1), b["targets"], out_lengths, b["target_lengths"],
                          blank=0, reduction="mean", zero_infinity=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        scaler.step(optimizer)
        scaler.update()

    return step


def model_config(args: argparse.Namespace) -> SpeechCTCConfig:
    """The preset, with --hidden / --layers in place of its recurrent sizes where given."""
    cfg = get_preset(args.preset)
    return dataclasses.replace(cfg, rnn_hidden=args.hidden or cfg.rnn_hidden, rnn_layers=args.layers or cfg.rnn_layers)


def flops_per_clip(cfg: SpeechCTCConfig, audio_s: float, count_s: float = 2.0) -> float:
    """Forward + backward FLOPs of one `audio_s` clip, counted on the CPU in FP32 on a `count_s` clip and
    scaled by the output frames (every layer's cost is per frame; counting a long clip of a wide model on
    the CPU takes minutes)."""
    model = SpeechCTC(cfg).train()
    count_s = min(count_s, audio_s)
    b = synthetic_batch(1, count_s, model.cfg.vocab_size)
    with FlopCounterMode(display=False) as counter:
        log_probs, out_lengths = model(b["audio"], b["audio_lengths"])
        F.ctc_loss(log_probs.transpose(0, 1), b["targets"], out_lengths, b["target_lengths"],
                   zero_infinity=True).backward()
    frames = output_lengths(cfg, torch.tensor([int(audio_s * 16000)]))
    return float(counter.get_total_flops()) * float(frames[0]) / float(out_lengths[0])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variant(variant: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    if variant != "fp32" and device.type == "cpu" and resolve_amp("auto", device) == "none":
        return {"variant": variant, "skipped": "this CPU has no native bf16"}
    if variant in ("amp-fused", "amp-cudnn-bench") and device.type != "cuda":
        return {"variant": variant, "skipped": "needs CUDA"}
    torch.backends.cudnn.benchmark = variant == "amp-cudnn-bench"
    torch.manual_seed(0)
    model = SpeechCTC(model_config(args)).to(device).train()
    step = make_step(model, device, "none" if variant == "fp32" else "auto", fused=variant != "amp")
    batch = {k: v.to(device) for k, v in synthetic_batch(args.batch, args.audio_s, model.cfg.vocab_size).items()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step(batch)
    sync(device)
    times = []
    for _ in tqdm(range(args.steps), desc=variant, leave=False):
        t0 = time.perf_counter()
        step(batch)
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    out: dict[str, Any] = {"variant": variant, "step_s_median": median, "step_s_min": times[0],
                           "audio_s_per_s": args.batch * args.audio_s / median}
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if args.profile and variant == args.variants.split(",")[-1]:
        out["top_kernels"] = profile_step(step, batch, device)
    del model, step, batch
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def profile_step(step: Callable[[dict[str, torch.Tensor]], None], batch: dict[str, torch.Tensor],
                 device: torch.device, top: int = 15) -> list[dict[str, Any]]:
    """Where one step's device time goes: the `top` kernels (CPU ops on a CPU) by total self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        step(batch)
        sync(device)
    rows = []
    for e in prof.key_averages():
        us = e.self_device_time_total if device.type == "cuda" else e.self_cpu_time_total
        if us > 0:
            rows.append({"name": e.key[:120], "calls": e.count, "ms": us / 1000})
    rows.sort(key=lambda r: -r["ms"])
    total = sum(r["ms"] for r in rows)
    for r in rows:
        r["share"] = r["ms"] / total if total else 0.0
    print(f"one step's {'kernels' if device.type == 'cuda' else 'ops'}: {total:.1f} ms in all; top {top}:")
    for r in rows[:top]:
        print(f"  {r['ms']:8.2f} ms {100 * r['share']:5.1f} % {r['calls']:5d}x  {r['name'][:90]}")
    return rows[:top]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ds2")
    p.add_argument("--hidden", type=int, default=None, help="GRU width in place of the preset's")
    p.add_argument("--layers", type=int, default=None, help="GRU layers in place of the preset's")
    p.add_argument("--profile", action="store_true", help="kernel-time breakdown of one step of the last variant")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--audio-s", type=float, default=8.0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", type=Path, default=Path("bench/results/train_step.json"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    cfg = model_config(args)
    flops = flops_per_clip(cfg, args.audio_s) * args.batch
    peak, ceiling = peak_tflops(device), matmul_ceiling_tflops(device)
    rows = [time_variant(v, args, device) for v in variants]
    for r in rows:
        if "step_s_median" in r:
            r["tflops"] = flops / r["step_s_median"] / 1e12
            r["percent_of_peak"] = 100 * r["tflops"] / peak if peak else None
            r["percent_of_matmul"] = 100 * r["tflops"] / ceiling if ceiling else None
    base = next((r for r in rows if r["variant"] == "fp32" and "tflops" in r), None)
    print(f"{args.preset} (hidden {cfg.rnn_hidden} x {cfg.rnn_layers} layers), batch {args.batch} x "
          f"{args.audio_s:g} s, {flops / 1e12:.2f} TFLOP per step, "
          f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}"
          f"{f', peak {peak:g} TFLOP/s FP16' if peak else ''}"
          f"{f', measured 8192^3 FP16 matmul {ceiling:.0f} TFLOP/s' if ceiling else ''}")
    print(f"{'variant':<16}{'step ms':>10}{'audio s/s':>11}{'TFLOP/s':>9}{'% peak':>8}{'% mm':>7}{'vs fp32':>8}"
          f"{'GiB':>7}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['variant']:<16}  skipped: {r['skipped']}")
            continue
        pct = f"{r['percent_of_peak']:.1f}" if r.get("percent_of_peak") is not None else "-"
        mm = f"{r['percent_of_matmul']:.1f}" if r.get("percent_of_matmul") is not None else "-"
        speedup = f"{base['step_s_median'] / r['step_s_median']:.2f}x" if base else "-"
        mem = f"{r['peak_memory_gib']:.1f}" if "peak_memory_gib" in r else "-"
        print(f"{r['variant']:<16}{1000 * r['step_s_median']:>10.1f}{r['audio_s_per_s']:>11.1f}"
              f"{r['tflops']:>9.2f}{pct:>8}{mm:>7}{speedup:>8}{mem:>7}")
    result = {"command": shlex.join([sys.executable, *sys.argv]), "date": dt.datetime.now(dt.UTC).isoformat(),
              "torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
              "peak_fp16_tflops": peak, "matmul_fp16_tflops": ceiling, "preset": args.preset,
              "rnn_hidden": cfg.rnn_hidden, "rnn_layers": cfg.rnn_layers,
              "params": sum(p.numel() for p in SpeechCTC(cfg).parameters()),
              "batch": args.batch, "audio_s": args.audio_s,
              "flops_per_step": flops, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, args.out.with_suffix(".png"), f"{args.preset} training step on {result['device_name'] or device}")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    try:
        import matplotlib
    except ImportError:  # the GPU machine's image may lack it; the JSON and the table are the result
        print("matplotlib is not installed: no plot")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if "tflops" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([r["variant"] for r in done], [r["tflops"] for r in done], color="#4C72B0")
    ax.set_ylabel("achieved TFLOP/s")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())

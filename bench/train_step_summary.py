"""One table and one plot from many `bench/train_step.py` results (the GPU sizing sweep of issue 7).

    python bench/train_step_summary.py bench/results/gpu --out bench/results/gpu/train_step_summary.json

Reads every `train_step_*.json` in the folder; per file and variant: GRU width x layers, parameters, batch,
step time, audio seconds per second, TFLOP/s, % of the datasheet FP16 peak and of the FP16 matmul measured
in the same run. Prints the table (markdown), writes `--out` JSON and a PNG beside it (TFLOP/s per
configuration, its best AMP variant where one ran). Needs no GPU and no torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def rows(folder: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(folder.glob("train_step_*.json")):
        if path.name.endswith("summary.json"):
            continue
        r = json.loads(path.read_text())
        for v in r["rows"]:
            if "tflops" not in v:
                continue
            out.append({"file": path.name, "device": r["device_name"], "hidden": r.get("rnn_hidden"),
                        "layers": r.get("rnn_layers"), "params_m": r.get("params", 0) / 1e6, "batch": r["batch"],
                        "audio_s": r["audio_s"], "variant": v["variant"], "step_ms": 1000 * v["step_s_median"],
                        "audio_s_per_s": v["audio_s_per_s"], "tflops": v["tflops"],
                        "pct_peak": v.get("percent_of_peak"), "pct_matmul": v.get("percent_of_matmul"),
                        "gib": v.get("peak_memory_gib")})
    out.sort(key=lambda x: (x["layers"] or 0, x["hidden"] or 0, x["batch"], x["variant"]))
    return out


def table(items: list[dict[str, Any]]) -> str:
    head = ("| GRU | params | batch | variant | step ms | audio s/s | TFLOP/s | % peak | % matmul | GiB |\n"
            "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    lines = [head]

    def num(v: float | None) -> str:
        return f"{v:.1f}" if v is not None else "-"

    for x in items:
        lines.append(f"| {x['hidden']} x {x['layers']} | {x['params_m']:.0f}M | {x['batch']} | {x['variant']} | "
                     f"{x['step_ms']:.0f} | {x['audio_s_per_s']:.0f} | {x['tflops']:.1f} | {num(x['pct_peak'])} | "
                     f"{num(x['pct_matmul'])} | {num(x['gib'])} |")
    return "\n".join(lines)


def plot(items: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    amp = [x for x in items if x["variant"] != "fp32"]
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for x in amp or items:
        key = (x["layers"], x["hidden"], x["batch"])
        if key not in best or x["tflops"] > best[key]["tflops"]:
            best[key] = x
    configs = sorted(best.values(), key=lambda x: (x["layers"], x["hidden"], x["batch"]))
    fig, ax = plt.subplots(figsize=(9, 4))
    labels = [f"{x['hidden']}x{x['layers']}\nb{x['batch']}" for x in configs]
    bars = ax.bar(labels, [x["tflops"] for x in configs],
                  color=["#C44E52" if x["hidden"] % 8 else "#4C72B0" for x in configs])
    for bar, x in zip(bars, configs, strict=True):
        if x["pct_peak"] is not None:
            ax.annotate(f"{x['pct_peak']:.0f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("achieved TFLOP/s (label: % of FP16 peak)")
    ax.set_xlabel("GRU width x layers, per-GPU batch of 8 s clips (red: width not a multiple of 8)")
    ax.set_title(f"speech training step ({'AMP' if amp else 'FP32'}) on {configs[0]['device']}", fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    items = rows(args.folder)
    if not items:
        p.error(f"no train_step_*.json results in {args.folder}")
    print(table(items))
    args.out.write_text(json.dumps({"rows": items}, indent=2) + "\n")
    plot(items, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""PNG of training curves (loss per step, metrics per epoch) and the run report written after every epoch."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_curves(path: Path, losses: Sequence[tuple[int, float]], history: Sequence[dict[str, Any]],
                metrics: Sequence[str], title: str) -> Path:
    """losses: (step, train loss); history: per-epoch dicts with "epoch" and each of `metrics`."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if losses:
        steps, values = zip(*losses, strict=True)
        axes[0].plot(steps, values, lw=1)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("train loss")
    axes[0].set_yscale("log")
    axes[0].grid(alpha=0.3)
    for m in metrics:
        pts = [(h["epoch"], h[m]) for h in history if m in h]
        if pts:
            x, y = zip(*pts, strict=True)
            axes[1].plot(x, y, marker="o", label=m)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("dev metric")
    axes[1].grid(alpha=0.3)
    axes[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(run_dir: Path, history: Sequence[dict[str, Any]], steps: int, metrics: Sequence[str],
                 title: str, extra: dict[str, Any] | None = None) -> None:
    """`<run_dir>/metrics.json` (the per-epoch entries of a run's history: those holding `metrics[0]`,
    plus the `extra` keys, e.g. a fitted temperature) and `<run_dir>/curves.png`, rewritten after every
    epoch."""
    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    epochs = [h for h in history if metrics[0] in h]
    report = {"history": epochs, "steps": steps, **(extra or {})}
    (run_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    plot_curves(run_dir / "curves.png", losses, epochs, metrics, title)

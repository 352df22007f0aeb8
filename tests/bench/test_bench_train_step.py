"""bench/train_step.py end to end on the CPU with the tiny preset (the real run is on a GPU, issue 7)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_times_the_variants_this_device_has_and_counts_flops(tmp_path: Path) -> None:
    out = tmp_path / "train_step.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "train_step.py"), "--preset", "tiny", "--batch", "2",
                           "--audio-s", "1", "--device", "cpu", "--steps", "2", "--warmup", "1",
                           "--variants", "fp32,amp-fused", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["preset"] == "tiny" and result["batch"] == 2 and result["peak_fp16_tflops"] is None
    fp32, fused = result["rows"]
    # forward + backward of two 1 s clips: a few MFLOP for the tiny model, never zero
    assert result["flops_per_step"] > 1e6
    assert fp32["variant"] == "fp32" and fp32["step_s_median"] > 0
    assert abs(fp32["tflops"] - result["flops_per_step"] / fp32["step_s_median"] / 1e12) < 1e-12
    assert fused == {"variant": "amp-fused", "skipped": "needs CUDA"}
    assert out.with_suffix(".png").stat().st_size > 0
    assert "fp32" in proc.stdout and "skipped: needs CUDA" in proc.stdout


def test_resized_stack_profile_and_the_sizing_summary(tmp_path: Path) -> None:
    out = tmp_path / "train_step_h24x2_b2.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "train_step.py"), "--preset", "tiny", "--batch", "2",
                           "--audio-s", "3", "--device", "cpu", "--steps", "2", "--warmup", "1", "--hidden", "24",
                           "--layers", "2", "--variants", "fp32", "--profile", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert (result["rnn_hidden"], result["rnn_layers"]) == (24, 2) and result["matmul_fp16_tflops"] is None
    top = result["rows"][0]["top_kernels"]
    assert top and all(r["ms"] > 0 for r in top) and 0 < sum(r["share"] for r in top) <= 1 + 1e-9
    summary = tmp_path / "train_step_summary.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "train_step_summary.py"), str(tmp_path),
                           "--out", str(summary)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| 24 x 2 |" in proc.stdout and json.loads(summary.read_text())["rows"][0]["hidden"] == 24


def test_flops_counted_on_a_short_clip_scale_to_the_long_one() -> None:
    spec = importlib.util.spec_from_file_location("bench_train_step", ROOT / "bench" / "train_step.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    first = sys.path[0]
    try:
        spec.loader.exec_module(module)  # it puts the repository root first on sys.path
    finally:
        sys.path[0] = first
    from models.speech_ctc import get_preset

    cfg = get_preset("tiny")
    scaled, counted = module.flops_per_clip(cfg, 6.0, count_s=1.5), module.flops_per_clip(cfg, 6.0, count_s=6.0)
    assert abs(scaled - counted) / counted < 0.01

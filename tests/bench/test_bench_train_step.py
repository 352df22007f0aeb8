"""bench/train_step.py end to end on the CPU with the tiny preset (the real run is on a GPU, issue 7)."""

from __future__ import annotations

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

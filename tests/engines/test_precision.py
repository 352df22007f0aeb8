"""FP16 range report: bucket counts against FP16's limits, activations split by island, the nui precision CLI."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from engines.export_speech import export_speech_ctc, noise_clips
from engines.fp16 import PLANS
from engines.precision import LOG2_RANGE, MagnitudeCounts, activation_counts, weight_counts
from models.speech_ctc import build, get_preset


@pytest.fixture(scope="module")
def speech_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    repo = tmp_path_factory.mktemp("repo")
    export_speech_ctc(build(get_preset("tiny")).eval(), repo)
    return repo


def test_counts_place_values_against_fp16_limits() -> None:
    c = MagnitudeCounts()
    c.add(np.array([0.0, -1e-9, 1e-6, 1.0, -1e5, np.inf], dtype=np.float32))
    assert (c.total, c.zeros, c.below_subnormal, c.subnormal, c.overflow, c.nonfinite) == (6, 1, 1, 1, 1, 1)
    assert c.buckets[0 - LOG2_RANGE[0]] == 1  # 1.0 is in [2^0, 2^1)
    assert c.buckets[int(np.floor(np.log2(1e-6))) - LOG2_RANGE[0]] == 1
    d = c.to_dict()
    assert d["share_above_fp16_max"] == pytest.approx(1 / 6) and sum(d["log2_buckets"].values()) == 4


def test_quiet_audio_underflows_only_inside_the_featurizer_island(speech_repo: Path) -> None:
    """At -90 dBFS the power spectrum is below FP16's subnormals: in the FP32 island, not in FP16 tensors."""
    path = speech_repo / "speech_ctc" / "1" / "model.onnx"
    x = noise_clips(1)[0]
    quiet = (x / np.abs(x).max() * 3e-5).astype(np.float32)
    acts = activation_counts(path, [{"audio": quiet[None], "audio_lengths": np.array([len(quiet)])}],
                             PLANS["speech_ctc"])
    assert acts["fp32_islands"].below_subnormal > 0
    assert acts["fp16"].total > 0 and acts["fp16"].overflow == 0
    w = weight_counts(onnx.load(str(path)))
    assert w.total > 0 and w.overflow == 0


def _wav(path: Path, x: np.ndarray) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


def test_nui_precision_writes_json_and_png(speech_repo: Path, tmp_path: Path) -> None:
    from nui.precision import main

    lines = []
    for i, clip in enumerate(noise_clips(3)):
        _wav(tmp_path / f"{i}.wav", clip)
        lines.append(json.dumps({"audio_filepath": f"{i}.wav", "duration": len(clip) / 16000, "text": "a b"}))
    (tmp_path / "dev.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "report"
    assert main(["--repo", str(speech_repo), "--model", "speech_ctc", "--data", str(tmp_path / "dev.jsonl"),
                 "--limit", "3", "--out", str(out)]) == 0
    report = json.loads((out / "precision.json").read_text())
    assert report["weights"]["total"] > 0 and report["activations_computed_in_FP16"]["total"] > 0
    gate = report["metric_deltas"]["fp16_vs_fp32"]
    assert gate["clips"] == 3 and "greedy_wer_delta" in gate
    assert (out / "histogram.png").stat().st_size > 10_000
    assert main(["--repo", str(speech_repo), "--model", "missing", "--data", str(tmp_path / "dev.jsonl"),
                 "--out", str(out)]) == 1

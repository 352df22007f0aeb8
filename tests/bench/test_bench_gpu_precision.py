"""bench/gpu_precision.py on the CPU: stage speech clips from a manifest, then compare the two precisions of a
tiny torch speech version (on a CPU both run FP32, so they agree exactly; the real run is on a GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from engines.export_speech import export_speech_ctc, noise_clips
from engines.torch_build import publish_torch, speech_feeds
from engines.torch_engine import TorchEngine
from models.speech_ctc import SpeechCTC, get_preset

ROOT = Path(__file__).resolve().parents[2]
BENCH = str(ROOT / "bench" / "gpu_precision.py")


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, BENCH, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_stage_then_run_compares_both_precisions(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SpeechCTC(get_preset("tiny")).eval()
    clips = noise_clips(3)
    onnx_dir, _ = export_speech_ctc(model, tmp_path / "stage")
    publish_torch(onnx_dir, model, tmp_path / "repo", "speech_ctc", precision="fp16",
                  feeds={None: [speech_feeds(clips)[0]]})
    lines = []
    for i, clip in enumerate(clips):
        sf.write(tmp_path / f"c{i}.wav", clip, 16000, subtype="PCM_16")
        lines.append(json.dumps({"audio_filepath": f"c{i}.wav", "duration": len(clip) / 16000, "text": "a b"}))
    (tmp_path / "dev.jsonl").write_text("\n".join(lines) + "\n")

    proc = _bench("stage", "--speech-manifest", str(tmp_path / "dev.jsonl"), "--out", str(tmp_path / "data"))
    assert proc.returncode == 0, proc.stderr
    staged = np.load(tmp_path / "data" / "speech.npz")
    assert staged["lengths"].tolist() == [len(c) for c in clips] and list(staged["texts"]) == ["a b"] * 3

    out = tmp_path / "gpu_precision.json"
    proc = _bench("run", "--repo", str(tmp_path / "repo"), "--data", str(tmp_path / "data"), "--device", "cpu",
                  "--batch", "2", "--repeats", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())["results"]
    speech = result["speech_ctc"]
    for comparison in ("fp16_vs_fp32", "cuda_vs_cpu_fp32"):
        assert speech[comparison]["clips"] == 3 and speech[comparison]["transcript_agreement"] == 1.0
        assert speech[comparison]["max_prob_diff"] == 0.0 and speech[comparison]["passed"]
    assert speech["speed"]["fp32"] > 0 and speech["audio_s"] > 0
    assert "skipped" in result["captioner"] and "skipped" in result["diagnosis"]
    assert "speech_ctc fp16_vs_fp32" in proc.stdout


def test_torch_engine_precision_override(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SpeechCTC(get_preset("tiny")).eval()
    onnx_dir, _ = export_speech_ctc(model, tmp_path / "stage")
    path, _ = publish_torch(onnx_dir, model, tmp_path / "repo", "speech_ctc", precision="fp16",
                            feeds={None: [speech_feeds(noise_clips(1))[0]]})
    feed = speech_feeds(noise_clips(2))[0]
    a = TorchEngine(path, device="cpu", precision="fp32").run(feed)
    b = TorchEngine(path, device="cpu").run(feed)  # fp16 on a CPU runs FP32
    np.testing.assert_array_equal(a["log_probs"], b["log_probs"])
    with pytest.raises(ValueError, match="fp32 or fp16"):
        TorchEngine(path, device="cpu", precision="bf16")

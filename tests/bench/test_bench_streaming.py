"""bench/streaming.py: the real-time verdict per level, and a tiny end-to-end run against a real server."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_bench() -> ModuleType:
    if not (ROOT / "proto" / "speech_pb2_grpc.py").exists():  # git-ignored build outputs
        subprocess.run(["bash", str(ROOT / "scripts" / "gen_stubs.sh")], check=True)
    spec = importlib.util.spec_from_file_location("bench_streaming", ROOT / "bench" / "streaming.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_a_level_is_real_time_only_without_failures_and_within_both_bounds() -> None:
    bench = load_bench()
    ok = [bench.StreamRecord(0.0, 0.05, [0.4, 0.5]), bench.StreamRecord(0.1, 0.07, [0.45])]
    row = bench.summarize(2, ok, 500.0, 1500.0)
    assert (row.ok, row.failed, row.real_time) == (2, 0, True)
    assert row.p50_final_ms == pytest.approx(60.0) and row.p50_interim_lag_ms == pytest.approx(450.0)
    assert not bench.summarize(3, [*ok, bench.StreamRecord(0.2, None, [], "UNAVAILABLE")], 500.0, 1500.0).real_time
    assert not bench.summarize(2, ok, 60.0, 1500.0).real_time  # p99 final 69.8 ms
    assert not bench.summarize(2, ok, 500.0, 480.0).real_time  # p99 interim lag ~499 ms


def write_manifest(folder: Path, seconds: list[float]) -> Path:
    """A JSONL manifest of tones (clip i: seconds[i] long, text "clip i") with paths relative to it."""
    import soundfile as sf

    (folder / "wavs").mkdir(parents=True)
    lines = []
    for i, s in enumerate(seconds):
        t = np.arange(int(s * 16000)) / 16000
        sf.write(folder / "wavs" / f"{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32), 16000)
        lines.append(json.dumps({"audio_filepath": f"wavs/{i}.wav", "duration": s, "text": f"clip {i}"}))
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "test.jsonl"


def test_speech_streams_join_seeded_clips_until_long_enough(tmp_path: Path) -> None:
    bench = load_bench()
    manifest = write_manifest(tmp_path, [0.5, 0.7, 0.9])
    entries = bench.read_manifest(manifest)
    audio, text = bench.speech_clips(manifest, entries, 1.5, seed=3)
    assert len(audio) >= 1.5 * 16000 and text.startswith("clip ") and len(text.split()) >= 4
    again, same = bench.speech_clips(manifest, entries, 1.5, seed=3)
    assert same == text and np.array_equal(again, audio)
    records = [bench.StreamRecord(0.0, 0.05, [], transcript="clip one"),
               bench.StreamRecord(0.0, 0.05, [], transcript="")]
    assert bench.summarize(2, records, 500.0, 1500.0, ["clip one", "clip two"]).wer_percent == pytest.approx(50.0)


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "streaming.json"
    manifest = write_manifest(tmp_path / "speech", [0.4, 0.6])
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "streaming.py"), "--random-preset", "tiny-streaming",
                           "--streams", "2,3", "--audio-s", "1", "--speech-manifest", str(manifest), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [r["streams"] for r in report["rows"]][:1] == [2] and report["rows"][0]["ok"] == 2
    assert report["rows"][0]["wer_percent"] is not None and "speech from" in report["audio"]
    assert report["server"]["exit_status"] == 0 and out.with_suffix(".png").exists()
    assert "largest N that stayed real time" in proc.stdout

"""bench/streaming.py: the real-time verdict per level, and a tiny end-to-end run against a real server."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

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


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "streaming.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "streaming.py"), "--random-preset", "tiny-streaming",
                           "--streams", "2,3", "--audio-s", "1", "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [r["streams"] for r in report["rows"]][:1] == [2] and report["rows"][0]["ok"] == 2
    assert report["server"]["exit_status"] == 0 and out.with_suffix(".png").exists()
    assert "largest N that stayed real time" in proc.stdout

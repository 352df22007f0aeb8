"""bench/speech_ctc.py runs end to end on a random-weight tiny model and reports every row it promises."""

from __future__ import annotations

import importlib.util
import json
import math
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_bench() -> ModuleType:
    """bench/ is a folder of scripts, not a package: load the script as a module."""
    if not (ROOT / "proto" / "speech_pb2_grpc.py").exists():  # git-ignored build outputs
        subprocess.run(["bash", str(ROOT / "scripts" / "gen_stubs.sh")], check=True)
    spec = importlib.util.spec_from_file_location("bench_speech_ctc", ROOT / "bench" / "speech_ctc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_summarize_counts_completions_in_the_window_and_latency_of_requests_started_in_it() -> None:
    bench = load_bench()
    setup = bench.SERVER_CONFIGS[0]
    result = bench.LoadResult(window=(10.0, 20.0))
    result.records = [
        (9.0, 10.5, "OK", 2.0),  # warm-up request finishing in the window: throughput, not latency
        (11.0, 11.1, "OK", 3.0),
        (12.0, 12.3, "OK", 4.0),
        (19.5, 21.0, "OK", 5.0),  # started in the window, finished after: latency, not throughput
        (13.0, 13.0, "RESOURCE_EXHAUSTED", 1.0),
        (21.0, 21.5, "UNAVAILABLE", 1.0),  # drain: still an error
    ]
    row = bench.summarize(setup, 4, result)
    assert row.requests == 3 and row.req_per_s == pytest.approx(0.3)
    assert row.audio_s_per_s == pytest.approx(0.9)
    assert row.latency_samples == 3
    assert row.p50_ms == pytest.approx(300.0)
    assert row.errors == {"RESOURCE_EXHAUSTED": 1, "UNAVAILABLE": 1}
    assert row.resource_exhausted == 1 and row.error_count == 2 and row.total_requests == 6


@pytest.mark.slow
def test_quick_bench_on_a_random_tiny_model_writes_every_row(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("espeak-ng") is None or shutil.which("flite") is None or shutil.which("festival") is None:
        pytest.skip("the bench clips need espeak-ng, flite and festival (bash scripts/setup.sh installs them)")
    bench = load_bench()
    out = tmp_path / "results" / "speech_ctc.json"
    argv = ["--random-preset", "tiny", "--quick", "--duration-s", "1", "--warmup-s", "0.5", "--min-measure-s",
            "0.2", "--concurrency", "1,4", "--out", str(out)]
    assert bench.main(argv) == 0

    report = json.loads(out.read_text())
    assert report["command"] == shlex.join(["python", "bench/speech_ctc.py", *argv])
    assert report["model"]["source"] == "random-preset:tiny"
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["onnxruntime"]
    assert len(report["clips"]) == 16
    assert all(1.5 <= c["duration_s"] <= 8.0 for c in report["clips"])

    assert [(r["batch_size"], r["decoder"]) for r in report["offline"]] == [(1, "greedy"), (8, "greedy"),
                                                                           (16, "greedy")]
    assert all(r["x_real_time"] > 0 and r["clips_run"] >= 16 for r in report["offline"])

    rows = {(r["config"], r["concurrency"]): r for r in report["server"]}
    assert set(rows) == {(name, c) for name in ("batching on", "batching off") for c in (1, 4)}
    for row in rows.values():
        assert row["req_per_s"] > 0 and row["audio_s_per_s"] > 0
        assert row["errors"] == {} and row["error_count"] == 0
        assert math.isfinite(row["p99_ms"]) and 0 < row["p50_ms"] <= row["p99_ms"]
    assert [s["max_batch_size"] for s in report["server_configs"]] == [16, 1]
    assert all(s["exit_code"] == 0 for s in report["server_configs"])  # stopped gracefully on SIGTERM

    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "batching off" in table and "x real time" in table

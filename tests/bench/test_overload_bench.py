"""bench/overload.py: the summary and the server-side deltas are computed right, and a tiny run against a
real `nui serve` at 4x its measured capacity sheds, loses no call and writes its report and plot."""

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
    spec = importlib.util.spec_from_file_location("bench_overload", ROOT / "bench" / "overload.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_summary_and_server_deltas() -> None:
    bench = load_bench()
    r = bench.BudgetResult(50.0, capacity_rps=10.0, offered_rps=40.0, overload_s=2.0)
    r.unloaded = [bench.Call(0.0, 0.010 * k, "OK") for k in range(1, 101)]  # 10..1000 ms
    r.overload = [bench.Call(0.0, 0.5, "OK")] * 30 + [bench.Call(0.0, 0.001, "RESOURCE_EXHAUSTED")] * 50
    s = r.summary()
    assert s["ok"] == 30 and s["shed"] == 50 and s["lost"] == 0 and s["offered_x_capacity"] == 4.0
    assert s["unloaded_p99_ms"] == pytest.approx(990.1) and s["admitted_p99_ms"] == pytest.approx(500.0)
    assert s["admitted_p99_x_unloaded_p99"] == pytest.approx(500.0 / 990.1) and s["ok_rps_during_overload"] == 15.0
    before = {"shed_queue_wait": 5, "queue_s": 1.0, "queued": 10, "compute_s": 2.0, "runs": 10,
                      "items_run": 10}
    after = {"shed_queue_wait": 55, "shed_deadline": 2, "queue_s": 1.6, "queued": 40, "compute_s": 3.5,
                     "runs": 25, "items_run": 40}
    d = bench.overload_counters(before, after)
    assert d["shed_queue_wait"] == 50 and d["shed_deadline"] == 2
    assert d["server_mean_queue_ms"] == pytest.approx(20.0) and d["server_mean_run_ms"] == pytest.approx(100.0)
    assert d["server_mean_batch"] == pytest.approx(2.0)


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "overload.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "overload.py"), "--overload-s", "3",
                           "--capacity-s", "2", "--unloaded-calls", "3", "--clips", "1", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    [row] = json.loads(out.read_text())["results"]
    assert row["budget_ms"] == 25 and row["capacity_rps"] > 0 and row["offered_x_capacity"] == pytest.approx(4.0)
    assert row["lost"] == 0 and row["ok"] > 0 and row["shed"] > 0 and row["exit_status"] == 0
    counted = row["server_counters"]  # during the overload, as the server counted it
    assert counted.get("shed_queue_wait", 0) + counted.get("shed_queue_full", 0) == row["shed"]
    assert out.with_suffix(".png").exists() and "admitted p50/p99" in proc.stdout

"""bench/serving.py --quick on the bundled speech model: nui with batching on/off; TorchServe and Triton where
installed (pip install -e '.[bench]'), each checked to transcribe exactly as nui does."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHORT = ["--quick", "--clips", "4", "--concurrency", "1,4", "--warmup-s", "0.5", "--duration-s", "1.5"]


def load_bench() -> ModuleType:
    """bench/ is a folder of scripts, not a package: load the script as a module."""
    if not (ROOT / "proto" / "speech_pb2_grpc.py").exists():  # git-ignored build outputs
        subprocess.run(["bash", str(ROOT / "scripts" / "gen_stubs.sh")], check=True)
    spec = importlib.util.spec_from_file_location("bench_serving", ROOT / "bench" / "serving.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def need_synthesizers() -> None:
    if shutil.which("espeak-ng") is None or shutil.which("flite") is None or shutil.which("festival") is None:
        pytest.skip("the bench clips need espeak-ng, flite and festival (bash scripts/setup.sh installs them)")


def run_quick(bench: ModuleType, targets: str, out: Path) -> dict[str, Any]:
    argv = [*SHORT, "--targets", targets, "--out", str(out)]
    assert bench.main(argv) == 0
    report: dict[str, Any] = json.loads(out.read_text())
    assert report["command"] == shlex.join(["python", "bench/serving.py", *argv])
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for row in report["rows"]:
        assert row["req_per_s"] > 0 and row["error_count"] == 0, row
        assert math.isfinite(row["p99_ms"]) and 0 < row["p50_ms"] <= row["p99_ms"]
        assert 1.0 <= row["mean_batch_size"] <= 4.0 + 1e-9  # at most C requests can share a run
    assert all(len(s["transcripts"]) == 4 and all(s["transcripts"]) for s in report["servers"])
    assert report["transcripts_match"] is True  # every server computed the same thing
    return report


def test_targets_flag_names_the_known_servers() -> None:
    bench = load_bench()
    assert bench._targets("nui,torchserve") == ("nui", "torchserve")
    with pytest.raises(argparse.ArgumentTypeError, match="targets are nui, nui-nobatch, torchserve, triton"):
        bench._targets("bentoml")


@pytest.mark.slow
def test_quick_nui_batching_on_and_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need_synthesizers()
    report = run_quick(load_bench(), "nui,nui-nobatch", tmp_path / "serving.json")
    rows = {(r["config"], r["concurrency"]): r for r in report["rows"]}
    assert set(rows) == {(name, c) for name in ("nui, batching", "nui, batching off") for c in (1, 4)}
    assert rows[("nui, batching off", 4)]["mean_batch_size"] == 1.0  # --max-batch-size 1
    assert rows[("nui, batching", 4)]["mean_batch_size"] > 1.0  # 4 clients do share engine runs
    assert [s["exit_code"] for s in report["servers"]] == [0, 0]  # stopped gracefully on SIGTERM
    assert report["machine"]["load_average_at_start"] and report["machine"]["load_average_at_end"]
    assert "nui, batching off" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize(("target", "label"), [("torchserve", "TorchServe, batching"),
                                               ("triton", "Triton (PyTriton), batching")])
def test_quick_peer_server_matches_nui(target: str, label: str, tmp_path: Path) -> None:
    bench = load_bench()
    why = bench.missing(target)
    if why is not None:
        pytest.skip(f"{target} cannot run here: {why}")
    need_synthesizers()
    report = run_quick(bench, f"nui,{target}", tmp_path / "serving.json")
    peer = [r for r in report["rows"] if r["config"] == label]
    assert [r["concurrency"] for r in peer] == [1, 4]
    assert peer[1]["mean_batch_size"] > 1.0  # the peer's own batcher did batch
    assert report["skipped"] == {}
    assert report["servers"][1]["exit_code"] in (0, -15)  # TorchServe's launcher ends on our SIGTERM

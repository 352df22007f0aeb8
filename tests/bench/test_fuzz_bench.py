"""bench/fuzz.py: the cases are reproducible from the seed, and a tiny run against a real `nui serve` ends
with every call answered, no finding, and the report written."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import pytest

from tests.server.helpers import encode, make_clip, pcm16

ROOT = Path(__file__).resolve().parents[2]


def load_bench() -> ModuleType:
    if not (ROOT / "proto" / "speech_pb2_grpc.py").exists():  # git-ignored build outputs
        subprocess.run(["bash", str(ROOT / "scripts" / "gen_stubs.sh")], check=True)
    spec = importlib.util.spec_from_file_location("bench_fuzz", ROOT / "bench" / "fuzz.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def inputs(bench: ModuleType) -> object:
    clips = [make_clip(0.6, seed=s) for s in (1, 2)]
    manifests = {name: json.loads(max((ROOT / "model_repository" / name).glob("[0-9]*/manifest.json")).read_text())
                 for name in ("speech_ctc", "diagnosis", "captioner")}
    png = bench._png(2, 2, b"\0" * 14)
    return bench.Inputs([encode(c) for c in clips], [pcm16(c) for c in clips], png, png, manifests,
                        ["HP:0001945"], ["speech_ctc", "diagnosis"])


def fingerprint(cases: Iterable) -> list[tuple[str, str, str, object]]:
    def wire(request: object) -> object:
        if isinstance(request, list):
            return [wire(r) for r in request]
        return request.SerializeToString() if hasattr(request, "SerializeToString") else request
    return [(c.rpc, c.kind, c.method, wire(c.request)) for c in cases]


def test_the_same_seed_draws_the_same_cases_and_every_generator_runs() -> None:
    bench = load_bench()
    inp = inputs(bench)
    first = list(bench.draw_cases(400, 7, inp, streaming=True))
    assert fingerprint(first) == fingerprint(bench.draw_cases(400, 7, inp, streaming=True))
    assert fingerprint(first) != fingerprint(bench.draw_cases(400, 8, inp, streaming=True))
    rpcs = {c.rpc for c in first}
    for rpc in ("Speech/Recognize", "Speech/StreamingRecognize", "Riva/Recognize", "Riva/StreamingRecognize",
                "KServe/ModelInfer", "KServe/ModelStreamInfer", "Captioner/Caption", "Diagnosis/Diagnose"):
        assert rpc in rpcs
    assert not {c.rpc for c in bench.draw_cases(200, 7, inp, streaming=False)} & {
        "Speech/StreamingRecognize", "Riva/StreamingRecognize"}


def test_findings_and_traceback_ends() -> None:
    bench = load_bench()
    log = "x\nTraceback (most recent call last):\n  File \"a.py\", line 1\nValueError: boom\nok line\n"
    assert bench.traceback_ends(log) == ["ValueError: boom"]
    run = bench.Run(records=[bench.Record("fuzz", "Speech/Recognize", "empty audio", "INVALID_ARGUMENT", 0.1, 30.0),
                             bench.Record("fuzz", "Speech/Recognize", "garbage", "INTERNAL", 0.1, 30.0, "boom")])
    metrics = {"streams_in_flight": 1.0, "queue_depth": 0.0, "server_codes": {"OK": 3, "INTERNAL": 1}}
    found = bench.findings(run, metrics, log, 0)
    assert len(found) == 4 and "INTERNAL boom" in found[0] and "streams still open" in found[2]
    assert "ValueError: boom" in found[3]


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "fuzz.py"), "--calls", "60", "--overload-calls", "24",
                           "--max-queue-size", "4", "--max-streams", "2", "--quick-clips", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["fuzz"]["calls"] == 60 and report["findings"] == []
    assert report["overload"]["lost"] == 0 and "Speech/Recognize RESOURCE_EXHAUSTED" in report["overload"]["codes"]
    assert report["end_metrics"]["streams_in_flight"] == 0 and report["server"]["exit_status"] == 0
    assert report["valid_after_abuse"]["mismatches"] == [] and report["git"]["commit"]
    assert out.with_suffix(".png").exists() and "FINDINGS: 0" in proc.stdout

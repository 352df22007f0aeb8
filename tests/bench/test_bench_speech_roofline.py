"""bench/speech_roofline.py: FLOPs counted from ONNX Runtime's profile, and a run on a random tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench import speech_roofline as roofline
from engines.engine import session_options

ROOT = Path(__file__).resolve().parents[2]


def test_profiled_flops_count_a_gru_and_a_conv_whose_weights_are_prepacked(tmp_path: Path) -> None:
    t, n, i, h, c_out, k = 7, 3, 12, 8, 5, 3
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), name) for name, s in
             [("W", (2, 3 * h, i)), ("R", (2, 3 * h, h)), ("CW", (c_out, 1, k))]]
    graph = helper.make_graph(
        [helper.make_node("GRU", ["x", "W", "R"], ["y"], hidden_size=h, direction="bidirectional"),
         helper.make_node("Conv", ["s", "CW"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [t, n, i]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [n, 1, 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = session_options(1)
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "p")
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {"x": rng.standard_normal((t, n, i)).astype(np.float32),
             "s": rng.standard_normal((n, 1, 20)).astype(np.float32)}
    session.run(None, feeds)
    session.run(None, feeds)  # a second run is not counted twice
    total, by_op = roofline.profiled_flops(Path(session.end_profiling()))
    gru = 2 * t * n * 2 * 3 * h * (i + h)
    conv = 2 * (n * c_out * (20 - k + 1)) * k
    assert by_op == {"GRU": gru, "Conv": conv}
    assert total == gru + conv


@pytest.mark.slow
def test_bench_on_a_random_tiny_model_writes_rows_json_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "roofline.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "speech_roofline.py"), "--random-preset", "tiny",
                           "--batch-sizes", "1,2", "--seconds", "0.5", "--min-measure-s", "0.2", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["model"]["name"] == "speech_ctc" and report["model"]["version"] == 1
    assert report["model"]["random_preset"] == "tiny" and report["model"]["config"]["rnn_hidden"] == 16
    assert report["gemm_peak_gflop_per_s"] > 0
    one, two = report["rows"]
    assert (one["batch"], two["batch"]) == (1, 2)
    assert one["gflops_per_clip"] == pytest.approx(two["gflops_per_clip"]) and one["gflops_per_clip"] > 0
    assert one["speedup_vs_batch_1"] == 1.0
    assert set(report["flops_share_by_op"]) >= {"Conv", "GRU"}
    assert sum(report["flops_share_by_op"].values()) == pytest.approx(1.0)
    assert report["speedup_ceiling"] == pytest.approx(report["gemm_peak_gflop_per_s"] / one["gflop_per_s"])
    assert out.with_suffix(".png").stat().st_size > 0
    assert "ceiling on batching's speed-up" in proc.stdout

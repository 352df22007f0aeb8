"""FP16 engines: converted graphs keep FP32 islands and FP32 I/O, load on ORT CPU, pass or fail their gates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from engines.engine import OnnxRuntimeEngine
from engines.export_diagnosis import export_diagnosis, random_evidence
from engines.export_speech import export_speech_ctc, noise_clips
from engines.fp16 import PLANS, Fp16GateError, Fp16Plan, convert_graph, output_owned_nodes, publish_fp16
from engines.fp16_parity import diagnosis_check, speech_check
from engines.manifest import model_versions, read_manifest
from models.diagnosis import build as build_diagnosis
from models.diagnosis import get_preset as diagnosis_preset
from models.speech_ctc import build, get_preset
from tests.diagnosis_tiny import tiny_tables


@pytest.fixture(scope="module")
def speech_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path, _ = export_speech_ctc(build(get_preset("tiny")).eval(), tmp_path_factory.mktemp("fp32"))
    return path


def _float_type_of_inputs(model: onnx.ModelProto, op_type: str) -> set[int]:
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return {types[i] for n in model.graph.node if n.op_type == op_type for i in n.input[:1] if i in types}


def test_speech_fp16_keeps_islands_and_io_in_fp32_and_is_published(speech_fp32: Path, tmp_path: Path) -> None:
    clips = noise_clips()
    path, manifest = publish_fp16(speech_fp32, tmp_path / "repo", "speech_ctc", None, *speech_check(clips))
    assert manifest.precision == "fp16" and manifest.parity["fp16_vs_fp32"]["passed"]
    assert manifest.parity["fp32_vs_torch"]["passed"], "the FP32 gate's figures travel along"
    engine = OnnxRuntimeEngine(path)  # FP32 inputs/outputs: the manifest's specs still hold
    audio = np.stack([clips[0][:8000], clips[1][:8000]])
    out = engine.run({"audio": audio, "audio_lengths": np.array([8000, 6000])})
    assert out["log_probs"].dtype == np.float32 and np.isfinite(out["log_probs"]).all()

    m = onnx.load(str(path / "model.onnx"), load_external_data=False)
    m = onnx.shape_inference.infer_shapes(m)
    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert _float_type_of_inputs(m, "GRU") == {fp16}, "the recurrent layers run in FP16 on a GPU"
    assert _float_type_of_inputs(m, "LogSoftmax") == {fp32}, "the CTC output stays FP32"
    assert _float_type_of_inputs(m, "LayerNormalization") == {fp32}
    featurizer = {n.name for n in m.graph.node if n.name.startswith("/featurizer/") and n.op_type == "Log"}
    assert featurizer and all(n.op_type != "Log" or n.name in featurizer for n in m.graph.node)
    graph = manifest.extras["fp16"]["graphs"][0]
    assert graph["fp32_islands"]["LogSoftmax"] == 1 and graph["fp16_nodes"] > 0
    assert "LogSoftmax" in graph["cpu_fp32_ops"] and graph["cpu_fp16_ops"], "ORT CPU census recorded"
    # In the tiny model the FP32 featurizer constants (STFT basis, mel filters) outweigh the FP16 weights.
    assert set(manifest.extras["fp16"]["onnx_size_bytes"]) == {"fp32", "fp16"}


def test_featurizer_island_keeps_quiet_audio_faithful(speech_fp32: Path, tmp_path: Path) -> None:
    """Quiet audio's power spectrum underflows FP16: the FP32 featurizer island keeps the output close."""
    import onnxruntime as ort

    x = noise_clips(1)[0]
    quiet = (x / np.abs(x).max() * 3e-5).astype(np.float32)  # -90 dBFS peak
    feeds = {"audio": quiet[None], "audio_lengths": np.array([len(quiet)])}
    ref = ort.InferenceSession(str(speech_fp32 / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    diff = {}
    for name, plan in (("islands", PLANS["speech_ctc"]), ("no_featurizer_island", Fp16Plan())):
        convert_graph(speech_fp32 / "model.onnx", tmp_path / f"{name}.onnx", plan)
        sess = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        diff[name] = float(np.abs(np.exp(sess.run(None, feeds)[0]) - np.exp(ref)).max())
    print(diff)
    assert diff["islands"] < 0.01
    assert diff["no_featurizer_island"] > 2 * diff["islands"]


def test_failed_fp16_gate_publishes_nothing(speech_fp32: Path, tmp_path: Path) -> None:
    gate, feeds = speech_check(noise_clips(), tolerances={"max_prob_diff": 0.0})
    with pytest.raises(Fp16GateError, match="max_prob_diff"):
        publish_fp16(speech_fp32, tmp_path / "repo", "speech_ctc", None, gate, feeds)
    assert model_versions(tmp_path / "repo", "speech_ctc") == []


def test_converts_an_fp16_weights_source_and_refuses_an_fp16_one(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_diagnosis(diagnosis_preset("tiny")).eval()
    src, _ = export_diagnosis(model, tiny_tables(), tmp_path / "src", weights_dtype="float16")
    dev = random_evidence(64, model.cfg.n_symptoms, seed=2)
    path, manifest = publish_fp16(src, tmp_path / "repo", "diagnosis", None, *diagnosis_check(*dev))
    assert manifest.precision == "fp16" and manifest.parity["fp16_vs_fp32"]["passed"]
    with pytest.raises(ValueError, match="starts from an engine with FP32 arithmetic"):
        publish_fp16(path, tmp_path / "repo", "diagnosis", None, *diagnosis_check(*dev))


def test_diagnosis_fp16_top5_gate(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_diagnosis(diagnosis_preset("tiny")).eval()
    src, _ = export_diagnosis(model, tiny_tables(), tmp_path / "src", weights_dtype="float32")
    dev = random_evidence(128, model.cfg.n_symptoms, seed=1)
    path, manifest = publish_fp16(src, tmp_path / "repo", "diagnosis", 7, *diagnosis_check(*dev))
    report = manifest.parity["fp16_vs_fp32"]
    assert path.name == "7" and report["rows"] == 128 and report["passed"]
    assert report["top5_agreement"] >= 0.98 and 0 < report["max_prob_diff"] <= 5e-3
    assert {"symptoms.json", "diseases.json"} <= set(read_manifest(path).files), "tables copied along"


def test_nui_export_speech_precision_fp16(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nui.export import main
    from training.common.checkpoint import save_weights
    from training.speech_ctc.model_io import MODEL_NAME

    torch.manual_seed(0)
    model = build(get_preset("tiny")).eval()
    save_weights(tmp_path / "model.safetensors", model, MODEL_NAME, model.cfg.to_dict())
    args = ["--checkpoint", str(tmp_path / "model.safetensors"), "--repo", str(tmp_path / "repo"), "--no-streaming"]
    assert main([*args, "--precision", "fp16"]) == 0
    manifest = read_manifest(tmp_path / "repo" / "speech_ctc" / "1")
    assert manifest.precision == "fp16" and manifest.parity["fp16_vs_fp32"]["passed"]
    assert manifest.extras["fp16"]["island_scopes"] == ["/featurizer/", "/feature_norm/"]
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:  # a clear refusal, nothing published
        assert main([*args, "--engine", "tensorrt"]) == 1
        assert "TensorRT is not installed" in capsys.readouterr().err
        assert model_versions(tmp_path / "repo", "speech_ctc") == [1]


@pytest.mark.parametrize("with_domain_check", [False, True])
def test_captioner_fp16_caption_gate(tmp_path: Path, tiny_captioner: tuple[Any, Any], with_domain_check: bool) -> None:
    from engines.export_captioner import export_captioner, synthetic_images
    from engines.fp16_parity import captioner_check
    from tests.captioner_tiny import tiny_domain_head

    model, tokenizer = tiny_captioner
    domain = tiny_domain_head(model) if with_domain_check else None  # the encoder gives 5 outputs, not 3
    src, _ = export_captioner(model, tokenizer.to_str(), tmp_path / "src", weights_dtype="float32", domain=domain)
    images = synthetic_images(4, model.cfg.image_size_px, seed=3)
    path, manifest = publish_fp16(src, tmp_path / "repo", "captioner", None, *captioner_check(images))
    report = manifest.parity["fp16_vs_fp32"]
    assert report["images"] == 4 and report["passed"] and report["caption_agreement"] >= 0.9
    encoder = next(g for g in manifest.extras["fp16"]["graphs"] if g["file"] == "encoder.onnx")
    assert ("MatMul" in encoder["fp32_islands"]) == with_domain_check  # the PPCA projection stays FP32
    assert [g["file"] for g in manifest.extras["fp16"]["graphs"]] == ["decoder_step.onnx", "encoder.onnx"]
    assert OnnxRuntimeEngine(path, graph="decoder_step").manifest.precision == "fp16"


def test_output_owned_nodes_are_those_no_other_output_needs() -> None:
    from onnx import TensorProto, helper

    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("x", "main", "side", "y")]
    nodes = [helper.make_node("Relu", ["x"], ["shared"], name="shared"),
             helper.make_node("Neg", ["shared"], ["main"], name="main"),
             helper.make_node("Exp", ["shared"], ["s1"], name="s1"),
             helper.make_node("Abs", ["s1"], ["side"], name="side"),
             helper.make_node("Sigmoid", ["x"], ["y"], name="y")]
    graph = helper.make_graph(nodes, "g", [vi[0]], vi[1:])
    assert [n.name for n in output_owned_nodes(graph, ["side"])] == ["s1", "side"]
    assert [n.name for n in output_owned_nodes(graph, ["side", "main"])] == ["shared", "main", "s1", "side"]
    assert output_owned_nodes(graph, ["not_an_output"]) == []

"""TensorRT path: shape profiles from the manifest, the plan/machine compatibility check, backend dispatch.

Building and running a plan needs `tensorrt`, cuda-python and a CUDA GPU: those tests skip with the reason
where any is missing (CI and this project's GPU machine have no TensorRT); everything else runs anywhere.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.engine import load_engine
from engines.export_speech import INPUTS, export_speech_ctc, noise_clips
from engines.fp16 import publish_fp16
from engines.fp16_parity import speech_check
from engines.manifest import Manifest, TensorSpec, file_digests, read_manifest, write_manifest
from engines.tensorrt_build import input_profile, publish_tensorrt, shape_ranges
from engines.tensorrt_engine import EngineMismatch, check_compatible
from models.speech_ctc import build, get_preset


def _manifest(extras: dict | None = None, task: str = "speech_ctc") -> Manifest:
    return Manifest(model="speech_ctc", task=task, config={}, inputs=INPUTS, outputs=[], files={},
                    extras=extras or {})


def test_profiles_from_task_defaults_and_manifest_ranges() -> None:
    ranges = shape_ranges(_manifest({"shape_ranges": {"batch": [1, 4, 16]}}))
    assert ranges == {"batch": (1, 4, 16), "samples": (1_600, 80_000, 480_000)}
    assert input_profile(INPUTS, ranges) == {
        "audio": ((1, 1_600), (4, 80_000), (16, 480_000)),
        "audio_lengths": ((1,), (4,), (16,)),
    }
    fixed = [TensorSpec("images", "float32", ["batch", 3, 64, 64])]
    assert input_profile(fixed, {"batch": (1, 8, 32)})["images"] == ((1, 3, 64, 64), (8, 3, 64, 64), (32, 3, 64, 64))


def test_profile_errors_name_the_axis() -> None:
    with pytest.raises(ValueError, match="axis 'batch' must be 1 <= min <= opt <= max"):
        shape_ranges(_manifest({"shape_ranges": {"batch": [8, 4, 16]}}))
    with pytest.raises(ValueError, match="dynamic axis 'frames' with no min/opt/max"):
        input_profile([TensorSpec("x", "float32", ["batch", "frames"])], {"batch": (1, 2, 3)})


def test_compatibility_check_names_both_sides() -> None:
    m = _manifest({"tensorrt": {"version": "10.7.0", "compute_capability": "9.0"}})
    check_compatible(m, "10.7.0", "9.0")  # the machine that built it
    with pytest.raises(EngineMismatch, match=r"TensorRT 10.7.0 built it, this machine has TensorRT 11.0.0"):
        check_compatible(m, "11.0.0", "9.0", where="repo/speech_ctc/3")
    with pytest.raises(EngineMismatch, match=r"compute capability 9.0, this GPU is 8.9.*--engine tensorrt"):
        check_compatible(m, "10.7.0", "8.9")
    with pytest.raises(EngineMismatch, match="must record"):
        check_compatible(_manifest(), "10.7.0", "9.0")


def test_load_engine_dispatches_on_the_manifest_engine(tmp_path: Path) -> None:
    """A tensorrt version goes to the TensorRT backend: here it refuses (no TensorRT, or a plan for another
    GPU/version) instead of being opened by ONNX Runtime."""
    folder = tmp_path / "speech_ctc" / "1"
    folder.mkdir(parents=True)
    (folder / "model.plan").write_bytes(b"not a plan")
    m = replace(_manifest({"tensorrt": {"version": "0.0.1", "compute_capability": "0.0",
                                        "plans": {"model.onnx": "model.plan"}}}),
                engine="tensorrt", files=file_digests(folder))
    write_manifest(folder, m)
    with pytest.raises(ValueError, match=r"TensorRT is not installed|cuda-python|cannot load this TensorRT plan"):
        load_engine(tmp_path, "speech_ctc")


@pytest.fixture(scope="module")
def speech_fp16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    src, _ = export_speech_ctc(build(get_preset("tiny")).eval(), tmp_path_factory.mktemp("fp32"))
    path, _ = publish_fp16(src, tmp_path_factory.mktemp("fp16"), "speech_ctc", None, *speech_check(noise_clips()))
    return path


def test_builder_refuses_an_fp32_source(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src, _ = export_speech_ctc(build(get_preset("tiny")).eval(), tmp_path / "fp32")
    with pytest.raises(ValueError, match="built from an fp16 engine"):
        publish_tensorrt(src, tmp_path / "repo", "speech_ctc")


def _require_tensorrt_gpu() -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install '.[gpu]' on a CUDA machine)")
    try:
        from engines.tensorrt_engine import installed_tensorrt

        installed_tensorrt()
    except (ValueError, RuntimeError) as e:
        pytest.skip(f"no usable CUDA GPU / cuda-python for TensorRT: {e}")


@pytest.mark.gpu
def test_build_and_run_a_strongly_typed_fp16_plan(speech_fp16: Path, tmp_path: Path) -> None:
    _require_tensorrt_gpu()
    cache = tmp_path / "timing.cache"
    path, manifest = publish_tensorrt(speech_fp16, tmp_path / "repo", "speech_ctc", timing_cache=cache)
    assert manifest.engine == "tensorrt" and cache.stat().st_size > 0
    plans = json.loads((path / "manifest.json").read_text())["extras"]["tensorrt"]["plans"]
    assert plans == {"model.onnx": "model.plan"}
    trt_engine = load_engine(tmp_path / "repo", "speech_ctc")
    ort_engine = load_engine(speech_fp16.parent.parent, "speech_ctc")
    clips = noise_clips(2)
    audio = np.zeros((2, len(clips[1])), np.float32)
    audio[0, : len(clips[0])], audio[1] = clips[0], clips[1]
    feeds: dict[str, np.ndarray] = {"audio": audio, "audio_lengths": np.array([len(clips[0]), len(clips[1])], np.int64)}
    a, b = trt_engine.run(feeds), ort_engine.run(feeds)
    assert np.array_equal(a["out_lengths"], b["out_lengths"])
    n = int(a["out_lengths"][1])
    assert np.abs(np.exp(a["log_probs"][1, :n]) - np.exp(b["log_probs"][1, :n])).max() < 0.05
    assert read_manifest(path).extras["shape_ranges"]["samples"] == [1_600, 80_000, 480_000]


def test_execution_providers_resolve_or_name_what_is_missing(speech_fp16: Path) -> None:
    from engines.engine import OnnxRuntimeEngine, resolve_providers

    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("tensorrt", gpu_build) == gpu_build
    with pytest.raises(ValueError, match=r"needs \['CUDAExecutionProvider'\].*onnxruntime-gpu.*--provider cpu"):
        resolve_providers("cuda", ["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="unknown execution provider 'rocm'"):
        resolve_providers("rocm")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():  # the CPU wheel: a clear refusal
        with pytest.raises(ValueError, match="does not have"):
            OnnxRuntimeEngine(speech_fp16, provider="cuda")
    assert OnnxRuntimeEngine(speech_fp16, provider="cpu").run(
        {"audio": noise_clips(1)[0][None], "audio_lengths": np.array([len(noise_clips(1)[0])])})["log_probs"].ndim == 3


def test_nui_serve_refuses_a_plan_built_for_another_gpu_at_start_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The machine's TensorRT/GPU is faked (no GPU here); the refusal path through nui serve is real."""
    from engines import tensorrt_engine
    from server.main import main as serve_main

    folder = tmp_path / "speech_ctc" / "1"
    folder.mkdir(parents=True)
    (folder / "model.plan").write_bytes(b"plan bytes")
    m = replace(_manifest({"tensorrt": {"version": "10.7.0", "compute_capability": "9.0",
                                        "plans": {"model.onnx": "model.plan"}}}),
                engine="tensorrt", files=file_digests(folder))
    write_manifest(folder, m)
    monkeypatch.setattr(tensorrt_engine, "installed_tensorrt", lambda device=0: ("10.7.0", "8.9"))
    assert serve_main(["--repo", str(tmp_path), "--port", "0", "--host", "127.0.0.1"]) == 1
    err = capsys.readouterr().err
    assert "compute capability 9.0, this GPU is 8.9" in err and "--engine tensorrt" in err

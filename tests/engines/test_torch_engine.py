"""The PyTorch backend (engine "torch"): published behind a gate against the ONNX engine, loaded through
`load_engine`, equal to ONNX Runtime on CPU for all three models; the CUDA-only parts (autocast FP16,
CUDA graphs) run where a GPU exists and are otherwise checked for how they are chosen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engines.engine import load_engine
from engines.export_captioner import export_captioner, synthetic_images
from engines.export_diagnosis import export_diagnosis, random_evidence
from engines.export_speech import export_speech_ctc, noise_clips
from engines.manifest import TensorSpec, read_manifest
from engines.torch_build import TorchParityError, captioner_feeds, publish_torch, speech_feeds
from engines.torch_engine import (
    WEIGHTS_FILE,
    TorchEngine,
    batch_bucket,
    domain_tensors,
    fixed_but_batch,
    resolve_device,
)
from models.caption_text import CaptionTokenizer
from models.captioner import Captioner
from models.speech_ctc import SpeechCTC, get_preset
from tests.captioner_tiny import tiny_domain_head
from tests.diagnosis_tiny import tiny_model as tiny_diagnosis
from tests.diagnosis_tiny import tiny_tables


def _speech(seed: int = 0) -> SpeechCTC:
    torch.manual_seed(seed)
    return SpeechCTC(get_preset("tiny")).eval()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_speech_torch_engine_matches_onnx(tmp_path: Path, precision: str) -> None:
    model, clips = _speech(), noise_clips(4)
    onnx_dir, _ = export_speech_ctc(model, tmp_path / "stage")
    feed = speech_feeds(clips)[0]
    path, manifest = publish_torch(onnx_dir, model, tmp_path / "repo", "speech_ctc", precision=precision,
                                   feeds={None: [feed]})
    assert manifest.engine == "torch" and manifest.parity["torch"]["passed"]
    assert not any(name.endswith(".onnx") for name in read_manifest(path).files)
    engine = load_engine(tmp_path / "repo", "speech_ctc", provider="cpu")
    assert isinstance(engine, TorchEngine) and not engine.captures_graphs
    got = engine.run(feed)
    want = load_engine(tmp_path / "stage", "speech_ctc").run(feed)
    assert got["log_probs"].dtype == np.float32 and got["out_lengths"].dtype == np.int64
    np.testing.assert_array_equal(got["out_lengths"], want["out_lengths"])
    np.testing.assert_allclose(got["log_probs"], want["log_probs"], atol=1e-3)
    assert manifest.precision == precision
    _assert_fp32_storage(path)


def _assert_fp32_storage(path: Path) -> None:
    """FP32 master weights, whatever the precision the version runs in."""
    assert {t.dtype for t in load_file(str(path / WEIGHTS_FILE)).values()} == {torch.float32}


def test_diagnosis_and_captioner_graphs_match_onnx(tmp_path: Path,
                                                   tiny_captioner: tuple[Captioner, CaptionTokenizer]) -> None:
    model, tables = tiny_diagnosis(0), tiny_tables()
    onnx_dir, _ = export_diagnosis(model, tables, tmp_path / "stage", weights_dtype="float32")
    evidence, age, sex = random_evidence(5, 32, seed=1)
    feed = {"evidence": evidence, "age_years": age, "sex": sex}
    path, _ = publish_torch(onnx_dir, model, tmp_path / "repo", "diagnosis", precision="fp16", feeds={None: [feed]})
    _assert_fp32_storage(path)
    probs = load_engine(tmp_path / "repo", "diagnosis", provider="cpu").run(feed)["probs"]
    np.testing.assert_allclose(probs, load_engine(tmp_path / "stage", "diagnosis").run(feed)["probs"], atol=1e-4)

    # the captioner with its out-of-domain check (extra encoder outputs from stored statistics)
    captioner, tokenizer = tiny_captioner
    head = tiny_domain_head(captioner)
    c_dir, c_manifest = export_captioner(captioner, tokenizer.to_str(), tmp_path / "stage", weights_dtype="float32",
                                         domain=head)
    images = synthetic_images(3, c_manifest.config["image_size_px"], seed=2)
    feeds = captioner_feeds(c_dir, images, np.array([1, 5, 7]))
    path, _ = publish_torch(c_dir, captioner, tmp_path / "repo", "captioner", feeds=feeds,
                            extra_tensors=domain_tensors(head))
    assert (path / "tokenizer.json").is_file()
    for graph in ("encoder", "decoder_step"):
        got = load_engine(tmp_path / "repo", "captioner", graph=graph, provider="cpu").run(feeds[graph][0])
        want = load_engine(tmp_path / "stage", "captioner", graph=graph).run(feeds[graph][0])
        assert set(got) == set(want)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], atol=1e-3, rtol=1e-3, err_msg=name)
    assert set(want) == {"log_probs", "state_out"}


def test_gate_refuses_weights_that_are_not_the_exported_model(tmp_path: Path) -> None:
    onnx_dir, _ = export_speech_ctc(_speech(0), tmp_path / "stage")
    with pytest.raises(TorchParityError, match="differs from the ONNX engine"):
        publish_torch(onnx_dir, _speech(1), tmp_path / "repo", "speech_ctc", precision="fp32",
                      feeds={None: [speech_feeds(noise_clips(2))[0]]})
    assert not (tmp_path / "repo" / "speech_ctc" / "1").exists()


def test_cuda_requests_fail_clearly_without_a_gpu(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        resolve_device("cuda")
    model = _speech()
    onnx_dir, _ = export_speech_ctc(model, tmp_path / "stage")
    publish_torch(onnx_dir, model, tmp_path / "repo", "speech_ctc", feeds={None: [speech_feeds(noise_clips(1))[0]]})
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        load_engine(tmp_path / "repo", "speech_ctc", provider="cuda")
    with pytest.raises(ValueError, match="--provider cuda or cpu"):
        load_engine(tmp_path / "repo", "speech_ctc", provider="tensorrt")


def test_which_graphs_are_captured() -> None:
    step = [TensorSpec("tokens", "int64", ["batch"]), TensorSpec("state", "float32", ["batch", 8])]
    audio = [TensorSpec("audio", "float32", ["batch", "samples"])]
    assert fixed_but_batch(step) and not fixed_but_batch(audio)
    assert [batch_bucket(n) for n in (1, 2, 3, 5, 8, 9, 100)] == [1, 2, 4, 8, 8, 16, 128]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs and FP16 autocast need a CUDA GPU")
def test_cuda_fp16_with_graphs_matches_cpu(tmp_path: Path, tiny_captioner: tuple[Captioner, CaptionTokenizer]) -> None:
    captioner, tokenizer = tiny_captioner
    c_dir, c_manifest = export_captioner(captioner, tokenizer.to_str(), tmp_path / "stage", weights_dtype="float32")
    feeds = captioner_feeds(c_dir, synthetic_images(3, c_manifest.config["image_size_px"], seed=2), np.array([1, 5, 7]))
    path, _ = publish_torch(c_dir, captioner, tmp_path / "repo", "captioner", precision="fp16", feeds=feeds)
    step = feeds["decoder_step"][0]
    gpu = TorchEngine(path, graph="decoder_step", device="cuda")
    assert gpu.captures_graphs
    cpu = TorchEngine(path, graph="decoder_step", device="cpu").run(step)
    for _ in range(3):  # capture, then replays
        np.testing.assert_allclose(gpu.run(step)["log_probs"], cpu["log_probs"], atol=5e-2)

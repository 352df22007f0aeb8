"""ONNX Runtime engine: parity with torch on a tiny exported model, loading and fail-fast checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engines.engine import OnnxRuntimeEngine, load_engine  # noqa: E402
from engines.export_speech import export_speech_ctc  # noqa: E402
from engines.manifest import MANIFEST_NAME, Manifest, write_manifest  # noqa: E402
from models.speech_ctc import SpeechCTC, build, get_preset  # noqa: E402

TOLERANCE = 1e-4  # max |log-prob| difference, torch vs ONNX Runtime, FP32 on CPU


@pytest.fixture(scope="module")
def tiny() -> SpeechCTC:
    torch.manual_seed(0)
    return build(get_preset("tiny")).eval()


@pytest.fixture(scope="module")
def repo(tiny: SpeechCTC, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    export_speech_ctc(tiny, repo, "speech_ctc", 1)
    export_speech_ctc(tiny, repo, "speech_ctc", 2)
    return repo


def _batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    lengths = np.array([16000, 9000, 4000], dtype=np.int64)
    audio = np.zeros((3, 16000), dtype=np.float32)
    for i, n in enumerate(lengths):
        audio[i, :n] = 0.1 * rng.standard_normal(n)
    return audio, lengths


def test_onnx_runtime_matches_torch(tiny: SpeechCTC, repo: Path) -> None:
    engine = load_engine(repo, "speech_ctc", intra_op_threads=1)
    audio, lengths = _batch()
    out = engine.run({"audio": audio, "audio_lengths": lengths})
    with torch.no_grad():
        ref_lp, ref_len = tiny(torch.from_numpy(audio), torch.from_numpy(lengths))
    assert out["log_probs"].dtype == np.float32 and out["log_probs"].shape == tuple(ref_lp.shape)
    np.testing.assert_array_equal(out["out_lengths"], ref_len.numpy())
    for i, n in enumerate(ref_len.tolist()):
        np.testing.assert_allclose(out["log_probs"][i, :n], ref_lp[i, :n].numpy(), atol=TOLERANCE, rtol=0)


def test_load_engine_picks_versions(repo: Path) -> None:
    assert load_engine(repo, "speech_ctc", intra_op_threads=1).version == 2
    engine = load_engine(repo, "speech_ctc", 1, intra_op_threads=1)
    assert (engine.name, engine.version, engine.manifest.task) == ("speech_ctc", 1, "speech_ctc")
    with pytest.raises(ValueError, match="no version 7"):
        load_engine(repo, "speech_ctc", 7)
    with pytest.raises(ValueError, match="'nope' has no versions"):
        load_engine(repo, "nope")


def test_run_checks_input_names(repo: Path) -> None:
    engine = load_engine(repo, "speech_ctc", intra_op_threads=1)
    audio, _ = _batch()
    with pytest.raises(ValueError, match="takes inputs"):
        engine.run({"audio": audio})


def _copy_version(repo: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "speech_ctc" / "1"
    dst.mkdir(parents=True)
    for f in (repo / "speech_ctc" / "1").iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_checksum_mismatch_fails_fast(repo: Path, tmp_path: Path) -> None:
    folder = _copy_version(repo, tmp_path)
    with open(folder / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match=r"model.onnx sha256 .* does not match"):
        load_engine(tmp_path, "speech_ctc")


def test_manifest_names_must_match_the_graph(repo: Path, tmp_path: Path) -> None:
    folder = _copy_version(repo, tmp_path)
    d = json.loads((folder / MANIFEST_NAME).read_text())
    d["outputs"][0]["name"] = "logits"
    write_manifest(folder, Manifest.from_dict(d))
    with pytest.raises(ValueError, match=r"outputs \['log_probs', 'out_lengths'\] do not match"):
        OnnxRuntimeEngine(folder)
    d["outputs"][0] = {"name": "log_probs", "dtype": "float16", "shape": ["batch", "frames", 29]}
    write_manifest(folder, Manifest.from_dict(d))
    with pytest.raises(ValueError, match="'log_probs' is tensor\\(float\\), the manifest says float16"):
        OnnxRuntimeEngine(folder)


def test_model_name_must_match_folder(repo: Path, tmp_path: Path) -> None:
    _copy_version(repo, tmp_path)
    (tmp_path / "speech_ctc").rename(tmp_path / "other")
    with pytest.raises(ValueError, match="manifest model is 'speech_ctc' but the folder says 'other'"):
        load_engine(tmp_path, "other")

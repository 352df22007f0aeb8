"""Export + parity gate: a faithful engine is published with its figures; a wrong one never is."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx
import pytest
import torch

from engines import export_speech
from engines.export_speech import ParityError, export_speech_ctc, noise_clips
from engines.manifest import model_versions, read_manifest
from models.speech_ctc import SpeechCTC, build, get_preset


def _tiny(seed: int) -> SpeechCTC:
    torch.manual_seed(seed)
    return build(get_preset("tiny")).eval()


def test_publishes_versions_with_parity_figures_and_extra_files(tmp_path: Path) -> None:
    extra = tmp_path / "notes.txt"
    extra.write_text("hello")
    path, manifest = export_speech_ctc(_tiny(0), tmp_path / "repo", extra_files={"notes.txt": extra},
                                       extras={"lm": None})
    assert path == tmp_path / "repo" / "speech_ctc" / "1"
    assert manifest.parity["passed"] and manifest.parity["max_abs_diff"] <= manifest.parity["atol"]
    assert manifest.parity["transcripts_equal"] == manifest.parity["clips"] == len(noise_clips())
    assert read_manifest(path).files.keys() == {"model.onnx", "notes.txt"}
    assert manifest.config == get_preset("tiny").to_dict() and manifest.extras["frame_s"] == 0.02
    path2, _ = export_speech_ctc(_tiny(1), tmp_path / "repo")
    assert path2.name == "2" and model_versions(tmp_path / "repo", "speech_ctc") == [1, 2]
    with pytest.raises(FileExistsError):
        export_speech_ctc(_tiny(0), tmp_path / "repo", version=1)


def test_gate_refuses_an_engine_that_disagrees_with_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_export = export_speech.export_onnx

    def export_a_different_model(model: SpeechCTC, path: Path, opset: int = export_speech.OPSET) -> None:
        real_export(_tiny(123), path, opset)  # the graph no longer matches the torch model

    monkeypatch.setattr(export_speech, "export_onnx", export_a_different_model)
    with pytest.raises(ParityError, match="parity gate failed"):
        export_speech_ctc(_tiny(0), tmp_path / "repo")
    assert model_versions(tmp_path / "repo", "speech_ctc") == []
    assert not list((tmp_path / "repo" / "speech_ctc").iterdir()), "nothing left behind"


def test_fp16_weight_storage_halves_the_file_and_keeps_transcripts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build(dataclasses.replace(get_preset("tiny"), rnn_hidden=32)).eval()  # GRU matrices > 1024 values
    fp32, _ = export_speech_ctc(model, tmp_path / "repo")
    fp16, manifest = export_speech_ctc(model, tmp_path / "repo", weights_dtype="float16",
                                       atol=export_speech.FP16_WEIGHTS_ATOL)
    assert manifest.precision == "fp16-weights" and manifest.parity["passed"]
    assert manifest.parity["transcripts_equal"] == manifest.parity["clips"]
    def fp16_initializers(path: Path) -> int:
        graph = onnx.load(str(path / "model.onnx")).graph
        return sum(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)

    assert fp16_initializers(fp32) == 0 and fp16_initializers(fp16) > 0  # the GRU matrices
    assert (fp16 / "model.onnx").stat().st_size < (fp32 / "model.onnx").stat().st_size
    with pytest.raises(ValueError, match="weights_dtype"):
        export_speech_ctc(_tiny(0), tmp_path / "repo", weights_dtype="int8")

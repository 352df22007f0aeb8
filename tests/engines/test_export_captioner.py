"""Captioner export: encoder + decoder-step ONNX graphs behind the parity gate, tokenizer published, the
multi-graph engine loads both, `nui export captioner` from a checkpoint folder, refusals."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engines.engine import load_engine
from engines.export_captioner import DEFAULT_ATOL, ParityError, export_captioner
from engines.manifest import model_versions, read_manifest
from models.caption_beam import SearchOptions, beam_search, greedy_search
from models.caption_image import to_pixels
from models.caption_text import BOS, EOS, CaptionTokenizer
from models.captioner import Captioner, build
from tests.captioner_tiny import CAPTIONS, picture, save_run


def _pixels(kind: str, seed: int) -> np.ndarray:
    return to_pixels(Image.fromarray(picture(kind, seed=seed)), 32)


@pytest.mark.parametrize("weights_dtype", ["float32", "float16"])
def test_export_parity_and_engines_caption(tmp_path: Path, tiny_captioner: tuple[Captioner, CaptionTokenizer],
                                           weights_dtype: str) -> None:
    model, tokenizer = tiny_captioner
    images = np.stack([_pixels(k, seed) for k in CAPTIONS for seed in (500, 501)])
    path, manifest = export_captioner(model, tokenizer.to_str(), tmp_path / "repo", dev_images=images,
                                      weights_dtype=weights_dtype)
    assert path == tmp_path / "repo" / "captioner" / "1" and manifest.task == "captioner"
    parity = manifest.parity
    assert parity["passed"] and parity["dev_data"] and parity["images"] == 4 and parity["captions_equal"] == 4
    assert max(parity["max_feature_diff"], parity["max_log_prob_diff"]) <= parity["atol"] == DEFAULT_ATOL[weights_dtype]
    assert set(read_manifest(path).files) == {"encoder.onnx", "decoder_step.onnx", "tokenizer.json"}
    assert CaptionTokenizer.from_file(path / "tokenizer.json").to_str() == tokenizer.to_str()
    assert manifest.extras["tokens"] == {"pad": 0, "bos": 1, "eos": 2, "unk": 3}

    # the published engines (FP32 in and out whatever the storage), batch of 4, beam search in numpy
    encoder = load_engine(tmp_path / "repo", "captioner", graph="encoder")
    decoder = load_engine(tmp_path / "repo", "captioner", graph="decoder_step", verify=False)
    with pytest.raises(ValueError, match="no graph 'nope'"):
        load_engine(tmp_path / "repo", "captioner", graph="nope")
    with pytest.raises(ValueError, match=r"does not list model\.onnx"):  # a multi-graph version has no model.onnx
        load_engine(tmp_path / "repo", "captioner")
    features = encoder.run({"images": images})
    assert features["memory"].shape == (4, 16, model.cfg.memory_dim) and features["memory"].dtype == np.float32

    def step(tokens: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        out = decoder.run({"tokens": tokens, **state})
        return out["log_probs"], {**state, "state": out["state_out"]}

    expected = [CAPTIONS[k] for k in CAPTIONS for _ in (0, 1)]
    greedy = greedy_search(step, dict(features), 4, BOS, EOS, max_length=11)
    assert [tokenizer.decode(h.tokens) for h in greedy] == expected
    beams = beam_search(step, dict(features), 4, BOS, EOS, SearchOptions(beam_size=3, n_best=2, max_length=11))
    assert [tokenizer.decode(hyps[0].tokens) for hyps in beams] == expected
    assert all(hyps[0].score >= hyps[1].score for hyps in beams)


def test_failed_gate_publishes_nothing(tmp_path: Path, tiny_captioner: tuple[Captioner, CaptionTokenizer]) -> None:
    model, tokenizer = tiny_captioner
    with pytest.raises(ParityError, match="parity gate failed"):  # FP16 weights cannot meet a zero tolerance
        export_captioner(model, tokenizer.to_str(), tmp_path / "repo", weights_dtype="float16", atol=0.0)
    assert model_versions(tmp_path / "repo", "captioner") == []
    assert not any(p.name.startswith(".export") for p in (tmp_path / "repo" / "captioner").iterdir())


def test_refuses_mismatched_tokenizer_and_image_size(tmp_path: Path,
                                                     tiny_captioner: tuple[Captioner, CaptionTokenizer]) -> None:
    model, tokenizer = tiny_captioner
    bigger = build(dataclasses.replace(model.cfg, vocab_size=model.cfg.vocab_size + 1))
    with pytest.raises(ValueError, match="vocabulary"):
        export_captioner(bigger, tokenizer.to_str(), tmp_path / "repo")
    with pytest.raises(ValueError, match="dev images"):
        export_captioner(model, tokenizer.to_str(), tmp_path / "repo", dev_images=np.zeros((1, 3, 64, 64), np.float32))


def test_nui_export_captioner_command(tmp_path: Path, tiny_captioner: tuple[Captioner, CaptionTokenizer]) -> None:
    from nui.export_captioner import main

    model, tokenizer = tiny_captioner
    run = save_run(model, tokenizer, tmp_path / "run")
    dev = tmp_path / "dev"
    dev.mkdir()
    for i, kind in enumerate(CAPTIONS):  # a WebP and a JPEG of another size: the server's preprocessing
        buf = io.BytesIO()
        Image.fromarray(picture(kind, size_px=48, seed=i)).save(buf, format="WEBP" if i else "JPEG")
        (dev / f"{i}.{'webp' if i else 'jpg'}").write_bytes(buf.getvalue())
    (dev / "notes.txt").write_text("not an image")
    assert main(["--checkpoint", str(run), "--repo", str(tmp_path / "repo"), "--dev-images", str(dev)]) == 0
    manifest = read_manifest(tmp_path / "repo" / "captioner" / "1")
    assert manifest.parity["images"] == 2 and manifest.precision == "fp16-weights"
    assert main(["--checkpoint", str(tmp_path / "missing"), "--repo", str(tmp_path / "repo")]) == 1


def test_nui_export_captioner_refuses_a_label_threshold_outside_0_1(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from nui.export_captioner import main

    for bad in ("0", "1.5"):  # refused before the checkpoint is even read, let alone the domain fitted
        assert main(["--checkpoint", str(tmp_path / "missing"), "--repo", str(tmp_path / "repo"),
                     "--domain-data", str(tmp_path), "--domain-label-threshold", bad]) == 1
        assert "--domain-label-threshold must be in (0, 1]" in capsys.readouterr().err

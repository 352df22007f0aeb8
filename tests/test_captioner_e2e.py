"""Captioning end to end, through the commands a user runs: build a few scenes -> 2-process DDP training ->
export with the parity gate -> `nui serve` -> `Caption` and `nui caption`.

The tiny model trains for a few steps only, so its captions are not meaningful; what must hold is that
every stage runs and that the served caption is exactly what the torch checkpoint decodes greedily — or,
for an image the exported out-of-domain check rejects, the honest fallback "a photo" (the tiny encoder has
no ImageNet classifier to name anything).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from models.caption_beam import greedy_search
from models.caption_image import to_pixels
from models.caption_text import BOS, EOS, PAD, UNK
from server.captioner import ImageLimits, decode_image
from tests.nui_commands import nui, serving
from training.captioner.model_io import load_model


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data, run, repository) after building scenes, training 2 epochs on 2 processes and exporting."""
    work = tmp_path_factory.mktemp("captioner_e2e")
    data = work / "data"
    nui("data", "captions", "--out", str(data), "--train-scenes", "32", "--val-scenes", "4", "--test-scenes", "4",
        "--scene-objects", "10", "--plain-copies", "0")
    nui("train", "captioner", "--nproc", "2", "--recipe", "training/captioner/recipes/tiny.yaml",
        f"data.dir={data}", f"run.out_dir={work / 'run'}")
    out = nui("export", "captioner", "--checkpoint", str(work / "run"), "--repo", str(work / "repo"),
              "--dev-images", str(data / "images" / "val"), "--weights-dtype", "float32",
              "--domain-data", str(data), "--domain-components", "4", "--domain-label-threshold", "0.6").stdout
    assert "published" in out
    return data, work / "run", work / "repo"


@pytest.fixture(scope="module")
def server_address(published: tuple[Path, Path, Path]) -> Iterator[str]:
    with serving(published[2]) as address:
        yield address


def _torch_greedy(run: Path, images: list[Path]) -> list[str]:
    model, tokenizer, _ = load_model(run)
    size = model.cfg.image_size_px  # decoded as the server does (large JPEGs at a reduced DCT scale)
    pixels = np.stack([to_pixels(decode_image(p.read_bytes(), ImageLimits(), 2 * size)[0], size) for p in images])
    with torch.no_grad():
        memory, keys, state = (x.numpy() for x in model.encode(torch.from_numpy(pixels)))

    def step(tokens: np.ndarray, s: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        with torch.no_grad():
            lp, new = model.decode_step(*(torch.from_numpy(s[k]) if k != "tokens" else torch.from_numpy(tokens)
                                          for k in ("tokens", "state", "memory", "keys")))
        return lp.numpy(), {**s, "state": new.numpy()}

    hyps = greedy_search(step, {"state": state, "memory": memory, "keys": keys}, len(images), BOS, EOS,
                         model.cfg.max_len - 1, (PAD, BOS, UNK))
    return [tokenizer.decode(h.tokens) for h in hyps]


@pytest.mark.slow
def test_export_passed_parity_on_dev_images_and_ships_the_tokenizer(published: tuple[Path, Path, Path]) -> None:
    _, run, repo = published
    manifest = json.loads((repo / "captioner" / "1" / "manifest.json").read_text())
    assert manifest["task"] == "captioner" and manifest["parity"]["passed"] and manifest["parity"]["dev_data"]
    assert manifest["parity"]["captions_equal"] == manifest["parity"]["images"] == 4
    assert {"encoder.onnx", "decoder_step.onnx", "tokenizer.json"} == set(manifest["files"])
    domain = manifest["extras"]["domain"]
    assert domain["score_output"] == "domain_score" and domain["probs_output"] is None and domain["labels"] == []
    assert domain["fit"]["components"] == 4 and domain["fit"]["dev_images"] == 4 and domain["fit"]["quantile"] == 0.99
    assert domain["score_threshold"] > 0 and manifest["parity"]["verdict_flips"] == 0
    assert domain["label_threshold"] == 0.6
    assert (repo / "captioner" / "1" / "tokenizer.json").read_text() == (run / "tokenizer.json").read_text()


@pytest.mark.slow
def test_caption_over_grpc_matches_the_torch_checkpoint(published: tuple[Path, Path, Path],
                                                        server_address: str) -> None:
    from proto import caption_pb2, caption_pb2_grpc

    data, run, _ = published
    images = sorted((data / "images" / "test").iterdir())
    expected = _torch_greedy(run, images)
    with grpc.insecure_channel(server_address) as channel:
        stub = caption_pb2_grpc.CaptionerStub(channel)
        decoded = 0
        for path, want in zip(images, expected, strict=True):
            config = caption_pb2.CaptionConfig(beam_size=1)
            reply = stub.Caption(caption_pb2.CaptionRequest(config=config, image=path.read_bytes()), timeout=30)
            assert reply.HasField("domain") and reply.domain.threshold > 0
            if not reply.domain.in_domain:
                assert reply.domain.score > reply.domain.threshold and [c.text for c in reply.captions] == ["a photo"]
                continue
            decoded += 1
            assert reply.captions[0].text == want and want
            beam = stub.Caption(caption_pb2.CaptionRequest(image=path.read_bytes(), config=caption_pb2.CaptionConfig(
                beam_size=3, n_best=2)), timeout=30)
            assert len(beam.captions) == 2 and beam.captions[0].score >= beam.captions[1].score
        assert decoded >= 1  # held-out scenes of the training objects are mostly in domain
        with pytest.raises(grpc.RpcError) as info:
            stub.Caption(caption_pb2.CaptionRequest(image=b"GIF89a not really"), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.slow
def test_nui_caption_in_process_and_against_the_server_agree(published: tuple[Path, Path, Path],
                                                             server_address: str) -> None:
    data, _, repo = published
    images = [str(p) for p in sorted((data / "images" / "test").iterdir())]
    local = nui("caption", *images, "--repo", str(repo)).stdout
    remote = nui("caption", *images, "--server", server_address).stdout
    assert local == remote and local.count("\n") == len(images)


@pytest.mark.slow
def test_eval_applies_the_exported_check_to_photos(published: tuple[Path, Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`nui eval captioner --photos --domain-repo`: every photo gets the served verdict, reported with the
    classifier's top class whether or not it was confident (the tiny encoder has none: empty)."""
    from training.captioner import evaluate

    data, run, repo = published
    out = tmp_path / "test.json"
    assert evaluate.main(["--checkpoint", str(run), "--data", str(data), "--split", "test", "--out", str(out),
                          "--photos", "--domain-repo", str(repo)]) == 0
    result = json.loads(out.read_text())
    verdicts = result["photos_domain"]
    assert set(verdicts) == set(result["photos"]["1"]) >= {"coffee", "astronaut"}
    for name, v in verdicts.items():
        assert set(v) == {"in_domain", "score", "label", "label_prob", "top_label"} and v["top_label"] == ""
        assert result["photos"]["1"][name] == (result["photos_decoder"]["1"][name] if v["in_domain"] else "a photo")
    printed = capsys.readouterr().out
    assert "photo coffee (beam " in printed and "top ImageNet class p 0.00" in printed

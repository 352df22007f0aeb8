"""Captioner training: recipes, cached encoder features, metrics, 2-process DDP training, exact resume, eval."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from models.caption_text import EOS
from models.captioner import build, get_preset
from training.captioner import data, evaluate
from training.captioner.coco import read_coco
from training.captioner.dataset import cached_features, feature_view, load_image
from training.captioner.metrics import caption_scores, greedy_decode
from training.captioner.model_io import load_model
from training.captioner.recipe import TrainConfig
from training.captioner.train import train
from training.common import distributed
from training.common.checkpoint import read_weights
from training.common.config import load_recipe
from training.common.loop import shuffled_batches

ROOT = Path(__file__).parents[2]
RECIPES = sorted((ROOT / "training" / "captioner" / "recipes").glob("*.yaml"))
TINY = ROOT / "training" / "captioner" / "recipes" / "tiny.yaml"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scenes")
    data.build(out, train_scenes=16, val_scenes=4, test_scenes=4, scene_objects=12, heldout_fraction=0.25,
               plain_copies=0, image_size_px=32, seed=1, workers=1, progress=False)
    return out


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_parses_and_builds_its_model_config(path: Path) -> None:
    cfg = load_recipe(path, TrainConfig)
    assert cfg.model.build_config(vocab_size=321).vocab_size == 321
    assert path.read_text().startswith("#"), "a recipe starts with a comment giving its purpose and command"
    with pytest.raises(ValueError, match="vocab_size"):
        load_recipe(path, TrainConfig, ["model.overrides.vocab_size=5"]).model.build_config(10)


def test_shuffled_batches_split_ranks_and_epochs() -> None:
    a = [shuffled_batches(22, 5, r, 2, seed=3, epoch=0) for r in (0, 1)]
    assert len(a[0]) == len(a[1]) == 2
    flat = [i for rank in a for b in rank for i in b]
    assert len(set(flat)) == 20
    assert shuffled_batches(22, 5, 0, 2, seed=3, epoch=1) != a[0]


def test_cached_features_train_the_same_model(tmp_path: Path, scenes: Path) -> None:
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset("small"), image_size_px=32, vocab_size=40, memory_dim=8, embed_dim=8,
                              hidden_size=8, attention_dim=8, dropout=0.0)
    model = build(cfg).eval()
    items = read_coco(scenes / "captions_val.json")
    info = distributed.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    feats = cached_features(model, items, tmp_path, "val", info, batch_size=3)
    assert feats.shape == (len(items), 1280, 1, 1) and feats.dtype == np.float16
    assert cached_features(model, items, tmp_path, "val", info) is not None  # reused, not recomputed
    assert len(list(tmp_path.glob("val-*.npy"))) == 1
    images = torch.stack([load_image(it.path, 32) for it in items])
    tokens = torch.tensor([[1, 5, 6, 7]] * len(items))
    view = feature_view(model)
    direct = model(images, tokens)
    cached = view(torch.from_numpy(feats.astype(np.float32)), tokens)
    torch.testing.assert_close(cached, direct, atol=2e-2, rtol=2e-2)  # float16 cache
    encoder_keys = {k for k in model.state_dict() if k.startswith("encoder.")}
    assert set(model.state_dict()) - set(view.state_dict()) == encoder_keys
    assert view.to_memory is model.to_memory


def test_greedy_decode_stops_at_eos_and_scores() -> None:
    torch.manual_seed(0)
    model = build(get_preset("tiny")).eval()
    ids = greedy_decode(model, torch.rand(3, 3, 32, 32), max_len=6)
    assert len(ids) == 3 and all(len(r) <= 5 and (EOS not in r or r[-1] == EOS) for r in ids)
    refs = [["two cats on grass", "a picture of two cats"], ["a red bus in space", "a bus in space"]]
    good = caption_scores(refs, ["two cats on grass", "a red bus in space"])
    bad = caption_scores(refs, ["a red bus in space", ""])
    assert good["bleu4"] > 0.9 and good["cider"] > bad["cider"] and bad["bleu4"] < 0.1


def _torchrun(recipe: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "training.captioner", "--recipe", str(recipe), *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_resume_is_exact(tmp_path: Path, scenes: Path) -> None:
    """Stopping mid-epoch and resuming lands on the same weights as an uninterrupted run."""
    def run(out: Path, *extra: str) -> Path:
        train(load_recipe(TINY, TrainConfig, [f"data.dir={scenes}", f"run.out_dir={out}", "data.batch_size=4",
                                              "data.train_limit=8", "data.val_limit=1", *extra]))
        return out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip() / "model.safetensors"

    try:
        straight = run(tmp_path / "straight")
        run(tmp_path / "resumed", "run.stop_after_steps=3")  # mid-epoch 2
        resumed = run(tmp_path / "resumed")
    finally:
        torch.use_deterministic_algorithms(False)
    assert straight.parent.name == resumed.parent.name == "step_00000004"
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_process_training_and_eval(tmp_path: Path, scenes: Path) -> None:
    run = tmp_path / "run"
    res = _torchrun(TINY, f"data.dir={scenes}", f"run.out_dir={run}", "data.batch_size=2", "run.epochs=2")
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    assert ckpt.name == "step_00000008"  # 16 images / (2 ranks x 2) x 2 epochs
    assert (ckpt / "tokenizer.json").read_text() == (run / "tokenizer.json").read_text()
    _, name, cfg = read_weights(ckpt / "model.safetensors")
    model, tokenizer, _ = load_model(run)
    assert name == "captioner" and cfg["vocab_size"] == tokenizer.vocab_size == model.cfg.vocab_size
    metrics = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert all(0.0 <= h["bleu4"] <= 1.0 and h["cider"] >= 0.0 and h["n"] == 4 for h in metrics["history"])
    assert (run / "curves.png").stat().st_size > 1000

    out = tmp_path / "eval" / "test.json"
    photo_dir = tmp_path / "my_photos"
    photo_dir.mkdir()
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(photo_dir / "grey.png")
    assert evaluate.main(["--checkpoint", str(run), "--data", str(scenes), "--split", "test", "--out", str(out),
                          "--beam-size", "2", "--photos", "--photo-dir", str(photo_dir)]) == 0
    result = json.loads(out.read_text())
    assert set(result["metrics"]) == {"greedy", "beam2"} and result["images"] == 4
    assert 0.0 <= result["metrics"]["greedy"]["object_recall"] <= 1.0 and result["metrics"]["beam2"]["scenes"] == 4
    assert len(result["captions"]["beam2"]) == 4 and set(result["photos"]["1"]) >= {"coffee", "astronaut", "grey.png"}
    assert out.with_suffix(".png").is_file() and (out.parent / "test_photos.png").is_file()

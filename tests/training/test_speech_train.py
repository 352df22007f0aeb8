"""Training machinery: recipes, checkpoints, batching, and 2-process DDP determinism + exact resume."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.speech_ctc import build, get_preset
from training.common.checkpoint import RunState, latest_checkpoint, load_checkpoint, read_weights, save_checkpoint
from training.common.config import apply_overrides, load_recipe
from training.common.optim import lr_at, make_optimizer
from training.speech_ctc.dataset import BucketBatchSampler
from training.speech_ctc.recipe import TrainConfig

RECIPES = sorted((Path(__file__).parents[2] / "training" / "speech_ctc" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_parses_and_builds_its_model_config(path: Path) -> None:
    cfg = load_recipe(path, TrainConfig)
    cfg.model.build_config()
    assert path.read_text().startswith("#"), "a recipe starts with a comment giving its purpose and command"


def test_recipe_rejects_unknown_keys_and_applies_overrides(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ValueError, match="lrr"):
        load_recipe(bad, TrainConfig)
    cfg = load_recipe(RECIPES[0], TrainConfig, ["optim.lr=0.25", "run.epochs=3", "model.overrides.rnn_layers=2"])
    assert cfg.optim.lr == 0.25 and cfg.run.epochs == 3 and cfg.model.build_config().rnn_layers == 2
    with pytest.raises(ValueError, match="expected an integer"):
        load_recipe(RECIPES[0], TrainConfig, ["run.epochs=two"])
    with pytest.raises(ValueError, match=r"key\.path=value"):
        apply_overrides({}, ["novalue"])


def test_lr_schedule_warms_up_then_decays() -> None:
    cfg = load_recipe(RECIPES[0], TrainConfig, ["optim.warmup_steps=10", "optim.lr=1.0", "optim.min_lr_ratio=0.1"])
    lrs = [lr_at(s, 100, cfg.optim) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)


def test_bucket_sampler_sortagrad_shuffle_ranks_and_resume() -> None:
    durations = [float(d) for d in torch.randperm(40, generator=torch.Generator().manual_seed(0)).tolist()]
    first = [BucketBatchSampler(durations, 4, r, 2, seed=1, epoch=0, sortagrad=True).batches for r in (0, 1)]
    flat0 = [durations[i] for b in first[0] for i in b]
    assert flat0 == sorted(flat0), "SortaGrad: epoch 0 runs in increasing duration"
    later = [BucketBatchSampler(durations, 4, r, 2, seed=1, epoch=1, sortagrad=True).batches for r in (0, 1)]
    assert later != first and later == [BucketBatchSampler(durations, 4, r, 2, seed=1, epoch=1,
                                                           sortagrad=True).batches for r in (0, 1)]
    seen = [i for rank in later for b in rank for i in b]
    assert len(seen) == len(set(seen)) == 40 and len(later[0]) == len(later[1]) == 5
    resumed = BucketBatchSampler(durations, 4, 0, 2, seed=1, epoch=1, sortagrad=True, start_batch=3).batches
    assert resumed == later[0][3:]


def test_checkpoint_round_trip_restores_weights_optimizer_and_rng(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build(get_preset("tiny"))
    cfg = load_recipe(RECIPES[0], TrainConfig)
    opt = make_optimizer(model, cfg.optim)
    out, _ = model(torch.randn(2, 8000), torch.tensor([8000, 6000]))
    out.sum().backward()
    opt.step()
    state = RunState(step=5, epoch=1, batch_in_epoch=2, best_score=0.5)
    path = save_checkpoint(tmp_path, model=model, model_name="speech_ctc", model_config=model.cfg.to_dict(),
                           optimizer=opt, state=state, scaler_state=None, recipe={"x": 1})
    assert latest_checkpoint(tmp_path) == path
    expected_next = torch.rand(3)
    model2 = build(get_preset("tiny"))
    opt2 = make_optimizer(model2, cfg.optim)
    loaded = load_checkpoint(path, model=model2, optimizer=opt2)
    assert torch.equal(torch.rand(3), expected_next), "the RNG continues where it was saved"
    assert loaded.state == state
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for idx in s1:
        assert s1[idx].keys() == s2[idx].keys()
        assert all(torch.equal(s1[idx][k], s2[idx][k]) for k in s1[idx])
    _, name, cfg_dict = read_weights(path / "model.safetensors")
    assert name == "speech_ctc" and cfg_dict == model.cfg.to_dict()
    assert not list(tmp_path.glob("checkpoints/.tmp-*")), "no temporary folder left behind"


def _train(corpus: Path, out: Path, *overrides: str) -> Path:
    cmd = [sys.executable, "-m", "nui", "train", "speech", "--nproc", "2",
           "--recipe", "training/speech_ctc/recipes/tiny.yaml",
           f"data.train_manifest={corpus / 'train.jsonl'}", f"data.dev_manifest={corpus / 'dev.jsonl'}",
           f"run.out_dir={out}", *overrides]
    proc = subprocess.run(cmd, cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = latest_checkpoint(out)
    assert ckpt is not None
    return ckpt


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model.safetensors"))


@pytest.mark.slow
def test_two_process_ddp_is_bitwise_reproducible_and_resumes_exactly(tiny_speech_corpus: Path,
                                                                     tmp_path: Path) -> None:
    a = _train(tiny_speech_corpus, tmp_path / "a")
    b = _train(tiny_speech_corpus, tmp_path / "b")
    wa, wb = _weights(a), _weights(b)
    assert a.name == b.name == "step_00000008"  # 16 clips / (2 per rank x 2 ranks) x 2 epochs
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "same seed and config -> bitwise-identical weights"
    start = _weights(latest_checkpoint(tmp_path / "a") or a)
    assert any(not torch.equal(start[k], build(get_preset("tiny")).state_dict()[k]) for k in start)

    stopped = _train(tiny_speech_corpus, tmp_path / "c", "run.stop_after_steps=3")  # mid epoch 1
    assert stopped.name == "step_00000003"
    resumed = _train(tiny_speech_corpus, tmp_path / "c")
    assert resumed.name == "step_00000008"
    wc = _weights(resumed)
    assert all(torch.equal(wa[k], wc[k]) for k in wa), "stop + resume == uninterrupted run"
    assert (tmp_path / "a" / "curves.png").is_file() and (tmp_path / "a" / "metrics.json").is_file()


def test_ctc_loss_is_the_mean_fp32_ctc_with_its_gradient() -> None:
    from training.speech_ctc.train import ctc_loss

    torch.manual_seed(0)
    logits = torch.randn(3, 20, 29, requires_grad=True)
    log_probs = logits.log_softmax(-1).to(torch.bfloat16)  # as autocast may leave them
    out_lengths, target_lengths = torch.tensor([20, 17, 12]), torch.tensor([5, 4, 3])
    targets = torch.randint(1, 29, (3, 5))
    cpu = torch.device("cpu")
    loss = ctc_loss(log_probs, out_lengths, targets, target_lengths, cpu, deterministic=True)
    want = torch.nn.functional.ctc_loss(log_probs.float().transpose(0, 1), targets, out_lengths, target_lengths,
                                        blank=0, reduction="mean", zero_infinity=True)
    assert loss.dtype == torch.float32 and loss.device == cpu and torch.equal(loss, want)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0

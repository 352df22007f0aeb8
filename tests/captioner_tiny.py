"""A tiny captioner that has learnt two captions, for export, server and benchmark tests.

Red-ish pictures are "a red square on grass", blue-ish ones "a blue circle in the sky": 60 Adam steps
of the tiny preset (a second or two on one core) make greedy decoding say them, so tests can check
that the right caption comes back through ONNX Runtime and the server, not just some text.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from models.caption_text import CaptionTokenizer, train_tokenizer
from models.captioner import Captioner, build, get_preset

if TYPE_CHECKING:
    from engines.export_captioner import DomainHead

CAPTIONS = {"red": "a red square on grass", "blue": "a blue circle in the sky"}


def picture(kind: str, size_px: int = 32, seed: int = 0) -> np.ndarray:
    """(size, size, 3) uint8: a noisy red or blue field."""
    rng = np.random.default_rng(seed)
    base = np.array([200, 40, 40] if kind == "red" else [40, 60, 210], dtype=np.float32)
    return np.clip(base + rng.normal(0, 25, (size_px, size_px, 3)), 0, 255).astype(np.uint8)


def picture_bytes(kind: str, fmt: str = "PNG", size_px: int = 32, seed: int = 0) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(picture(kind, size_px, seed)).save(buf, format=fmt)
    return buf.getvalue()


def trained_tiny_captioner(steps: int = 60, seed: int = 0) -> tuple[Captioner, CaptionTokenizer]:
    tokenizer = train_tokenizer(CAPTIONS.values())
    cfg = dataclasses.replace(get_preset("tiny"), vocab_size=tokenizer.vocab_size)
    torch.manual_seed(seed)
    model = build(cfg)
    kinds = list(CAPTIONS)
    tokens = torch.from_numpy(tokenizer.encode_batch([CAPTIONS[k] for k in kinds], cfg.max_len))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    model.encoder.eval()  # BatchNorm on its initial statistics: 2-image batches would skew its running ones
    for step in range(steps):
        images = torch.from_numpy(np.stack([picture(k, seed=step * 2 + i) for i, k in enumerate(kinds)]))
        images = images.permute(0, 3, 1, 2).float() / 255.0
        logits = model(images, tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size), tokens[:, 1:].reshape(-1),
                                                 ignore_index=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tokenizer


def save_run(model: Captioner, tokenizer: CaptionTokenizer, run_dir: Path) -> Path:
    """A checkpoint folder as training writes one: model.safetensors (config inside) + tokenizer.json."""
    from training.common.checkpoint import save_weights

    run_dir.mkdir(parents=True, exist_ok=True)
    save_weights(run_dir / "model.safetensors", model, "captioner", model.cfg.to_dict())
    tokenizer.save(run_dir / "tokenizer.json")
    return run_dir


def tiny_domain_head(model: Captioner, label_bias: tuple[float, ...] | None = (5.0, 0.0, 0.0)) -> DomainHead:
    """An out-of-domain check for the tiny captioner: statistics of 60 red and 60 blue pictures (train) and
    40 more (dev); a 3-class stand-in for the ImageNet classifier (zero weights, `label_bias` logits: class 0
    "ostrich" at p 0.99 by default) since the tiny encoder has none; None: no classifier."""
    from engines.export_captioner import DomainHead, build_domain_head, pooled_features
    from models.caption_domain import DomainPolicy

    def batch(seeds: range) -> np.ndarray:
        return np.stack([picture(k, seed=s) for s in seeds for k in CAPTIONS]).transpose(0, 3, 1, 2) / np.float32(255)

    head = build_domain_head(model, pooled_features(model, [batch(range(1000, 1060))]),
                             pooled_features(model, [batch(range(2000, 2020))]), components=8)
    if label_bias is None:
        return head
    weight = torch.zeros(len(label_bias), model.encoder.out_channels)
    labels = ("ostrich", "tench", "goldfish")[: len(label_bias)]
    return DomainHead(head.stats, DomainPolicy(head.policy.score_threshold, labels=labels),
                      (weight, torch.tensor(label_bias)), head.fit)

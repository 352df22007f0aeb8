"""Caption training data: images (or cached encoder features) paired with one of their captions per epoch.

With a frozen encoder (`freeze_encoder`, BatchNorm in eval mode) the encoder is a fixed function of the
image, so `cache_features` runs it once per image (ranks share the work) into a float16 `.npy` under the
run folder and the decoder trains on the cached maps through `feature_view` — the same model, with its
encoder swapped for the identity in a view that shares every other module. On 2 CPU cores this turns
a ~10 images/s encoder into a one-off cost.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from models.caption_text import CaptionTokenizer
from models.captioner import Captioner
from training.captioner.coco import CaptionedImage
from training.common import distributed

logger = logging.getLogger(__name__)


def load_image(path: Path, size_px: int) -> torch.Tensor:
    """(3, size, size) float32 RGB in [0, 1]: the image squashed to a square, as the server resizes it."""
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB").resize((size_px, size_px), Image.Resampling.BILINEAR)
    except OSError as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class CaptionPairs(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Item i: (image (3, H, W) or cached features (C, h, w) as float32, token ids (max_len,) int64) with
    one of image i's captions, drawn from (seed, epoch, i) so every epoch pairs images with other captions."""

    def __init__(self, items: Sequence[CaptionedImage], tokenizer: CaptionTokenizer, max_len: int, image_size_px: int,
                 seed: int, features: np.ndarray | None = None) -> None:
        self.items = list(items)
        self.tokens = [tokenizer.encode_batch(it.captions, max_len) for it in self.items]
        self.image_size_px = image_size_px
        self.seed = seed
        self.epoch = 0
        self.features = features

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        caps = self.tokens[i]
        pick = int(np.random.default_rng([self.seed, self.epoch, i]).integers(len(caps)))
        if self.features is not None:
            x = torch.from_numpy(np.asarray(self.features[i], dtype=np.float32))
        else:
            x = load_image(self.items[i].path, self.image_size_px)
        return x, torch.from_numpy(caps[pick])


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def feature_view(model: Captioner) -> Captioner:
    """`model` with its encoder replaced by the identity, sharing every other module and parameter, so
    `view(features, tokens)` trains the same weights from cached encoder outputs (B, C, h, w). The model
    keeps its real encoder (checkpoints and export see the whole network)."""
    view = copy.copy(model)
    view._modules = dict(model._modules)  # its own module table; the modules themselves are shared
    view._modules["encoder"] = _Identity()
    return view


@torch.no_grad()
def cached_features(model: Captioner, items: Sequence[CaptionedImage], cache_dir: Path, name: str,
                    info: distributed.DistInfo, batch_size: int = 32) -> np.ndarray:
    """(N, C, h, w) float16 encoder outputs of `items`, memory-mapped from `cache_dir/<name>-<key>.npy`;
    computed once (ranks split the images) and reused while the images, size and encoder weights match."""
    size = model.cfg.image_size_px
    key_src = hashlib.sha1()
    key_src.update(json.dumps([model.cfg.encoder, size, [str(it.path) for it in items]]).encode())
    for k, v in sorted(model.encoder.state_dict().items()):
        key_src.update(k.encode())
        key_src.update(v.detach().cpu().contiguous().numpy().tobytes())
    path = cache_dir / f"{name}-{key_src.hexdigest()[:16]}.npy"
    if not path.is_file():
        tmp = path.with_suffix(".tmp.npy")
        probe = model.encoder.eval()(load_image(items[0].path, size)[None])
        shape = (len(items), *probe.shape[1:])
        if info.is_main:
            cache_dir.mkdir(parents=True, exist_ok=True)
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape).flush()
        distributed.barrier()
        out = np.lib.format.open_memmap(tmp, mode="r+")
        mine = list(range(info.rank, len(items), info.world_size))
        bar = tqdm(range(0, len(mine), batch_size), desc=f"encoder features ({name})", disable=not info.is_main,
                   mininterval=5.0)
        for start in bar:
            rows = mine[start:start + batch_size]
            images = torch.stack([load_image(items[r].path, size) for r in rows]).to(info.device)
            feats = model.encoder(images).float().cpu().numpy().astype(np.float16)
            out[rows] = feats
        out.flush()
        del out
        distributed.barrier()
        if info.is_main:
            os.replace(tmp, path)
            logger.info("cached encoder features of %d images -> %s (%.0f MB)", len(items), path,
                        path.stat().st_size / 1e6)
        distributed.barrier()
    return np.load(path, mmap_mode="r")

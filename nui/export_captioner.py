"""`nui export captioner`: checkpoint -> encoder + decoder-step ONNX engines in a model repository, behind
the parity gate.

    nui export captioner --checkpoint runs/captioner_small --repo model_repository \
        --dev-images data/captions/images/val [--dev-limit 64] [--weights-dtype float16|float32] [--version N] \
        [--precision fp16] [--domain-data data/captions [--domain-quantile 0.99] [--domain-components 256]
        [--domain-label-threshold 0.9]]

--checkpoint takes a run folder (its latest checkpoint), a checkpoint folder or a model.safetensors; the
tokenizer.json next to it (or in its run folder) is published with the engines. --dev-images takes image
files and/or folders of them (JPEG/PNG/WebP), resized with the shared preprocessing
(models/caption_image.py). --domain-data builds the out-of-domain check into the encoder
(models/caption_domain.py): its statistics from the pooled features of every image of
`captions_train.json`, its threshold at --domain-quantile of `captions_val.json`'s scores (COCO captions
files as `nui data captions` writes them); an out-of-domain image is captioned with its ImageNet label when
the classifier is at least --domain-label-threshold sure; the manifest also lists the words that end the
train split's captions, after which alone the server's beam search ends a caption. This is glue between training/
(checkpoint reader) and engines/ (export), which must not import each other.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from engines.export_captioner import (
    DEFAULT_ATOL,
    DomainHead,
    ParityError,
    build_domain_head,
    export_captioner,
    pooled_features,
    synthetic_images,
)
from engines.fp16 import Fp16GateError, fp32_staging, island_summary, publish_fp16
from engines.fp16_parity import captioner_check
from engines.manifest import sha256_file
from engines.tensorrt_build import publish_tensorrt
from engines.torch_build import captioner_feeds, publish_torch
from engines.torch_engine import domain_tensors
from models.caption_domain import DEFAULT_LABEL_THRESHOLD
from models.caption_image import IMAGE_SUFFIXES, to_pixels
from models.caption_text import BOS, CaptionTokenizer
from models.captioner import Captioner
from nui.engine_options import add_engine_options, check_engine_options
from training.captioner.coco import read_coco
from training.captioner.model_io import load_model

logger = logging.getLogger(__name__)


def image_files(paths: list[Path], limit: int) -> list[Path]:
    """Up to `limit` image files: the files given, then each folder's images in name order."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"--dev-images: {p} is neither an image file nor a folder")
    if not files:
        raise ValueError(f"--dev-images: no {'/'.join(IMAGE_SUFFIXES)} files in {[str(p) for p in paths]}")
    return files[:limit]


def load_images(files: list[Path], size_px: int) -> np.ndarray:
    """(N, 3, size, size) float32 in [0, 1] (models/caption_image.py `to_pixels`)."""
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                out.append(to_pixels(im, size_px))
        except (OSError, UnidentifiedImageError) as e:
            raise ValueError(f"cannot read image {f}: {e}") from e
    return np.stack(out)


def _batches(files: list[Path], size_px: int, batch_size: int = 64) -> Iterator[np.ndarray]:
    from tqdm import tqdm

    for start in tqdm(range(0, len(files), batch_size), desc="domain features", unit="batch", leave=False):
        yield load_images(files[start:start + batch_size], size_px)


def domain_head(model: Captioner, data: Path, quantile: float, components: int,
                label_threshold: float | None = None) -> DomainHead:
    """The out-of-domain check fitted on `data`'s train split, thresholded on its val split."""
    feats = {}
    for split in ("train", "val"):
        files = [it.path for it in read_coco(data / f"captions_{split}.json")]
        feats[split] = pooled_features(model, _batches(files, model.cfg.image_size_px))
    head = build_domain_head(model, feats["train"], feats["val"], quantile=quantile, components=components,
                             label_threshold=label_threshold)
    return dataclasses.replace(head, fit={**head.fit, "data": str(data), "fit_split": "train", "dev_split": "val"})


def caption_end_ids(tokenizer: CaptionTokenizer, data: Path) -> tuple[int, ...]:
    """The words `data`'s train split ends its captions on: the server's beam search ends captions only
    after them (manifest `extras["caption_end_ids"]`)."""
    return tokenizer.caption_end_ids(c for it in read_coco(data / "captions_train.json") for c in it.captions)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nui export captioner", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--repo", type=Path, required=True, help="model repository folder")
    p.add_argument("--model-name", default="captioner")
    p.add_argument("--version", type=int, default=None, help="default: next free version")
    p.add_argument("--dev-images", type=Path, nargs="+", help="images or folders for the parity gate "
                   "(default: seeded synthetic images)")
    p.add_argument("--dev-limit", type=int, default=64)
    p.add_argument("--weights-dtype", choices=sorted(DEFAULT_ATOL), default="float16")
    p.add_argument("--atol", type=float, default=None, help="default: per weights dtype")
    p.add_argument("--domain-data", type=Path, default=None,
                   help="folder with captions_train.json and captions_val.json: build the out-of-domain check "
                        "and the words a caption may end on, from its train split")
    p.add_argument("--domain-quantile", type=float, default=0.99,
                   help="threshold = this quantile of the val split's domain scores")
    p.add_argument("--domain-components", type=int, default=256, help="principal directions kept (PPCA)")
    p.add_argument("--domain-label-threshold", type=float, default=DEFAULT_LABEL_THRESHOLD,
                   help="an out-of-domain image is captioned 'a photo of <ImageNet label>' when the classifier's "
                        "top probability reaches this, else 'a photo' (choose it on photos: it depends on the "
                        "input size, see the captioner's model card)")
    add_engine_options(p, ["fp32", "fp16"],
                       "fp16: FP16 graphs with FP32 islands (engines/fp16.py), gated against the FP32 engines (greedy "
                       "caption agreement, encoder outputs)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_engine_options(args)
        if not 0.0 < args.domain_label_threshold <= 1.0:  # refused before the minutes of the domain fit
            raise ValueError(f"--domain-label-threshold must be in (0, 1], got {args.domain_label_threshold}")
        model, tokenizer, weights = load_model(args.checkpoint)
        images = None
        if args.dev_images:
            images = load_images(image_files(args.dev_images, args.dev_limit), model.cfg.image_size_px)
        domain = None
        extras = None
        if args.domain_data:
            domain = domain_head(model, args.domain_data, args.domain_quantile, args.domain_components,
                                 args.domain_label_threshold)
            extras = {"caption_end_ids": list(caption_end_ids(tokenizer, args.domain_data))}
        if args.engine == "torch":
            with fp32_staging() as stage:
                onnx_dir, _ = export_captioner(
                    model, tokenizer.to_str(), stage, args.model_name, dev_images=images, weights_dtype="float32",
                    atol=args.atol, source_checkpoint_sha256=sha256_file(weights), domain=domain, extras=extras)
                gate_images = (images if images is not None else synthetic_images(8, model.cfg.image_size_px))[:16]
                path, manifest = publish_torch(
                    onnx_dir, model, args.repo, args.model_name, args.version,
                    precision=args.precision,
                    feeds=captioner_feeds(onnx_dir, gate_images, np.full(len(gate_images), BOS)),
                    extra_tensors=domain_tensors(domain) if domain is not None else None)
        elif args.precision == "fp16":
            with fp32_staging() as fp32_repo:
                fp32_dir, _ = export_captioner(
                    model, tokenizer.to_str(), fp32_repo, args.model_name, dev_images=images, weights_dtype="float32",
                    atol=args.atol, source_checkpoint_sha256=sha256_file(weights), domain=domain, extras=extras)
                gate_images = images if images is not None else synthetic_images(8, model.cfg.image_size_px)
                fp16_repo = fp32_repo / "fp16" if args.engine == "tensorrt" else args.repo
                path, manifest = publish_fp16(fp32_dir, fp16_repo, args.model_name,
                                              args.version if fp16_repo == args.repo else None,
                                              *captioner_check(gate_images))
                if args.engine == "tensorrt":
                    path, manifest = publish_tensorrt(path, args.repo, args.model_name, args.version,
                                                      timing_cache=args.timing_cache)
            print("\n".join(island_summary(manifest)))
        else:
            path, manifest = export_captioner(
                model, tokenizer.to_str(), args.repo, args.model_name, args.version, dev_images=images,
                weights_dtype=args.weights_dtype, atol=args.atol, source_checkpoint_sha256=sha256_file(weights),
                domain=domain, extras=extras)
    except (OSError, ValueError, ParityError, Fp16GateError) as e:
        print(f"nui export captioner: {e}", file=sys.stderr)
        return 1
    size_mb = manifest.extras["size_bytes"] / 1e6
    print(f"published {path} ({size_mb:.1f} MB; parity: {manifest.parity})")
    return 0

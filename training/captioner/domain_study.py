"""Compare out-of-domain detectors for the captioner on val scenes and folders of real photos: the study
behind the bundled check's choices (model_repository/captioner/MODEL_CARD.md, "What was measured").

    python -m training.captioner.domain_study --checkpoint runs/captioner_small \
        --features runs/captioner_small/features --data data/captions \
        --photo-dir /tmp/captioner_photos/photos /tmp/captioner_photos/art --out docs/captioner/domain_study.json

Every detector is thresholded at the val split's 99th percentile (what the export does) and counted on
each photo folder (`docs/captioner/tuning_photos.sh` gathers the model card's). Train and val features
are the training run's cached encoder maps (`train-*.npy`, `val-*.npy`: (N, C, h, w) float16), photos
go through the checkpoint's encoder at the model's size. Decoder confidence: the mean per-token
log-probability of the beam-3 caption (EOS included), flagged below the val split's 1st percentile.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from models.caption_beam import SearchOptions, beam_search
from models.caption_domain import domain_scores, fit_domain, unit_rows
from models.caption_text import BOS, EOS, PAD, UNK
from models.captioner import Captioner, load_imagenet_classifier
from training.captioner.coco import read_coco
from training.captioner.dataset import load_image
from training.captioner.evaluate import folder_images
from training.captioner.model_io import load_model

QUANTILE = 0.99
Score = Callable[[np.ndarray], np.ndarray]  # (N, C) pooled features -> (N,) larger = further out


def detectors(train: np.ndarray) -> dict[str, Score]:
    """The candidates, fitted on (N, C) pooled training features."""
    raw, unit = fit_domain(train, 256), fit_domain(train, 256, l2_normalize=True)
    bank = unit_rows(train)
    weight, bias = (t.double().numpy() for t in load_imagenet_classifier())

    def knn(x: np.ndarray, k: int = 5) -> np.ndarray:
        return 1.0 - np.sort(unit_rows(x) @ bank.T, axis=1)[:, -k]

    def energy(x: np.ndarray) -> np.ndarray:
        logits = x @ weight.T + bias
        top = logits.max(axis=1)
        return -(top + np.log(np.exp(logits - top[:, None]).sum(axis=1)))

    return {"raw PPCA K=256 (v2)": lambda x: domain_scores(x, raw),
            "L2-normalised PPCA K=256 (v3)": lambda x: domain_scores(x, unit),
            "cosine kNN k=5, all train": knn,
            "energy (ImageNet head)": energy}


@torch.no_grad()
def mean_token_log_probs(model: Captioner, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """(N,) mean per-token log-prob of each image's best beam-3 caption."""
    out = []
    opts = SearchOptions(beam_size=3, max_length=model.cfg.max_len - 1, banned_ids=(PAD, BOS, UNK))
    for start in range(0, len(images), batch_size):
        memory, keys, state = model.encode(images[start:start + batch_size])

        def step(tokens: np.ndarray, st: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
            log_probs, new = model.decode_step(torch.from_numpy(tokens), *(torch.from_numpy(a) for a in st))
            return log_probs.numpy(), (new.numpy(), st[1], st[2])

        hyps = beam_search(step, (state.numpy(), memory.numpy(), keys.numpy()), len(memory), BOS, EOS, opts)
        out += [h[0].log_prob / (len(h[0].tokens) + h[0].finished) for h in hyps]
    return np.asarray(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True, help="folder with the run's train-*.npy and val-*.npy")
    p.add_argument("--data", type=Path, default=Path("data/captions"), help="for the val images (decoder confidence)")
    p.add_argument("--photo-dir", type=Path, nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model, _, _ = load_model(args.checkpoint)

    def pooled(split: str) -> np.ndarray:
        (path,) = sorted(args.features.glob(f"{split}-*.npy"))
        maps = np.load(path, mmap_mode="r")
        return np.concatenate([np.asarray(maps[i:i + 1024], np.float32).mean(axis=(2, 3))
                               for i in range(0, len(maps), 1024)])

    train, val = pooled("train"), pooled("val")
    folders = {}
    for folder in args.photo_dir:
        images = torch.stack(list(folder_images(model.cfg.image_size_px, folder).values()))
        with torch.no_grad():
            folders[folder.name] = (model.encoder(images).mean(dim=(2, 3)).numpy(), images)
    result: dict[str, dict[str, object]] = {}
    for name, score in detectors(train).items():
        threshold = float(np.quantile(score(val), QUANTILE))
        counts = {f: int((score(x) > threshold).sum()) for f, (x, _) in folders.items()}
        result[name] = {"threshold": threshold, **counts}
    val_images = torch.stack([load_image(it.path, model.cfg.image_size_px)
                              for it in read_coco(args.data / "captions_val.json")])
    floor = float(np.quantile(mean_token_log_probs(model, val_images), 1 - QUANTILE))
    counts = {f: int((mean_token_log_probs(model, im) < floor).sum()) for f, (_, im) in folders.items()}
    result["decoder mean token log-prob"] = {"threshold": floor, **counts}
    sizes = {f: len(x) for f, (x, _) in folders.items()}
    print(f"{'detector':34s} {'threshold':>9s} " + " ".join(f"{f:>10s}" for f in folders))
    for name, row in result.items():
        print(f"{name:34s} {row['threshold']:9.3f} " + " ".join(f"{row[f]:>4d} / {sizes[f]:<3d}" for f in folders))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"quantile": QUANTILE, "photos": sizes, "detectors": result}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`nui data captions`: build the caption dataset (real stamps + emoji composed onto real textures).

    nui data captions --out data/captions                    # 30k train scenes + plain pictures, 1k val, 1k test
    nui data captions --out data/captions --train-scenes 60000 --scene-objects 300 --seed 1 --workers 2

Output under OUT (COCO-captions JSON, see coco.py):
  captions_train.json, captions_val.json, captions_test.json   images + 5 captions per scene
  images/<split>/<id>.jpg                                      JPEG, --image-size px square
  dataset.json   seed, command, counts, the scene objects and backgrounds, how the split was made
Every image is determined by the seed and its index, whatever the number of workers.
See scenes.py for the scenes, their captions and the held-out split; sources.py for the pictures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import inflect
import numpy as np
from tqdm import tqdm

from training.captioner.coco import write_coco
from training.captioner.scenes import ScenePlanner, SceneSpec, Split, draw_plain, draw_scene, plain_captions
from training.captioner.sources import (
    COLOURS,
    Background,
    Picture,
    backgrounds,
    load_emoji,
    load_stamps,
    picture_loader,
)

logger = logging.getLogger(__name__)
SPLITS: tuple[Split, ...] = ("train", "val", "test")


def eligible_names(pictures: list[Picture]) -> dict[str, tuple[str, ...]]:
    """Scene name -> picture keys, for names a scene can count and colour: singular nouns ("beans" and
    "fireworks" show several things in one picture) without a colour word of their own ("black cat")."""
    engine = inflect.engine()
    by_name: dict[str, list[str]] = {}
    for p in pictures:
        if p.name is None or any(c in p.name.split() for c in COLOURS) or engine.singular_noun(p.name):
            continue
        by_name.setdefault(p.name, []).append(p.key)
    return {n: tuple(k) for n, k in sorted(by_name.items())}


def _seed(seed: int, split: str, index: int) -> int:
    stream = SPLITS.index(split) if split in SPLITS else len(SPLITS)  # "plain" pictures: their own stream
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0])


# Worker-process state, set once by _init_worker.
_PICTURES: dict[str, Picture] = {}
_BACKGROUNDS: dict[str, Background] = {}
_LOAD = picture_loader(Path("."))


def _init_worker(pictures: dict[str, Picture], bgs: dict[str, Background], cache_dir: Path) -> None:
    global _PICTURES, _BACKGROUNDS, _LOAD
    _PICTURES, _BACKGROUNDS, _LOAD = pictures, bgs, picture_loader(cache_dir)


def _render(job: tuple[str, Any, str, int]) -> str:
    """Draw one image and save it as JPEG; returns its path."""
    kind, payload, out_path, size_px = job
    if kind == "scene":
        spec: SceneSpec = payload
        img = draw_scene(spec, _BACKGROUNDS[spec.background], lambda k: _LOAD(_PICTURES[k]), size_px)
    else:
        key, seed = payload
        img = draw_plain(_LOAD(_PICTURES[key]), size_px, seed)
    img.save(out_path, quality=90)
    return out_path


def build(out: Path, *, train_scenes: int, val_scenes: int, test_scenes: int, scene_objects: int,
          heldout_fraction: float, plain_copies: int, image_size_px: int, seed: int, workers: int,
          progress: bool = True) -> dict[str, Any]:
    """Build the dataset under `out`; returns the summary also written to dataset.json."""
    pictures = load_stamps() + load_emoji()
    by_key = {p.key: p for p in pictures}
    names_all = eligible_names(pictures)
    rng = np.random.default_rng(seed)
    if scene_objects > len(names_all):
        raise ValueError(f"--scene-objects {scene_objects}: only {len(names_all)} usable object names")
    names = tuple(sorted(str(n) for n in rng.choice(sorted(names_all), size=scene_objects, replace=False)))
    bgs = backgrounds()
    planner = ScenePlanner(names, {n: names_all[n] for n in names}, bgs, heldout_fraction)
    counts = {"train": train_scenes, "val": val_scenes, "test": test_scenes}
    jobs: list[tuple[str, Any, str, int]] = []
    coco: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {s: ([], []) for s in SPLITS}
    for split in SPLITS:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        images, anns = coco[split]
        specs = [planner.draw(split, _seed(seed, split, i)) for i in range(counts[split])]
        plain: list[tuple[str, int]] = []
        if split == "train":
            plain = [(p.key, _seed(seed, "plain", len(pictures) * c + i)) for c in range(plain_copies)
                     for i, p in enumerate(pictures)]
        work: list[SceneSpec | tuple[str, int]] = [*specs, *plain]
        for i, item in enumerate(work):
            image_id = len(images) + 1
            file_name = f"images/{split}/{image_id:06d}.jpg"
            if isinstance(item, SceneSpec):
                jobs.append(("scene", item, str(out / file_name), image_size_px))
                captions = item.captions
                meta: dict[str, Any] = {"kind": "scene", "background": item.background, "relation": item.relation,
                                        "objects": [{"name": g.name, "count": g.count, "colour": g.colour,
                                                     "picture": g.picture} for g in item.groups]}
            else:
                key, _ = item
                jobs.append(("plain", item, str(out / file_name), image_size_px))
                captions = plain_captions(by_key[key])
                meta = {"kind": "plain", "picture": key}
            assert i + 1 == image_id
            images.append({"id": image_id, "file_name": file_name, "width": image_size_px, "height": image_size_px,
                           "nui": meta})
            anns.extend({"id": len(anns) + 1, "image_id": image_id, "caption": c} for c in captions)

    t0 = time.perf_counter()
    init = (by_key, {b.name: b for b in bgs}, out / "cache")
    chunk = max(1, min(64, len(jobs) // max(1, workers * 8)))
    if workers <= 1:
        _init_worker(*init)
        done = (_render(j) for j in jobs)
        for _ in tqdm(done, total=len(jobs), desc="images", disable=not progress, mininterval=2.0):
            pass
    else:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=init) as pool:
            for _ in tqdm(pool.map(_render, jobs, chunksize=chunk), total=len(jobs), desc="images",
                          disable=not progress, mininterval=2.0):
                pass
    for split in SPLITS:
        images, anns = coco[split]
        write_coco(out / f"captions_{split}.json", images, anns,
                   {"description": f"nui caption scenes ({split})", "nui_split": split, "nui_seed": seed})
    summary = {
        "seed": seed,
        "command": "nui data captions " + shlex.join(sys.argv[3:] if sys.argv[1:3] == ["data", "captions"]
                                                      else sys.argv[1:]),
        "image_size_px": image_size_px,
        "splits": {s: {"images": len(coco[s][0]), "captions": len(coco[s][1])} for s in SPLITS},
        "plain_pictures": len(pictures) * plain_copies,
        "scene_objects": list(names),
        "backgrounds": [b.name for b in bgs],
        "heldout_fraction": heldout_fraction,
        "split_rule": "each unordered object pair and each (object, background) combination is hashed "
                      "(sha1) into test (< f), val (< 2f) or train; a scene belongs to the split all of its "
                      "combinations belong to; plain pictures are train only",
        "build_s": round(time.perf_counter() - t0, 1),
    }
    (out / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nui data captions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train-scenes", type=int, default=30_000)
    p.add_argument("--val-scenes", type=int, default=1000)
    p.add_argument("--test-scenes", type=int, default=1000)
    p.add_argument("--scene-objects", type=int, default=150,
                   help="object names drawn (seeded) from the usable stamp/emoji names for the scenes")
    p.add_argument("--heldout-fraction", type=float, default=0.1,
                   help="share of object pairs and of (object, background) combinations held out for each of val "
                        "and test")
    p.add_argument("--plain-copies", type=int, default=1, help="training images of each picture alone on white")
    p.add_argument("--image-size", type=int, default=224, help="square image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not 0.0 < args.heldout_fraction < 0.5:
        p.error("--heldout-fraction must be in (0, 0.5)")
    for name in ("train_scenes", "val_scenes", "test_scenes", "plain_copies"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.image_size < 32 or args.scene_objects < 2:
        p.error("--image-size must be >= 32 and --scene-objects >= 2")
    try:
        s = build(args.out, train_scenes=args.train_scenes, val_scenes=args.val_scenes, test_scenes=args.test_scenes,
                  scene_objects=args.scene_objects, heldout_fraction=args.heldout_fraction,
                  plain_copies=args.plain_copies, image_size_px=args.image_size, seed=args.seed,
                  workers=args.workers)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    sizes = ", ".join(f"{k} {v['images']} images / {v['captions']} captions" for k, v in s["splits"].items())
    print(f"{sizes} -> {args.out} ({s['build_s']} s)")
    return 0

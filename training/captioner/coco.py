"""COCO-captions JSON: what the caption builder writes, what training reads, and an importer for real sets.

The format is COCO 2014/2017's `captions_*.json`:
    {"info": {...}, "licenses": [...], "images": [{"id", "file_name", "width", "height"}, ...],
     "annotations": [{"id", "image_id", "caption"}, ...]}
`file_name` is relative to the images folder (`info.nui_images_root`, relative to the JSON's folder,
else the JSON's folder itself); an absolute `file_name` is used as is.

    nui data coco --annotations captions_train2017.json --images train2017/ --out data/coco --split train
    nui data coco --annotations captions_val2017.json --images val2017/ --out data/coco --split val

The importer checks every image exists, drops captionless images and empty captions (counted), and
writes `OUT/captions_<split>.json` pointing at the original images (nothing is copied).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.caption_text import normalize_caption

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptionedImage:
    image_id: int
    path: Path  # absolute or relative to the working directory
    captions: tuple[str, ...]


def write_coco(path: Path, images: list[dict[str, Any]], annotations: list[dict[str, Any]],
               info: dict[str, Any]) -> None:
    """Write a COCO-captions JSON atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"info": info, "licenses": [], "images": images, "annotations": annotations}))
    os.replace(tmp, path)


def read_coco(path: Path, images_root: Path | None = None) -> list[CaptionedImage]:
    """Images with at least one caption, in image-id order; ValueError on a malformed file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read COCO captions file {path}: {e}") from e
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{path}: not a COCO captions file (needs 'images' and 'annotations')")
    if images_root is None:
        rel = (data.get("info") or {}).get("nui_images_root", ".")
        images_root = Path(path).parent / rel
    caps: dict[int, list[str]] = defaultdict(list)
    for i, a in enumerate(data["annotations"]):
        try:
            caps[int(a["image_id"])].append(str(a["caption"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: annotation {i} lacks image_id/caption") from e
    out = []
    for i, im in enumerate(data["images"]):
        try:
            image_id, file_name = int(im["id"]), str(im["file_name"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: image {i} lacks id/file_name") from e
        if caps.get(image_id):
            out.append(CaptionedImage(image_id, images_root / file_name, tuple(caps[image_id])))
    return sorted(out, key=lambda c: c.image_id)


def import_coco(annotations: Path, images_dir: Path, out: Path, split: str, limit: int = 0) -> dict[str, int]:
    """Check and rewrite a COCO captions file as OUT/captions_<split>.json (absolute image paths)."""
    items = read_coco(annotations, images_root=images_dir.resolve())
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    missing = empty = 0
    for item in items:
        if limit and len(images) >= limit:
            break
        if not item.path.is_file():
            missing += 1
            continue
        kept = [c.strip() for c in item.captions if normalize_caption(c)]
        empty += len(item.captions) - len(kept)
        if not kept:
            continue
        images.append({"id": item.image_id, "file_name": str(item.path)})
        anns.extend({"id": len(anns) + 1, "image_id": item.image_id, "caption": c} for c in kept)
    if not images:
        raise ValueError(f"no usable images: {missing} of {len(items)} captioned images missing under {images_dir}")
    write_coco(out / f"captions_{split}.json", images, anns,
               {"description": f"imported from {annotations}", "nui_split": split})
    return {"images": len(images), "captions": len(anns), "missing_images": missing, "empty_captions": empty}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nui data coco", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotations", type=Path, required=True, help="COCO captions JSON (captions_train2017.json)")
    p.add_argument("--images", type=Path, required=True, help="folder holding the images' file_name paths")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", default="train", help="name of the split written (captions_<split>.json)")
    p.add_argument("--limit", type=int, default=0, help="keep the first N usable images (0 = all)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = import_coco(args.annotations, args.images, args.out, args.split, args.limit)
    except ValueError as e:
        p.error(str(e))
    print(f"{summary['images']} images, {summary['captions']} captions -> {args.out / f'captions_{args.split}.json'}"
          f" ({summary['missing_images']} missing images, {summary['empty_captions']} empty captions skipped)")
    return 0

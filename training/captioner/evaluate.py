"""`nui eval captioner`: caption a split (greedy and beam search) and score it with BLEU-4 and CIDEr.

    nui eval captioner --checkpoint runs/captioner_small --data data/captions --split test \
        --out docs/captioner/eval_test.json [--beam-size 3] [--limit N] [--photos [--photo-dir DIR ...]] \
        [--domain-repo model_repository]

Writes the JSON (metrics per decoder, every hypothesis with its references; on `nui data captions`
scenes also how often the caption names each object and the background) and `<out stem>.png`, a grid
of sample images with their greedy caption. `--photos` also captions scikit-image's real photographs
(coffee, astronaut, chelsea the cat, rocket, ...), which the model has never seen, into the JSON and
`<out stem>_photos.png`; `--photo-dir` adds every JPEG/PNG/WebP of those folders (the model card's
tuning photos, which are not scikit-image's). Beam search is models/caption_beam.py (what the server
runs) over the torch decoder step.

The out-of-domain check is the server's: the encoder graph of the model-repository version exported from
this very checkpoint (matched by the checkpoint's sha256, under --domain-repo) scores every image, and
models/caption_domain.py `judge` replaces the captions of out-of-domain images with the fallback
("a photo of <ImageNet label>" / "a photo"), as `Caption` answers. Metrics are over those captions; the
JSON also keeps the decoder's own captions, the flagged images and each photo's verdict. No matching
version (or --no-domain-check): captions are the decoder's only.
"""

from __future__ import annotations

import argparse
import json
import logging
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.engine import Engine, load_engine
from engines.manifest import sha256_file
from models.caption_beam import SearchOptions, beam_search
from models.caption_domain import DomainPolicy, DomainVerdict, judge
from models.caption_image import IMAGE_SUFFIXES, to_pixels
from models.caption_text import BOS, EOS, PAD, UNK, CaptionTokenizer, manifest_end_ids
from models.captioner import Captioner
from training.captioner.coco import CaptionedImage, read_coco
from training.captioner.dataset import load_image
from training.captioner.metrics import caption_scores, greedy_decode
from training.captioner.model_io import load_model
from training.captioner.sources import backgrounds

logger = logging.getLogger(__name__)
PHOTOS = ("coffee", "astronaut", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
          "retina", "colorwheel", "logo")


@torch.no_grad()
def decode(model: Captioner, tokenizer: CaptionTokenizer, images: torch.Tensor, beam_size: int,
           batch_size: int = 64, end_after_ids: tuple[int, ...] | None = None) -> list[str]:
    """Captions of (N, 3, H, W) images: torch greedy loop for beam 1, caption_beam's search otherwise or
    when captions may end only after `end_after_ids` (as the served version decodes)."""
    out: list[str] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        if beam_size == 1 and end_after_ids is None:
            out.extend(tokenizer.decode(ids) for ids in greedy_decode(model, chunk, model.cfg.max_len))
            continue
        memory, keys, state = model.encode(chunk)

        def step(tokens: np.ndarray, st: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
            h, mem, k = (torch.from_numpy(a) for a in st)
            log_probs, new_h = model.decode_step(torch.from_numpy(tokens), h, mem, k)
            return log_probs.numpy(), (new_h.numpy(), st[1], st[2])

        opts = SearchOptions(beam_size=beam_size, max_length=model.cfg.max_len - 1, banned_ids=(PAD, BOS, UNK),
                             end_after_ids=end_after_ids)
        hyps = beam_search(step, (state.numpy(), memory.numpy(), keys.numpy()), len(chunk), BOS, EOS, opts)
        out.extend(tokenizer.decode(h[0].tokens) for h in hyps)
    return out


def scene_recall(coco_json: Path, items: list[CaptionedImage], hyps: list[str]) -> dict[str, float] | None:
    """How often captions name what the scene holds (`nui data captions` metadata; None for other data):
    object recall (each object's name, singular or plural, in the caption), the same over scenes of one
    kind of object and of two kinds (the held-out pairings), images with every object named, and images
    whose background phrase ("on grass") is in the caption."""
    import inflect

    meta = {im["id"]: im.get("nui") for im in json.loads(coco_json.read_text())["images"]}
    phrases = {b.name: b.phrase for b in backgrounds()}
    engine = inflect.engine()
    named = total = all_named = bg_named = scenes = 0
    by_kinds: dict[int, list[int]] = {}  # kinds of object in the scene -> [objects named, objects]
    for item, hyp in zip(items, hyps, strict=True):
        m = meta.get(item.image_id)
        if not m or m.get("kind") != "scene":
            continue
        text = f" {hyp} "
        hits = [f" {o['name']} " in text or f" {engine.plural_noun(o['name'])} " in text for o in m["objects"]]
        named, total, scenes = named + sum(hits), total + len(hits), scenes + 1
        tally = by_kinds.setdefault(len(hits), [0, 0])
        tally[0], tally[1] = tally[0] + sum(hits), tally[1] + len(hits)
        all_named += all(hits)
        bg_named += f" {phrases.get(m['background'], m['background'])} " in text
    if not scenes:
        return None
    return {"object_recall": named / total, "all_objects_named": all_named / scenes,
            "background_named": bg_named / scenes, "scenes": float(scenes),
            **{f"object_recall_{k}_kinds": hit / n for k, (hit, n) in sorted(by_kinds.items())}}


def sample_grid(path: Path, images: list[np.ndarray], titles: list[str], cols: int = 4) -> None:
    """PNG grid of images with a caption under each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, (len(images) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.7 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, title in zip(axes.flat, images, titles, strict=False):
        ax.imshow(img)
        ax.set_title(textwrap.fill(title, 34), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def photo_images(size_px: int, folders: Sequence[Path] = ()) -> dict[str, torch.Tensor]:
    """scikit-image's bundled photographs (grey ones replicated to RGB), then every image file in `folders`
    (keyed by file name), as model inputs: to_pixels, the server's resize."""
    import skimage.data
    from PIL import Image

    out = {}
    for name in PHOTOS:
        arr = np.asarray(getattr(skimage.data, name)())
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        out[name] = torch.from_numpy(to_pixels(Image.fromarray(arr[..., :3].astype(np.uint8)), size_px))
    for folder in folders:
        out.update(folder_images(size_px, folder))
    return out


def folder_images(size_px: int, folder: Path) -> dict[str, torch.Tensor]:
    """Every JPEG/PNG/WebP in `folder` by file name, as model inputs; ValueError when there is none."""
    from PIL import Image

    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"--photo-dir {folder}: no {'/'.join(IMAGE_SUFFIXES)} files")
    out = {}
    for f in files:
        with Image.open(f) as im:
            out[f.name] = torch.from_numpy(to_pixels(im, size_px))
    return out


def find_domain_version(repo: Path, weights: Path) -> Path | None:
    """The highest captioner version under `repo` exported from `weights` with a domain check, or None."""
    sha = sha256_file(weights)
    found = []
    for path in repo.glob("*/*/manifest.json"):
        m = json.loads(path.read_text())
        if m.get("task") == "captioner" and m.get("source_checkpoint_sha256") == sha \
                and "domain" in m.get("extras", {}):
            found.append(path.parent)
    return max(found, key=lambda p: (p.parent.name, int(p.name))) if found else None


class DomainJudge:
    """The version's encoder graph (domain score, ImageNet probabilities) + the shared `judge`."""

    def __init__(self, version_dir: Path) -> None:
        self.version_dir = version_dir
        self.engine: Engine = load_engine(version_dir.parent.parent, version_dir.parent.name, int(version_dir.name),
                                          1, graph="encoder")
        spec = self.engine.manifest.extras["domain"]
        self.policy = DomainPolicy.from_dict(spec)
        self.score_output, self.probs_output = spec["score_output"], spec.get("probs_output")
        self.end_after_ids = manifest_end_ids(self.engine.manifest.extras,  # how the version ends captions
                                              int(self.engine.manifest.config["vocab_size"]))

    def __call__(self, images: torch.Tensor, batch_size: int = 64) -> list[DomainVerdict]:
        verdicts = []
        for start in range(0, len(images), batch_size):
            out = self.engine.run({"images": images[start:start + batch_size].numpy()})
            probs = out[self.probs_output] if self.probs_output else None
            verdicts += [judge(float(score), None if probs is None else probs[i], self.policy)
                         for i, score in enumerate(out[self.score_output])]
        return verdicts


def checked(hyps: list[str], verdicts: list[DomainVerdict] | None) -> list[str]:
    """The captions as the server answers them: the fallback where the image is out of domain."""
    if verdicts is None:
        return hyps
    return [h if v.in_domain else v.caption for h, v in zip(hyps, verdicts, strict=True)]


def evaluate(checkpoint: Path, coco_json: Path, items: list[CaptionedImage], beam_sizes: list[int], photos: bool,
             domain_repo: Path | None = None, photo_dirs: Sequence[Path] = ()
             ) -> tuple[dict[str, Any], torch.Tensor, list[str]]:
    model, tokenizer, weights = load_model(checkpoint)
    version = find_domain_version(domain_repo, weights) if domain_repo is not None else None
    if domain_repo is not None and version is None:
        logger.warning("no captioner version with a domain check exported from %s under %s: captions unchecked",
                       weights, domain_repo)
    domain = DomainJudge(version) if version is not None else None
    images = torch.stack([load_image(it.path, model.cfg.image_size_px) for it in items])
    refs = [list(it.captions) for it in items]
    result: dict[str, Any] = {"checkpoint": str(weights), "images": len(items), "metrics": {}, "captions": {}}
    verdicts = domain(images) if domain is not None else None
    if domain is not None and verdicts is not None:
        flagged = [i for i, v in enumerate(verdicts) if not v.in_domain]
        result["domain"] = {"version": str(domain.version_dir), "threshold": domain.policy.score_threshold,
                            "label_threshold": domain.policy.label_threshold, "flagged": len(flagged),
                            "flagged_share": len(flagged) / max(1, len(items)),
                            "flagged_files": [str(items[i].path) for i in flagged],
                            "scores": [round(v.score, 4) for v in verdicts]}
        logger.info("domain check (%s): %d of %d images out of domain", domain.version_dir, len(flagged), len(items))
    ends = domain.end_after_ids if domain is not None else None
    greedy: list[str] = []
    for beam in beam_sizes:
        name = "greedy" if beam == 1 else f"beam{beam}"
        raw = decode(model, tokenizer, images, beam, end_after_ids=ends)
        hyps = checked(raw, verdicts)
        if verdicts is not None:
            result["captions"][f"{name}_decoder"] = raw
            result["metrics"][f"{name}_decoder"] = caption_scores(refs, raw)
        result["metrics"][name] = caption_scores(refs, hyps)
        recall = scene_recall(coco_json, items, hyps)
        if recall:
            result["metrics"][name].update(recall)
        result["captions"][name] = hyps
        greedy = greedy or hyps
        logger.info("%s: BLEU-4 %.3f CIDEr %.3f", name, result["metrics"][name]["bleu4"],
                    result["metrics"][name]["cider"])
    result["references"] = refs
    result["files"] = [str(it.path) for it in items]
    if photos:
        pics = photo_images(model.cfg.image_size_px, photo_dirs)
        batch = torch.stack(list(pics.values()))
        photo_verdicts = domain(batch) if domain is not None else None
        raw_photos = {b: decode(model, tokenizer, batch, b, end_after_ids=ends) for b in beam_sizes}
        result["photos"] = {b: dict(zip(pics, checked(raw, photo_verdicts), strict=True))
                            for b, raw in raw_photos.items()}
        result["photos_decoder"] = {b: dict(zip(pics, raw, strict=True)) for b, raw in raw_photos.items()}
        if photo_verdicts is not None:
            result["photos_domain"] = {k: {"in_domain": v.in_domain, "score": v.score, "label": v.label,
                                           "label_prob": v.label_prob, "top_label": v.top_label}
                                       for k, v in zip(pics, photo_verdicts, strict=True)}
    return result, images, greedy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nui eval captioner", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="run folder, checkpoint folder or model.safetensors")
    p.add_argument("--data", type=Path, default=Path("data/captions"), help="folder with captions_<split>.json")
    p.add_argument("--split", default="test")
    p.add_argument("--out", type=Path, required=True, help="JSON to write (the PNG grid goes next to it)")
    p.add_argument("--beam-size", type=int, default=3, help="also decode with this beam (1: greedy only)")
    p.add_argument("--limit", type=int, default=0, help="first N images of the split (0 = all)")
    p.add_argument("--grid", type=int, default=16, help="sample images in the PNG grid")
    p.add_argument("--photos", action="store_true", help="also caption scikit-image's real photographs")
    p.add_argument("--photo-dir", type=Path, nargs="+", default=[],
                   help="with --photos: also caption the images in these folders")
    p.add_argument("--domain-repo", type=Path, default=Path("model_repository"),
                   help="model repository holding the version exported from this checkpoint (its domain check)")
    p.add_argument("--no-domain-check", action="store_true", help="score the decoder's captions only")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        coco_json = args.data / f"captions_{args.split}.json"
        items = read_coco(coco_json)
        if args.beam_size < 1:
            raise ValueError("--beam-size must be >= 1")
        if args.photo_dir and not args.photos:
            raise ValueError("--photo-dir needs --photos")
    except ValueError as e:
        p.error(str(e))
    items = items[: args.limit] if args.limit else items
    beams = [1] if args.beam_size == 1 else [1, args.beam_size]
    result, images, greedy = evaluate(args.checkpoint, coco_json, items, beams, args.photos,
                                      None if args.no_domain_check else args.domain_repo, args.photo_dir)
    result["split"] = args.split
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    n = min(args.grid, len(items))
    sample_grid(args.out.with_suffix(".png"), [images[i].permute(1, 2, 0).numpy() for i in range(n)],
                [f"{greedy[i]}\n(ref: {items[i].captions[0]})" for i in range(n)])
    if args.photos:
        pics = photo_images(224, args.photo_dir)
        titles = [f"{k}: {result['photos'][1][k]}" for k in pics]
        grid = [t.permute(1, 2, 0).numpy() for t in pics.values()]
        sample_grid(args.out.with_name(args.out.stem + "_photos.png"), grid, titles)
    for name, m in result["metrics"].items():
        kinds = ", ".join(f"{k.split('_')[2]} kind(s) {100 * v:.1f}%" for k, v in m.items()
                          if k.startswith("object_recall_"))
        named = (f"; objects named {100 * m['object_recall']:.1f}% ({kinds}), "
                 f"all objects {100 * m['all_objects_named']:.1f}%, background {100 * m['background_named']:.1f}%"
                 if "object_recall" in m else "")
        print(f"{args.split} {name}: BLEU-4 {m['bleu4']:.3f} CIDEr {m['cider']:.3f} ({int(m['n'])} images){named}")
    if "domain" in result:
        print(f"{args.split} out of domain: {result['domain']['flagged']} of {result['images']} images "
              f"(threshold {result['domain']['threshold']:.3f}, {result['domain']['version']})")
    if args.photos:
        last = beams[-1]
        for k, v in result["photos"][last].items():
            verdict = result.get("photos_domain", {}).get(k)
            note = (f"  [{'in' if verdict['in_domain'] else 'OUT OF'} domain, score {verdict['score']:.2f}, "
                    f"top ImageNet {verdict['top_label'] or 'class'} p {verdict['label_prob']:.2f}; "
                    f"decoder: {result['photos_decoder'][last][k]}]"
                    if verdict else "")
            print(f"photo {k} (beam {last}): {v}{note}")
    return 0

"""Compositional caption scenes: which pictures go where, the captions that are true of it, and the split.

A scene is one background and one or two groups of identical objects ("two red cats"), the second group
strictly to the left of / right of / above / below the first (their bounding boxes do not overlap along
that axis). Colours are only said when they are true: an object is called red only after `colourise`
made every pixel of it a shade of red; a background's name comes from the texture or plain colour used.

Held-out split (what `val` and `test` measure): three kinds of *combination* are each assigned to one
split by a hash of their names (`combo_split`, `--heldout-fraction` each for val and test, the rest
train):
  * unordered object pairs {a, b}                         ("cat" with "bus"),
  * (object, background) combinations                    ("cat" on "grass"),
A scene belongs to a split only when every combination in it belongs to that split: its pair (when it
has two groups) and each object with the background. So no val/test scene shows two objects together,
or an object on a background, as any training scene does; every object and background on its own still
appears in training (an object is held out with only a fraction of its partners and backgrounds).
Plain captions (each stamp/emoji alone on white, with its own caption) are training data only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import inflect
import numpy as np
from PIL import Image

from training.captioner.sources import COLOURS, Background, Picture, colourise, render_background

Split = Literal["train", "val", "test"]
RELATIONS = ("left of", "right of", "above", "below")
_REL_PHRASE = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_COUNT_WORDS = {2: "two", 3: "three"}
_COUNT_PROBS = {1: [1.0], 2: [0.7, 0.3], 3: [0.6, 0.25, 0.15]}  # max count -> P(1), P(2), P(3)
_ENGINE = inflect.engine()


@dataclass(frozen=True)
class Group:
    picture: str  # Picture.key
    name: str  # scene name ("cat")
    count: int  # 1..3 copies
    colour: str | None  # a key of COLOURS, or None for the picture's own colours

    def phrase(self) -> str:
        """"a cat", "two red cats", "an orange bus"."""
        noun = self.name if self.count == 1 else _ENGINE.plural_noun(self.name)
        words = f"{self.colour} {noun}" if self.colour else noun
        return _ENGINE.a(words) if self.count == 1 else f"{_COUNT_WORDS[self.count]} {words}"


@dataclass(frozen=True)
class SceneSpec:
    """Everything needed to draw one image and caption it; drawn with `seed` alone."""

    background: str  # Background.name
    groups: tuple[Group, ...]  # 1 or 2 groups; groups[0] is `relation` of groups[1]
    relation: str | None  # one of RELATIONS when there are two groups
    seed: int
    captions: tuple[str, ...] = field(default=())


def _hash01(*parts: str) -> float:
    digest = hashlib.sha1("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def combo_split(kind: str, a: str, b: str, heldout_fraction: float) -> Split:
    """The split a combination belongs to: kind "pair" (order-free) or "background" (object, background)."""
    if kind == "pair":
        a, b = sorted((a, b))
    h = _hash01(kind, a, b)
    if h < heldout_fraction:
        return "test"
    if h < 2 * heldout_fraction:
        return "val"
    return "train"


def scene_split(names: Sequence[str], background: str, heldout_fraction: float) -> Split | None:
    """The split every combination of the scene belongs to; None when they disagree."""
    splits = {combo_split("background", n, background, heldout_fraction) for n in names}
    if len(names) == 2:
        splits.add(combo_split("pair", names[0], names[1], heldout_fraction))
    return splits.pop() if len(splits) == 1 else None


def scene_captions(spec: SceneSpec, bg: Background, rng: np.random.Generator, n: int = 5) -> tuple[str, ...]:
    """`n` different phrasings, all true of the scene (two always name everything, in both orders)."""
    where = f"{bg.preposition} {bg.phrase}"
    if len(spec.groups) == 1:
        a = spec.groups[0].phrase()
        be = "is" if spec.groups[0].count == 1 else "are"
        fixed = [f"{a} {where}", f"a picture of {a} {where}"]
        optional = [f"{where} there {be} {a}", f"a photo of {a}", f"{a} shown {where}", f"an image of {a} {where}",
                    f"{a} with {bg.phrase} behind"]
    else:
        assert spec.relation is not None
        a, b = spec.groups[0].phrase(), spec.groups[1].phrase()
        rel, inv = _REL_PHRASE[spec.relation], _REL_PHRASE[_INVERSE[spec.relation]]
        be = "is" if spec.groups[0].count == 1 else "are"
        fixed = [f"{a} {rel} {b} {where}", f"{b} {inv} {a} {where}"]
        optional = [f"{a} and {b} {where}", f"a picture of {a} {rel} {b}", f"{where} there {be} {a} {rel} {b}",
                    f"{a} next to {b} {where}", f"an image of {b} and {a} {where}"]
    picked = rng.choice(len(optional), size=max(0, n - len(fixed)), replace=False)
    return tuple(fixed + [optional[i] for i in sorted(picked)])


def plain_captions(p: Picture) -> tuple[str, ...]:
    """Captions of a picture alone on white: its own caption first, then phrasings of its scene name."""
    out = [p.caption]
    if p.name:
        a = _ENGINE.a(p.name)
        out += [f"{a} on a white background", f"a picture of {a}"]
        if p.source == "emoji":
            out.append(f"an emoji of {a}")
    return tuple(dict.fromkeys(out))


# --- drawing ----------------------------------------------------------------------------------------------


def _paste_group(canvas: Image.Image, img: Image.Image, count: int, box: tuple[float, float, float, float],
                 rng: np.random.Generator, size_frac: tuple[float, float]) -> None:
    """Paste `count` copies of `img` inside box (x0, y0, x1, y1), one per cell along the box's long side."""
    x0, y0, x1, y1 = box
    horizontal = (x1 - x0) >= (y1 - y0)
    for i in range(count):
        if horizontal:
            cx0, cx1, cy0, cy1 = x0 + (x1 - x0) * i / count, x0 + (x1 - x0) * (i + 1) / count, y0, y1
        else:
            cx0, cx1, cy0, cy1 = x0, x1, y0 + (y1 - y0) * i / count, y0 + (y1 - y0) * (i + 1) / count
        cw, ch = cx1 - cx0, cy1 - cy0
        side = min(cw, ch) * float(rng.uniform(*size_frac))
        scale = side / max(img.size)
        w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
        obj = img.resize((w, h), Image.Resampling.LANCZOS)
        x = cx0 + float(rng.uniform(0, max(0.0, cw - w)))
        y = cy0 + float(rng.uniform(0, max(0.0, ch - h)))
        canvas.alpha_composite(obj, (int(x), int(y)))


def draw_scene(spec: SceneSpec, bg: Background, load: Callable[[str], Image.Image], size_px: int) -> Image.Image:
    """The RGB image of `spec` (deterministic in spec.seed)."""
    rng = np.random.default_rng(spec.seed)
    canvas = render_background(bg, size_px, rng).convert("RGBA")
    s = float(size_px)
    margin = 0.04 * s
    full = (margin, margin, s - margin, s - margin)
    if len(spec.groups) == 1:
        boxes = [full]
        size_frac = (0.75, 0.95) if spec.groups[0].count == 1 else (0.7, 0.9)
    else:
        mid = s / 2
        first, second = ((margin, margin, mid, s - margin), (mid, margin, s - margin, s - margin))
        if spec.relation in ("above", "below"):
            first, second = ((margin, margin, s - margin, mid), (margin, mid, s - margin, s - margin))
        if spec.relation in ("right of", "below"):
            first, second = second, first
        boxes = [first, second]
        size_frac = (0.7, 0.92)
    for group, box in zip(spec.groups, boxes, strict=True):
        img = load(group.picture)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if group.colour:
            img = colourise(img, group.colour)
        _paste_group(canvas, img, group.count, box, rng, size_frac)
    return canvas.convert("RGB")


def draw_plain(img: Image.Image, size_px: int, seed: int) -> Image.Image:
    """A picture alone, centred on white at a random scale (70-95% of the side)."""
    rng = np.random.default_rng(seed)
    canvas = Image.new("RGBA", (size_px, size_px), (255, 255, 255, 255))
    _paste_group(canvas, img, 1, (0.0, 0.0, float(size_px), float(size_px)), rng, (0.7, 0.95))
    return canvas.convert("RGB")


# --- planning ---------------------------------------------------------------------------------------------


class ScenePlanner:
    """Draws scene specs of one split: objects, counts, colours, relation, background (all seeded).

    The (object, background) and (object, object, background) combinations of each split are listed once,
    and a scene draws one uniformly, so a held-out split gets its scenes however few combinations it has.
    """

    def __init__(self, names: Sequence[str], pictures_by_name: dict[str, tuple[str, ...]],
                 backgrounds: Sequence[Background], heldout_fraction: float, two_group_share: float = 0.6,
                 colour_share: float = 0.3) -> None:
        self.names = tuple(names)
        self.pictures_by_name = pictures_by_name
        self.backgrounds = {b.name: b for b in backgrounds}
        self.heldout_fraction = heldout_fraction
        self.two_group_share = two_group_share  # share of scenes with two groups (when the split has pairs)
        self.colour_share = colour_share  # share of groups recoloured
        self._combos: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str, str]]]] = {}

    def combos(self, split: Split) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
        """(object, background) and (object a, object b, background) combinations of `split` (a < b)."""
        if split not in self._combos:
            f = self.heldout_fraction
            singles = [(n, b) for b in self.backgrounds for n in self.names
                       if combo_split("background", n, b, f) == split]
            by_bg: dict[str, list[str]] = {}
            for n, b in singles:
                by_bg.setdefault(b, []).append(n)
            pairs = [(x, y, b) for b, ns in by_bg.items() for i, x in enumerate(ns) for y in ns[i + 1:]
                     if combo_split("pair", x, y, f) == split]
            self._combos[split] = (singles, pairs)
        return self._combos[split]

    def _group(self, name: str, rng: np.random.Generator, max_count: int) -> Group:
        pics = self.pictures_by_name[name]
        colour = None
        if rng.random() < self.colour_share and not any(c in name.split() for c in COLOURS):
            colour = str(rng.choice(list(COLOURS)))
        count = int(rng.choice(max_count, p=_COUNT_PROBS[max_count])) + 1
        return Group(picture=str(pics[int(rng.integers(len(pics)))]), name=name, count=count, colour=colour)

    def draw(self, split: Split, seed: int) -> SceneSpec:
        rng = np.random.default_rng(seed)
        singles, pairs = self.combos(split)
        if not singles:
            raise ValueError(f"the {split} split has no (object, background) combination: use more objects or a "
                             f"larger heldout_fraction than {self.heldout_fraction}")
        if pairs and rng.random() < self.two_group_share:
            a, b, bg_name = pairs[int(rng.integers(len(pairs)))]
            if rng.random() < 0.5:
                a, b = b, a
            groups: tuple[Group, ...] = (self._group(a, rng, 3), self._group(b, rng, 2))
            relation: str | None = str(rng.choice(RELATIONS))
        else:
            name, bg_name = singles[int(rng.integers(len(singles)))]
            groups, relation = (self._group(name, rng, 3),), None
        spec = SceneSpec(background=bg_name, groups=groups, relation=relation, seed=seed)
        return SceneSpec(background=bg_name, groups=groups, relation=relation, seed=seed,
                         captions=scene_captions(spec, self.backgrounds[bg_name], rng))

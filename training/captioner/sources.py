"""The real pictures the caption scenes are made of: Tux Paint stamps, Noto emoji and scikit-image textures.

* Stamps: Debian `tuxpaint-stamps-default` (/usr/share/tuxpaint/stamps): cut-out photos and clip-art,
  each `NAME.png` or `NAME.svg` with its English caption on the first line of `NAME.txt`
  ("A badger."). SVGs are rasterised with `rsvg-convert` (Debian `librsvg2-bin`) into a cache folder.
* Emoji: Debian `fonts-noto-color-emoji` rendered by Pillow, named by Debian `unicode-data`'s
  `emoji-test.txt` ("1F431 ; fully-qualified # 🐱 E0.6 cat face"). Skin-tone variants, flags and
  components are left out.
* Backgrounds: scikit-image's bundled textures (grass, gravel, brick, the moon's surface, the Hubble
  deep field for "space"; only datasets that ship in the wheel, nothing is downloaded) tinted with
  colours we choose, and plain coloured backgrounds.

A picture gets a short scene `name` ("badger", "cat face") when its caption is a short noun phrase;
only named pictures of the object categories are placed into compositional scenes, every picture gets
its plain caption.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from models.caption_text import normalize_caption

logger = logging.getLogger(__name__)

STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_FONT_SIZE = 109  # the only size Noto's CBDT bitmaps come in

# Stamp categories (top folder) whose pictures are objects a scene can hold; symbols (letters, money,
# shapes), medical and military pictures keep their plain captions only.
STAMP_SCENE_CATEGORIES = frozenset({"animals", "clothes", "food", "hobbies", "household", "plants",
                                    "seasonal", "space", "sports", "town", "vehicles", "people"})
EMOJI_SCENE_GROUPS = frozenset({"Animals & Nature", "Food & Drink", "Travel & Places", "Activities", "Objects"})
_ARTICLE = re.compile(r"^(a|an|the|some|two|pair of|a pair of)\s+")
_MAX_NAME_WORDS = 2


@dataclass(frozen=True)
class Picture:
    """One real captioned picture."""

    key: str  # unique: "stamp:animals/mammals/badger" or "emoji:1F431"
    caption: str  # its own caption, as shipped ("A badger.", "cat face")
    name: str | None  # short scene name ("badger"), None when the caption is not a short noun phrase
    source: str  # "stamp" or "emoji"
    path: str  # image file (stamps) or the emoji's characters

    def load(self, cache_dir: Path) -> Image.Image:
        """RGBA picture cropped to its opaque pixels."""
        if self.source == "emoji":
            img = render_emoji(self.path)
        elif self.path.endswith(".svg"):
            img = Image.open(_rasterise_svg(Path(self.path), cache_dir)).convert("RGBA")
        else:
            img = Image.open(self.path).convert("RGBA")
        bbox = img.getchannel("A").point(lambda a: 255 if a > 16 else 0).getbbox()
        return img.crop(bbox) if bbox else img


def scene_name(caption: str) -> str | None:
    """"A badger." -> "badger"; None for captions that are not a short noun phrase."""
    if any(c.isdigit() for c in caption) or "(" in caption:
        return None
    first = re.split(r"[.!?;,—:]", caption.strip(), maxsplit=1)[0]
    text = _ARTICLE.sub("", normalize_caption(first))
    words = text.split()
    if not words or len(words) > _MAX_NAME_WORDS or len(normalize_caption(caption).split()) > _MAX_NAME_WORDS + 2:
        return None
    return text


def load_stamps(root: Path = STAMPS_DIR) -> list[Picture]:
    """Every stamp with an English caption and a PNG or SVG picture."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found: install Debian tuxpaint-stamps-default")
    have_rsvg = shutil.which("rsvg-convert") is not None
    out: list[Picture] = []
    skipped_svg = 0
    for txt in sorted(root.rglob("*.txt")):
        lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
        caption = lines[0].strip() if lines else ""
        png, svg = txt.with_suffix(".png"), txt.with_suffix(".svg")
        path = png if png.is_file() else svg if svg.is_file() else None
        if not caption or path is None:
            continue
        if path.suffix == ".svg" and not have_rsvg:
            skipped_svg += 1
            continue
        rel = txt.relative_to(root).with_suffix("")
        category = rel.parts[0]
        name = scene_name(caption) if category in STAMP_SCENE_CATEGORIES else None
        out.append(Picture(key=f"stamp:{rel.as_posix()}", caption=caption, name=name, source="stamp", path=str(path)))
    if skipped_svg:
        logger.warning("%d SVG stamps skipped: install Debian librsvg2-bin (rsvg-convert) to use them", skipped_svg)
    return out


def load_emoji(test_file: Path = EMOJI_TEST) -> list[Picture]:
    """Fully-qualified emoji without skin tones, flags or components, named as in emoji-test.txt."""
    if not test_file.is_file():
        raise FileNotFoundError(f"{test_file} not found: install Debian unicode-data")
    out: list[Picture] = []
    group = ""
    for line in test_file.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
            continue
        if line.startswith("#") or "; fully-qualified" not in line or group in ("Component", "Flags"):
            continue
        codes, rest = line.split(";", 1)
        name = rest.split("#", 1)[1].strip().split(" ", 2)[2]  # "🐱 E0.6 cat face" -> "cat face"
        if "skin tone" in name or ":" in name:
            continue
        chars = "".join(chr(int(c, 16)) for c in codes.split())
        short = scene_name(name) if group in EMOJI_SCENE_GROUPS else None
        out.append(Picture(key=f"emoji:{'-'.join(codes.split())}", caption=name, name=short, source="emoji",
                           path=chars))
    return out


_FONT: ImageFont.FreeTypeFont | None = None


def render_emoji(chars: str) -> Image.Image:
    global _FONT
    if _FONT is None:
        if not EMOJI_FONT.is_file():
            raise FileNotFoundError(f"{EMOJI_FONT} not found: install Debian fonts-noto-color-emoji")
        _FONT = ImageFont.truetype(str(EMOJI_FONT), EMOJI_FONT_SIZE)
    img = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
    ImageDraw.Draw(img).text((80, 80), chars, font=_FONT, embedded_color=True, anchor="mm")
    return img


def _rasterise_svg(svg: Path, cache_dir: Path) -> Path:
    out = cache_dir / "svg" / (re.sub(r"[^A-Za-z0-9_.-]", "_", str(svg.relative_to(svg.anchor))) + ".png")
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp.png")
        try:
            subprocess.run(["rsvg-convert", "-w", "256", "-a", "-o", str(tmp), str(svg)], check=True,
                           capture_output=True, timeout=60)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            raise RuntimeError(f"rsvg-convert failed on {svg}") from e
        tmp.replace(out)
    return out


# --- backgrounds ----------------------------------------------------------------------------------------

# Colours named in captions, as RGB. Objects and backgrounds are only called a colour they were made.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 30, 30), "green": (40, 160, 50), "blue": (40, 80, 220), "yellow": (240, 210, 30),
    "orange": (245, 130, 20), "purple": (130, 50, 170), "pink": (245, 120, 180), "white": (245, 245, 245),
    "black": (25, 25, 25), "gray": (128, 128, 128),
}


def _texture(name: str) -> np.ndarray:
    """A bundled scikit-image texture as float32 [0, 1]: (H, W) grey, or (H, W, 3) for colour photos."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0
    return img


@dataclass(frozen=True)
class Background:
    """A background kind; `phrase` completes "... on {phrase}" / "... in {phrase}"."""

    name: str  # key used by the split ("grass", "plain red")
    preposition: str  # "on" or "in"
    phrase: str  # "grass", "a red background"
    texture: str | None  # skimage.data function, None for a plain colour
    tint: tuple[int, int, int]  # RGB the grey texture is mapped onto (plain colour: the colour itself)


def backgrounds() -> list[Background]:
    textured = [
        Background("grass", "on", "grass", "grass", (70, 150, 40)),
        Background("gravel", "on", "gravel", "gravel", (150, 140, 125)),
        Background("brick", "in front of", "a brick wall", "brick", (170, 70, 50)),
        Background("moon", "on", "the moon", "moon", (200, 200, 200)),
        Background("space", "in", "space", "hubble_deep_field", (255, 255, 255)),
    ]
    plain = [Background(f"plain {c}", "on", f"a {c} background", None, rgb) for c, rgb in COLOURS.items()
             if c in ("red", "blue", "yellow", "white", "black", "green")]
    return textured + plain


_TEXTURES: dict[str, np.ndarray] = {}


def render_background(bg: Background, size_px: int, rng: np.random.Generator) -> Image.Image:
    """An RGB square: a random crop (scale, mirror) of the tinted texture, or the plain colour + light noise.
    Colour textures (the Hubble deep field) keep their own colours."""
    tint = np.asarray(bg.tint, dtype=np.float32) / 255.0
    if bg.texture is None:
        noise = rng.normal(0.0, 0.03, size=(size_px, size_px, 1)).astype(np.float32)
        rgb = np.clip(tint[None, None, :] + noise, 0, 1)
        return Image.fromarray((rgb * 255).astype(np.uint8), "RGB")
    if bg.texture not in _TEXTURES:
        _TEXTURES[bg.texture] = _texture(bg.texture)
    tex = _TEXTURES[bg.texture]
    h, w = tex.shape[:2]
    side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = tex[y:y + side, x:x + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if crop.ndim == 2:  # grey texture: its brightness scales the tint
        crop = np.clip(crop[..., None] * tint[None, None, :] * 1.6, 0, 1)
    img = Image.fromarray((np.ascontiguousarray(crop) * 255).astype(np.uint8), "RGB")
    return img.resize((size_px, size_px), Image.Resampling.BILINEAR)


def colourise(img: Image.Image, colour: str) -> Image.Image:
    """The RGBA picture recoloured in one hue: its brightness mapped from black to `colour` (alpha kept),
    so calling it "a red cat" is true of every pixel."""
    from PIL import ImageOps

    rgb = COLOURS[colour]
    grey = ImageOps.autocontrast(img.convert("L"), cutoff=1)
    dark = tuple(int(c * 0.35) for c in rgb)
    light = tuple(min(255, int(c * 0.6 + 255 * 0.4)) for c in rgb)
    out = ImageOps.colorize(grey, black=dark, white=light, mid=rgb).convert("RGBA")
    out.putalpha(img.getchannel("A"))
    return out


def picture_loader(cache_dir: Path) -> Callable[[Picture], Image.Image]:
    """A memoising loader (each worker process keeps its own cache)."""
    cache: dict[str, Image.Image] = {}

    def load(p: Picture) -> Image.Image:
        if p.key not in cache:
            cache[p.key] = p.load(cache_dir)
        return cache[p.key]

    return load

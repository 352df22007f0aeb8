"""The captioner's image preprocessing, shared bit for bit by training, export and serving (no torch).

An image of any size and mode becomes RGB, squashed to the model's square side with Pillow's bilinear
filter, as float32 in [0, 1], channels first. The model normalises inside its graph.

    pixels = to_pixels(Image.open("cat.png"), 224)   # (3, 224, 224) float32
"""

from __future__ import annotations

import numpy as np
from PIL import Image

RESAMPLE = Image.Resampling.BILINEAR
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")  # image files the tools read from a folder


def to_pixels(image: Image.Image, size_px: int) -> np.ndarray:
    """(3, size_px, size_px) float32 RGB in [0, 1]."""
    rgb = image.convert("RGB").resize((size_px, size_px), RESAMPLE)
    return np.ascontiguousarray((np.asarray(rgb, dtype=np.float32) / 255.0).transpose(2, 0, 1))

"""Image checks the UI makes before calling the server: empty, too large, not an image.

    data = prepare_image("photo.jpg")     # the file's bytes, or ImageProblem with a readable message

Images travel as they were uploaded (the server decodes and resizes); formats the server does not read
(anything but JPEG, PNG, WebP: e.g. a BMP from a webcam) are re-encoded as PNG here.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

MAX_IMAGE_BYTES = 20 * 1024 * 1024  # the server's default limit
MAX_PIXELS = 50_000_000
SERVER_FORMATS = {"JPEG", "PNG", "WEBP"}


class ImageProblem(ValueError):
    """The image cannot usefully go to the server; the message says why in plain words."""


def prepare_image(path: str | Path) -> bytes:
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise ImageProblem(f"{path.name} is empty.")
    if size > MAX_IMAGE_BYTES:
        raise ImageProblem(f"{path.name} is {size / 2**20:.1f} MB; the limit is {MAX_IMAGE_BYTES / 2**20:.0f} MB.")
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ImageProblem(f"{path.name} is {image.width}x{image.height} pixels; the limit is "
                                   f"{MAX_PIXELS / 1e6:.0f} megapixels.")
            if image.format in SERVER_FORMATS:
                return data
            buf = io.BytesIO()
            image.convert("RGB").save(buf, format="PNG")
            return buf.getvalue()
    except (UnidentifiedImageError, OSError) as e:
        raise ImageProblem(f"{path.name} is not an image that can be read (JPEG, PNG or WebP expected).") from e

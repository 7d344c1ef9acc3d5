"""Image header checks against the size limits: one rule for training files and served requests.

Sizes are read from the file's header and checked before any pixel is decoded, so a small
file that would decode to gigabytes (a "decompression bomb") is refused for what it is.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from pipeline.config import Limits


def open_image(data: bytes, limits: Limits | None, formats: tuple[str, ...] | None = None) -> Image.Image:
    """The image in `data` with only its header read; raises ValueError saying what is wrong.

    `limits` None checks nothing but Pillow's own bomb guard (for the user's own local files).
    """
    if limits is not None and len(data) > limits.max_bytes:
        raise ValueError(f"{len(data)} bytes is over the limit of {limits.max_bytes} (max_bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ValueError(f"image is too large to decode ({err})") from None
    except Exception as err:
        if "too large" in str(err).lower():  # Pillow's guard on compressed text chunks
            raise ValueError(f"image is too large to decode ({err})") from None
        for magic, name in ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG")):
            if data.startswith(magic):
                raise ValueError(f"{name} data is truncated or corrupt (header unreadable)") from None
        raise ValueError(f"bytes are not a {' or '.join(formats)} image" if formats else "not a readable image file") from None
    if formats is not None and image.format not in formats:
        raise ValueError(f"image format {image.format} is not supported; send {' or '.join(formats)}")
    problem = limits.size_problem(*image.size) if limits is not None else None
    if problem:
        raise ValueError(problem)
    return image


def to_rgb(image: Image.Image) -> np.ndarray:
    """Decode an opened image to RGB uint8, EXIF orientation applied (as `cv2.imread` does)."""
    try:
        image.load()
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{image.format} data is truncated or corrupt ({err})") from None
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):  # 16-bit PNG: Pillow's convert("RGB") would clip it at 255
        gray = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))

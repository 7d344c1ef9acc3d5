import base64
import io
from dataclasses import replace

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.serving.pyfunc import BadInput, decode_batch, decode_image, encode_image
from tests.conftest import LIMITS, png_header


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_decodes_jpeg_png_rgba_gray_16bit_and_palette():
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(encode_image(rgb, ".png")), rgb)
    assert decode_image(encode_image(rgb, ".jpg")).shape == (20, 30, 3)
    rgba = np.dstack([rgb, np.full((20, 30), 128, np.uint8)])
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    np.testing.assert_array_equal(decode_image(b64(buf.tobytes())), rgb)
    deep = (rgb[..., 0].astype(np.uint16) * 257)
    ok, buf = cv2.imencode(".png", deep)
    np.testing.assert_array_equal(decode_image(b64(buf.tobytes()))[..., 1], rgb[..., 0])
    out = io.BytesIO()
    Image.fromarray(rgb).convert("P").save(out, "PNG")
    assert decode_image(b64(out.getvalue())).shape == (20, 30, 3)


def test_trailer_after_jpeg_end_is_accepted_but_truncation_is_not():
    jpeg = base64.b64decode(encode_image(np.full((40, 40, 3), 90, np.uint8), ".jpg"))
    assert decode_image(b64(jpeg + b"\x00" * 500 + b"camera trailer")).shape == (40, 40, 3)
    with pytest.raises(ValueError, match="JPEG data is truncated"):
        decode_image(b64(jpeg[: len(jpeg) // 2]))
    png = base64.b64decode(encode_image(np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)))
    with pytest.raises(ValueError, match="PNG data is truncated"):
        decode_image(b64(png[: len(png) // 2]))


def test_exif_orientation_is_applied():
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    Image.fromarray(np.zeros((10, 30, 3), np.uint8)).save(out, "JPEG", exif=exif)
    assert decode_image(b64(out.getvalue())).shape == (30, 10, 3)


def test_gif_and_limits():
    out = io.BytesIO()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(out, "GIF")
    with pytest.raises(ValueError, match="GIF is not supported"):
        decode_image(b64(out.getvalue()))
    with pytest.raises(ValueError, match="over the limit of 100"):
        decode_image(encode_image(np.zeros((50, 50, 3), np.uint8)), replace(LIMITS, max_bytes=100))


def test_a_decompression_bomb_is_called_too_large():
    with pytest.raises(ValueError, match="image is too large to decode"):
        decode_image(b64(png_header(40000, 40000)), LIMITS)


def batch(images) -> pd.DataFrame:
    return pd.DataFrame({"image": images})


def test_request_limits_are_checked_from_headers_before_any_decoding():
    small = encode_image(np.zeros((30, 40, 3), np.uint8))
    limits = replace(LIMITS, max_images=3, max_pixels=3 * 30 * 40)
    assert [im.shape for im in decode_batch(batch([small] * 3), limits)] == [(30, 40, 3)] * 3
    with pytest.raises(BadInput, match=r"4 images in one request is over the limit of 3 \(max_images\)"):
        decode_batch(batch([small] * 4), limits)
    with pytest.raises(BadInput, match=r"images hold 3601 pixels, over the limit of 3600 \(max_pixels\)"):
        decode_batch(batch([small] * 2 + [encode_image(np.zeros((1, 1201, 3), np.uint8))]), replace(limits, min_side=1))
    # Headers that declare 16 x 4096^2 pixels and hold none: refused by the total before a pixel is decoded
    with pytest.raises(BadInput, match="images hold 268435456 pixels"):
        decode_batch(batch([b64(png_header(4096, 4096))] * 16), LIMITS)

import base64
import io

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.serving import decode_image, encode_image


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
        decode_image(encode_image(np.zeros((50, 50, 3), np.uint8)), {"max_bytes": 100, "max_side": 4096, "min_side": 8})

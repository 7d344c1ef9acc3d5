"""The registered model: a pyfunc taking base64 JPEG/PNG bytes, returning masks and boxes.

Contract — input: DataFrame with column `image` (base64 JPEG or PNG). Output: one row per image
with `mask` (base64 single-channel PNG, 0/255, the image's own size), `boxes` (JSON list of
`[x1, y1, x2, y2, score]` in pixels) and `n_faces`. Params: `threshold`, `threshold_ratio`, `min_area`.

Bad input rejects the whole request (HTTP 400 from `mlflow models serve`) with one message
listing every bad image by index, so a client fixes them all in one go; no partial results.
"""

from __future__ import annotations

import base64
import binascii
import io
import json

import cv2
import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from pipeline.inference import predict_probs
from pipeline.masks import postprocess

DEFAULT_LIMITS = {"max_side": 4096, "max_bytes": 20 * 1024 * 1024, "min_side": 8}


class BadInput(MlflowException):
    """A client error: served as HTTP 400 with this message."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def encode_image(image: np.ndarray, ext: str = ".png") -> str:
    """Base64 of an RGB (or single-channel) uint8 image encoded as PNG/JPEG."""
    array = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buf = cv2.imencode(ext, array)
    if not ok:
        raise ValueError(f"could not encode image as {ext}")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def decode_image(value, limits: dict = DEFAULT_LIMITS) -> np.ndarray:
    """RGB uint8 image from base64 JPEG/PNG; raises ValueError saying what is wrong.

    The size is read from the header and checked before decoding (no decompression bombs);
    EXIF orientation is applied, as `cv2.imread` does for the client's overlays.
    """
    from PIL import Image, ImageOps

    if not isinstance(value, (str, bytes)) or len(value) == 0:
        raise ValueError(f"expected a non-empty base64 string, got {type(value).__name__}")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"not valid base64 ({err})") from None
    if len(data) > limits["max_bytes"]:
        raise ValueError(f"{len(data)} bytes is over the limit of {limits['max_bytes']}")
    try:
        image = Image.open(io.BytesIO(data))
    except Exception:
        for magic, name in ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG")):
            if data.startswith(magic):
                raise ValueError(f"{name} data is truncated or corrupt (header unreadable)") from None
        raise ValueError("bytes are not a JPEG or PNG image") from None
    width, height, kind = *image.size, image.format
    if kind not in ("JPEG", "PNG"):
        raise ValueError(f"image format {kind} is not supported; send JPEG or PNG")
    if max(width, height) > limits["max_side"]:
        raise ValueError(f"image {width}x{height} is larger than the limit {limits['max_side']}x{limits['max_side']}")
    if min(width, height) < limits["min_side"]:
        raise ValueError(f"image {width}x{height} is smaller than the minimum side of {limits['min_side']} pixels")
    try:
        image.load()
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{kind} data is truncated or corrupt ({err})") from None
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):  # 16-bit PNG: Pillow's convert("RGB") would clip it at 255
        gray = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def decode_batch(model_input, limits: dict) -> list[np.ndarray]:
    if not isinstance(model_input, pd.DataFrame) or "image" not in model_input.columns:
        cols = list(model_input.columns) if isinstance(model_input, pd.DataFrame) else type(model_input).__name__
        raise BadInput(f"input must have a column 'image' of base64 JPEG/PNG strings; got {cols}")
    if len(model_input) == 0:
        raise BadInput("empty batch: send at least one image")
    images, errors = [], []
    for i, value in enumerate(model_input["image"]):
        try:
            images.append(decode_image(value, limits))
        except ValueError as err:
            errors.append(f"image {i}: {err}")
    if errors:
        raise BadInput(f"{len(errors)} of {len(model_input)} images are invalid: " + "; ".join(errors))
    return images


def predict_images(model, images: list[np.ndarray], config: dict, threshold: float, min_area: int,
                   ratio: float = 0.0) -> pd.DataFrame:
    probs = predict_probs(model, images, config["tta_sizes"], flip=config["flip_tta"])
    rows = []
    for prob in probs:
        mask, boxes = postprocess(prob, threshold, min_area, config["split_faces"], ratio)
        rows.append({
            "mask": encode_image(mask * 255),
            "boxes": json.dumps([[int(b[0]), int(b[1]), int(b[2]), int(b[3]), round(float(b[4]), 4)] for b in boxes]),
            "n_faces": len(boxes),
        })
    return pd.DataFrame(rows, columns=["mask", "boxes", "n_faces"])


def _param(params: dict | None, name: str, default, kind: type):
    value = (params or {}).get(name, default)
    if value is None:
        return default
    try:
        if isinstance(value, bool) or (kind is int and float(value) != int(float(value))):
            raise ValueError
        value = kind(value)
    except (TypeError, ValueError):
        raise BadInput(f"param {name!r} must be a {kind.__name__}, got {value!r}") from None
    return value


class FaceSegmenter(mlflow.pyfunc.PythonModel):
    """Loads the Keras model once; per request only decode, predict and postprocess."""

    def load_context(self, context):
        from pipeline.model import load_model

        self.model = load_model(context.artifacts["keras_model"])
        with open(context.artifacts["config"]) as fh:
            config = json.load(fh)
        # Models registered before test-time augmentation have none of its keys: predict as they did.
        self.config = {"tta_sizes": [config["input_size"]], "flip_tta": False, "split_faces": False, "threshold_ratio": 0.0,
                       **config}
        self.limits = {**DEFAULT_LIMITS, **self.config.get("limits", {})}
        for size in self.config["tta_sizes"]:
            for batch in (1, 2):  # trace now, for any batch size, not during the first requests
                self.model.predict_on_batch(np.zeros((batch, size, size, 3), np.float32))

    def predict(self, context, model_input, params=None):
        threshold = _param(params, "threshold", self.config["threshold"], float)
        if not 0.0 <= threshold <= 1.0:
            raise BadInput(f"param 'threshold' must be between 0 and 1, got {threshold}")
        ratio = _param(params, "threshold_ratio", self.config["threshold_ratio"], float)
        if not 0.0 <= ratio <= 1.0:
            raise BadInput(f"param 'threshold_ratio' must be between 0 (off) and 1, got {ratio}")
        min_area = _param(params, "min_area", self.config["min_area"], int)
        if min_area < 0:
            raise BadInput(f"param 'min_area' must be >= 0, got {min_area}")
        images = decode_batch(model_input, self.limits)
        return predict_images(self.model, images, self.config, threshold, min_area, ratio)

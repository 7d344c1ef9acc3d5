"""The registered model: a pyfunc taking base64 JPEG/PNG bytes, returning masks and boxes.

Contract — input: DataFrame with column `image` (base64 JPEG or PNG). Output: one row per image
with `mask` (base64 single-channel PNG, 0/255, the image's own size), `boxes` (JSON list of
`[x1, y1, x2, y2, score]` in pixels), `n_faces`, `caveat` ("" for a real model; the synthetic
demo says what it is) and `faces` (JSON list, one object per face in the order of `boxes`:
`{"box": [x1, y1, x2, y2], "score": s, "label": name or null, "label_score": p or null}`; the
label is null for a model trained without mask-wearing labels). Params: `threshold`,
`threshold_ratio`, `min_area` (the mask's; a model with centres, `model.centres`, takes its boxes
from heatmap peaks at the evaluated `centre_threshold`).

Bad input rejects the whole request (HTTP 400 from `mlflow models serve`) with one message
listing every bad image by index, so a client fixes them all in one go; no partial results.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import replace

import cv2
import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from pipeline.config import ConfigError, Limits, ServingConfig
from pipeline.data.images import open_image, to_rgb
from pipeline.evaluation.evaluate import decode_faces
from pipeline.model.inference import predict_probs

SERVED_FORMATS = ("JPEG", "PNG")
OUTPUT_COLUMNS = ["mask", "boxes", "n_faces", "caveat", "faces"]


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


def decode_image(value, limits: Limits | None = None) -> np.ndarray:
    """RGB uint8 image from base64 JPEG/PNG; raises ValueError saying what is wrong."""
    return to_rgb(open_image(b64_bytes(value), limits, SERVED_FORMATS))


def b64_bytes(value) -> bytes:
    if not isinstance(value, (str, bytes)) or len(value) == 0:
        raise ValueError(f"expected a non-empty base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"not valid base64 ({err})") from None


def decode_batch(model_input, limits: Limits) -> list[np.ndarray]:
    """Decode a request's images, all or none.

    Count, sizes and the request's total pixels are checked from the headers before any image
    is decoded: memory per request is bounded by `limits`, however small the files are.
    """
    if not isinstance(model_input, pd.DataFrame) or "image" not in model_input.columns:
        cols = list(model_input.columns) if isinstance(model_input, pd.DataFrame) else type(model_input).__name__
        raise BadInput(f"input must have a column 'image' of base64 JPEG/PNG strings; got {cols}")
    if len(model_input) == 0:
        raise BadInput("empty batch: send at least one image")
    if len(model_input) > limits.max_images:
        raise BadInput(f"{len(model_input)} images in one request is over the limit of {limits.max_images} (max_images); "
                       f"send them in several requests")
    opened = _each(list(model_input["image"]), lambda v: open_image(b64_bytes(v), limits, SERVED_FORMATS))
    pixels = sum(im.size[0] * im.size[1] for im in opened)
    if pixels > limits.max_pixels:
        raise BadInput(f"the request's {len(opened)} images hold {pixels} pixels, over the limit of {limits.max_pixels} "
                       f"(max_pixels); send fewer or smaller images per request")
    return _each(opened, to_rgb)


def _each(values: list, fn) -> list:
    """`fn` of every value, or BadInput naming every index that failed (no partial results)."""
    out, errors = [], []
    for i, value in enumerate(values):
        try:
            out.append(fn(value))
        except ValueError as err:
            errors.append(f"image {i}: {err}")
    if errors:
        raise BadInput(f"{len(errors)} of {len(values)} images are invalid: " + "; ".join(errors))
    return out


def predict_images(model, images: list[np.ndarray], config: ServingConfig, threshold: float | None = None,
                   min_area: int | None = None, ratio: float | None = None) -> pd.DataFrame:
    """The served output for decoded images; thresholds default to the evaluated ones."""
    config = replace(config, threshold=config.threshold if threshold is None else threshold,
                     min_area=config.min_area if min_area is None else min_area,
                     threshold_ratio=config.threshold_ratio if ratio is None else ratio)
    rows, decoding = [], config.decoding
    for prob in predict_probs(model, images, config.tta_sizes, flip=config.flip_tta):
        mask, found, labels = decode_faces(prob, decoding)
        boxes = [[int(b[0]), int(b[1]), int(b[2]), int(b[3]), round(float(b[4]), 4)] for b in found]
        rows.append({
            "mask": encode_image(mask * 255),
            "boxes": json.dumps(boxes),
            "n_faces": len(boxes),
            "caveat": config.caveat,
            "faces": json.dumps([{"box": b[:4], "score": b[4], "label": label,
                                  "label_score": None if p is None else round(p, 4)} for b, (label, p) in zip(boxes, labels)]),
        })
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


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


def guard_scoring_server() -> None:
    """Answer 400, not 500, to two requests `mlflow models serve` does not check itself.

    The server parses the body before the model sees it: a POST without Content-Type fails on
    `None.split`, and JSON nested thousands of levels deep exhausts the parser's recursion, both
    as HTTP 500. It looks `invocations` up at every request, so wrapping it here (in the server
    process, as the model loads) turns both into clear 400s and changes nothing else.
    """
    from mlflow.pyfunc import scoring_server

    inner = scoring_server.invocations
    if getattr(inner, "guarded", False):
        return

    def invocations(data, content_type, *args, **kwargs):
        if not content_type:
            raise BadInput("no Content-Type header: send JSON with 'Content-Type: application/json'")
        try:
            return inner(data, content_type, *args, **kwargs)
        except RecursionError:
            raise BadInput("the JSON body is nested too deeply to parse") from None

    invocations.guarded = True
    scoring_server.invocations = invocations


class FaceSegmenter(mlflow.pyfunc.PythonModel):
    """Loads the model once (ONNX Runtime or Keras, as `config.engine` says); per request only decode,
    predict and postprocess."""

    def load_context(self, context):
        self.artifacts = dict(context.artifacts)  # file paths: the Keras and the ONNX model, the config
        with open(context.artifacts["config"]) as fh:
            values = json.load(fh)
        try:
            self.config = ServingConfig.from_dict(values)
        except ConfigError as err:  # in-process, the installed code reads the model's config, not the code it ships
            raise ConfigError(f"{err}. This model was exported by another version of the pipeline: serve it with "
                              f"`mlflow models serve` (it runs the code it ships) or export it again "
                              f"(`dvc repro --force export` where it was trained)") from None
        if self.config.engine == "onnx":
            from pipeline.serving.onnx_model import OnnxModel

            self.model = OnnxModel(context.artifacts["onnx_model"], self.config.threads)
        else:
            from pipeline.model.network import load_model

            self.model = load_model(context.artifacts["keras_model"])
        guard_scoring_server()
        self.warm_up()

    @classmethod
    def from_onnx(cls, path: str) -> FaceSegmenter:
        """The served model from an exported ONNX file alone (its settings are inside): no MLflow, no TensorFlow."""
        from pipeline.serving.onnx_model import OnnxModel

        self = cls()
        self.model = OnnxModel(path)
        self.config = self.model.serving_config(path)
        self.warm_up()
        return self

    def warm_up(self) -> None:
        for size in self.config.tta_sizes:
            for batch in (1, 2):  # trace now, for any batch size, not during the first requests
                self.model.predict_on_batch(np.zeros((batch, size, size, 3), np.float32))

    def predict(self, context, model_input, params=None):
        threshold = _param(params, "threshold", self.config.threshold, float)
        if not 0.0 <= threshold <= 1.0:
            raise BadInput(f"param 'threshold' must be between 0 and 1, got {threshold}")
        ratio = _param(params, "threshold_ratio", self.config.threshold_ratio, float)
        if not 0.0 <= ratio <= 1.0:
            raise BadInput(f"param 'threshold_ratio' must be between 0 (off) and 1, got {ratio}")
        min_area = _param(params, "min_area", self.config.min_area, int)
        if min_area < 0:
            raise BadInput(f"param 'min_area' must be >= 0, got {min_area}")
        images = decode_batch(model_input, self.config.limits)
        return predict_images(self.model, images, self.config, threshold, min_area, ratio)

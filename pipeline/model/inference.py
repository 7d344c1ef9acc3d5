"""Probability maps at each image's own resolution; shared by evaluation and serving."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from pipeline.data.dataset import to_model_input


def tta_sizes(input_size: int, scales: Sequence[float]) -> list[int]:
    """Model input sides for test-time scales of `input_size`, each a multiple of 32."""
    if not scales or min(scales) <= 0:
        raise ValueError(f"evaluate.tta_scales must be a non-empty list of positive factors, got {scales}")
    return [max(32, int(round(input_size * float(s) / 32)) * 32) for s in scales]


def predict_probs(model, images: list[np.ndarray], sizes: Sequence[int], batch_size: int = 8,
                  flip: bool = False) -> list[np.ndarray]:
    """Resize to each model input side in `sizes`, predict, resize back to the image's size, average.

    Several sides and `flip` (the mirrored image too) are test-time augmentation: small faces
    are found more often at a larger side, and averaging smooths the map's boundaries.
    Maps are H x W (face probability), or H x W x (1 + classes) for a model that labels faces.
    """
    out: list = [0.0] * len(images)
    n = len(sizes) * (2 if flip else 1)
    for size in sizes:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            x = np.stack([to_model_input(im, size) for im in chunk]).astype(np.float32)
            probs = np.asarray(model.predict_on_batch(x))
            if flip:
                probs = probs + np.asarray(model.predict_on_batch(x[:, :, ::-1]))[:, :, ::-1]
            for i, (im, p) in enumerate(zip(chunk, probs)):
                resized = cv2.resize(p, (im.shape[1], im.shape[0]), interpolation=cv2.INTER_LINEAR)
                out[start + i] = out[start + i] + resized.reshape(im.shape[0], im.shape[1], -1) / n
    return [o[..., 0] if o.shape[-1] == 1 else o for o in out]

"""Probability maps at each image's own resolution; shared by evaluation and serving."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.data import to_model_input


def predict_probs(model, images: list[np.ndarray], input_size: int, batch_size: int = 8, flip: bool = False) -> list[np.ndarray]:
    """Resize to the model input, predict, resize each map back to its image's size.

    `flip` averages with the prediction on the mirrored image (test-time augmentation).
    """
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        x = np.stack([to_model_input(im, input_size) for im in chunk]).astype(np.float32)
        probs = np.asarray(model.predict_on_batch(x))[..., 0]
        if flip:
            probs = 0.5 * (probs + np.asarray(model.predict_on_batch(x[:, :, ::-1]))[..., 0][:, :, ::-1])
        for im, p in zip(chunk, probs):
            out.append(cv2.resize(p, (im.shape[1], im.shape[0]), interpolation=cv2.INTER_LINEAR))
    return out

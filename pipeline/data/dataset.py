"""Model-input preparation and the tf.data training pipeline with augmentation."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.config import AugmentConfig
from pipeline.data.formats import Sample
from pipeline.data.masks import boxes_to_mask, face_weight_map, scale_boxes

NO_AUGMENT = AugmentConfig(flip=False, zoom=(1.0, 1.0), brightness=0.0, contrast=0.0)


def to_model_input(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB uint8 image to the model's square input; the one resize used everywhere."""
    interp = cv2.INTER_AREA if min(image.shape[:2]) >= size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


FACE_WEIGHT_POWER = {"none": None, "balanced": 1.0, "sqrt": 0.5}


def to_arrays(samples: list[Sample], size: int, classes: tuple[str, ...] = (), core_scale: float = 1.0,
              face_weights: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x s x s x 3, targets float32 N x s x s x channels).

    Channel 0 is the face mask; with `classes`, channel 1 + k covers the faces of class k (faces
    without a class are in channel 0 only). Targets are resized by area, so a face smaller than a
    model pixel remains as a fractional target instead of vanishing. With `core_scale` < 1 the
    targets are the boxes shrunk about their centres: neighbours in a crowd no longer touch.
    With `face_weights` "balanced" or "sqrt" a last channel holds each pixel's loss weight
    (`face_weight_map` with power 1 or 1/2: every face weighs the same, or the square root of it).
    """
    power = FACE_WEIGHT_POWER[face_weights]
    channels = 1 + len(classes) + (power is not None)
    x = np.stack([to_model_input(s.image, size) for s in samples]) if samples else np.zeros((0, size, size, 3), np.uint8)
    y = []
    for s in samples:
        cores = scale_boxes(s.boxes, core_scale)
        planes = [_resized(boxes_to_mask(cores, s.height, s.width), size)]
        planes += [_resized(boxes_to_mask(cores[[label == c for label in s.labels]], s.height, s.width), size) for c in classes]
        if power is not None:
            planes.append(_resized(face_weight_map(cores, s.height, s.width, size, power), size))
        y.append(np.stack(planes, axis=-1))
    return x, np.stack(y) if y else np.zeros((0, size, size, channels), np.float32)


def _resized(plane: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(plane.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class Examples:
    """A split as the trainer reads it: `load(index)` gives (image uint8 s x s x 3, target float32 s x s x c)."""

    load: Callable
    n: int
    size: int


def examples(samples: Sequence[Sample], size: int, classes: tuple[str, ...] = (), stream: bool = False,
             core_scale: float = 1.0, face_weights: str = "none") -> Examples:
    """The split's model inputs and targets: built once and held in memory, or, with `stream`, built from
    one sample per call (a `load_samples(..., lazy=True)` split then reads one image file per call, so
    memory stays flat however large the split; every epoch decodes and resizes again). Both give the
    same examples for the same index."""
    import tensorflow as tf

    channels = 1 + len(classes) + (FACE_WEIGHT_POWER[face_weights] is not None)
    if not stream:
        x, y = (tf.constant(a) for a in to_arrays(samples, size, classes, core_scale, face_weights))
        return Examples(lambda i: (tf.gather(x, i), tf.gather(y, i)), len(samples), size)

    def prepare(i):
        x, y = to_arrays([samples[int(i)]], size, classes, core_scale, face_weights)
        return x[0], y[0]

    def load(i):
        image, target = tf.numpy_function(prepare, [i], (tf.uint8, tf.float32), stateful=False)
        return tf.ensure_shape(image, (size, size, 3)), tf.ensure_shape(target, (size, size, channels))

    return Examples(load, len(samples), size)


def make_dataset(data: Examples, batch_size: int, augment: AugmentConfig | None, seed: int, crop_size: int | None = None):
    """Training dataset: repeated, shuffled, augmented, batched, prefetched; deterministic per seed.

    Indices are shuffled, then loaded in parallel: the shuffle buffer holds numbers, not images.
    With `crop_size`, each example is a random zoomed crop of that side (cheaper steps than whole
    images; the model is fully convolutional and predicts whole images). Returns (dataset,
    steps_per_epoch). Augmentations use stateless ops with seeds drawn from
    `tf.data.Dataset.random(seed)`, so two runs with the same seed see the same batches.
    """
    import tensorflow as tf

    out_size = int(crop_size or data.size)
    ds = tf.data.Dataset.range(data.n).repeat().shuffle(max(data.n, 1), seed=seed)
    ds = ds.map(data.load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds)).map(
        lambda xy, s: _augment(xy[0], xy[1], s, augment or NO_AUGMENT, out_size), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.batch(batch_size, drop_remainder=False).prefetch(tf.data.AUTOTUNE), max(1, math.ceil(data.n / batch_size))


def validation_dataset(data: Examples, batch_size: int):
    """The split in index order as float images, batched: what validation predicts."""
    import tensorflow as tf

    ds = tf.data.Dataset.range(data.n).map(data.load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.map(lambda x, y: (tf.cast(x, tf.float32), y)).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _augment(image, mask, seed, cfg: AugmentConfig, out_size: int):
    """Flip, random zoom-and-crop to `out_size` (zoom > 1 enlarges small faces), brightness, contrast."""
    import tensorflow as tf

    height, width = tf.shape(image)[0], tf.shape(image)[1]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 6)
    # The draws of stateless_random_flip_left_right, then stateless_random_crop of the flipped image,
    # but the window is cut before the float copy and the flip: the same crops at a third to half the cost.
    flip = tf.random.stateless_uniform([], seeds[0], 0, 1.0) < 0.5 if cfg.flip else tf.constant(False)
    zoom_min, zoom_max = cfg.zoom
    zoom = tf.random.stateless_uniform([], seeds[1], float(zoom_min), float(zoom_max) + 1e-6)
    crop = tf.cast(tf.clip_by_value(tf.round(out_size / zoom), 8.0, tf.cast(tf.minimum(height, width), tf.float32)), tf.int32)
    limit = tf.stack([height - crop + 1, width - crop + 1, 1])
    top, left, _ = tf.unstack(tf.random.stateless_uniform([3], seeds[2], maxval=tf.int32.max, dtype=tf.int32) % limit)
    left = tf.where(flip, width - left - crop, left)  # the same window, counted from the mirrored side
    window = (slice(top, top + crop), slice(left, left + crop))
    both = tf.concat([tf.cast(image[window], tf.float32), mask[window]], axis=-1)
    both = tf.cond(flip, lambda: tf.reverse(both, [1]), lambda: both)
    both = tf.image.resize(both, [out_size, out_size], method="bilinear")
    image, mask = both[..., :3], both[..., 3:]
    if cfg.brightness:
        image = tf.image.stateless_random_brightness(image, 255.0 * cfg.brightness, seeds[3])
    if cfg.contrast:
        c = cfg.contrast
        image = tf.image.stateless_random_contrast(image, 1 - c, 1 + c, seeds[4])
    return tf.clip_by_value(image, 0, 255), mask  # bilinear: the targets and weights stay within their range

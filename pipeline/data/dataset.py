"""Model-input preparation and the tf.data training pipeline with augmentation."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.config import AugmentConfig
from pipeline.data.formats import Sample
from pipeline.data.masks import Channels, box_slices, boxes_to_mask, face_weight_map, scale_boxes

NO_AUGMENT = AugmentConfig(flip=False, zoom=(1.0, 1.0), brightness=0.0, contrast=0.0)


def to_model_input(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB uint8 image to the model's square input; the one resize used everywhere."""
    interp = cv2.INTER_AREA if min(image.shape[:2]) >= size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


FACE_WEIGHT_POWER = {"none": None, "balanced": 1.0, "sqrt": 0.5}


def to_arrays(samples: list[Sample], size: int, classes: tuple[str, ...] = (), core_scale: float = 1.0,
              face_weights: str = "none", centres: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x s x s x 3, targets float32 N x s x s x channels).

    Channel 0 is the face mask; with `classes`, channel 1 + k covers the faces of class k (faces
    without a class are in channel 0 only). Targets are resized by area, so a face smaller than a
    model pixel remains as a fractional target instead of vanishing. With `core_scale` < 1 the
    targets are the boxes shrunk about their centres: neighbours in a crowd no longer touch.
    With `centres`, three channels follow (`centre_targets`): the centre heatmap and each face's log
    width and height. With `face_weights` "balanced" or "sqrt" a last channel holds each pixel's loss
    weight (`face_weight_map` with power 1 or 1/2: every face weighs the same, or the square root of it).
    """
    power = FACE_WEIGHT_POWER[face_weights]
    channels = target_channels(len(classes), centres, face_weights).total
    x = np.empty((len(samples), size, size, 3), np.uint8)  # filled in place: one copy of the split, not two
    y = np.empty((len(samples), size, size, channels), np.float32)
    for k, s in enumerate(samples):
        x[k] = to_model_input(s.image, size)
        cores = scale_boxes(s.boxes, core_scale)
        planes = [_resized(boxes_to_mask(cores, s.height, s.width), size)]
        planes += [_resized(boxes_to_mask(cores[[label == c for label in s.labels]], s.height, s.width), size) for c in classes]
        if centres:
            planes += list(centre_targets(s.boxes, cores, s.height, s.width, size))
        if power is not None:
            planes.append(_resized(face_weight_map(cores, s.height, s.width, size, power), size))
        y[k] = np.stack(planes, axis=-1)
    return x, y


def target_channels(n_classes: int, centres: bool = False, face_weights: str = "none") -> Channels:
    """The layout of the targets `to_arrays` gives."""
    return Channels(n_classes, centres, FACE_WEIGHT_POWER[face_weights] is not None)


def centre_targets(boxes: np.ndarray, cores: np.ndarray, height: int, width: int, size: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CenterNet's targets on the `size` x `size` model input: a heatmap holding a Gaussian about the pixel
    that holds each face's centre (1 there, sigma a twelfth of its side in each direction, at least 0.6
    pixel; the maximum where two meet), and over each face's core the log of its box's width and height as
    fractions of the image's, that is of the model's input side (a smaller face keeps its own where cores
    overlap; 0 outside faces, where no size is learned). `centre_boxes` reads a peak pixel's centre as the
    face's: half a pixel at most off.
    """
    heat, log_w, log_h = (np.zeros((size, size), np.float32) for _ in range(3))
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    sx, sy = size / width, size / height
    core_slices = box_slices(np.asarray(cores, np.float64).reshape(-1, 4) * [sx, sy, sx, sy], size, size)
    for k in np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])):  # largest first
        x1, y1, x2, y2 = boxes[k]
        w, h = (x2 - x1) * sx, (y2 - y1) * sy
        cx, cy = min(np.floor((x1 + x2) / 2 * sx), size - 1) + 0.5, min(np.floor((y1 + y2) / 2 * sy), size - 1) + 0.5
        (cols, gx), (rows, gy) = _gaussian(cx, max(w / 12, 0.6), size), _gaussian(cy, max(h / 12, 0.6), size)
        np.maximum(heat[rows, cols], np.outer(gy, gx), out=heat[rows, cols])
        rows, cols = core_slices[k]
        log_w[rows, cols] = np.log(max(x2 - x1, 1.0) / width)
        log_h[rows, cols] = np.log(max(y2 - y1, 1.0) / height)
    return heat, log_w, log_h


def _gaussian(centre: float, sigma: float, size: int) -> tuple[slice, np.ndarray]:
    """The pixels within 4 sigma of `centre` on a line of `size` and the Gaussian's values at their centres."""
    lo, hi = max(int(centre - 4 * sigma), 0), min(int(centre + 4 * sigma) + 1, size)
    return slice(lo, hi), np.exp(-((np.arange(lo, hi) + 0.5 - centre) ** 2) / (2 * sigma**2)).astype(np.float32)


def _resized(plane: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(plane.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class Examples:
    """A split as the trainer reads it: `load(index)` gives (image uint8 s x s x 3, target float32 s x s x c)."""

    load: Callable
    n: int
    size: int
    log_sizes: tuple[int, ...] = ()  # the target channels holding log sizes as fractions of the image (`centre_targets`)


def examples(samples: Sequence[Sample], size: int, classes: tuple[str, ...] = (), stream: bool = False,
             core_scale: float = 1.0, face_weights: str = "none", centres: bool = False) -> Examples:
    """The split's model inputs and targets: built once and held in memory, or, with `stream`, built from
    one sample per call (a `load_samples(..., lazy=True)` split then reads one image file per call, so
    memory stays flat however large the split; every epoch decodes and resizes again). Both give the
    same examples for the same index. A sample listed several times (a source's `repeat`) is held once,
    in numpy: TensorFlow copies one example per call, never the whole split (a tensor would double it)."""
    import tensorflow as tf

    layout = target_channels(len(classes), centres, face_weights)
    channels = layout.total
    log_sizes = tuple(range(channels)[layout.log_sizes]) if centres else ()
    if stream:
        def prepare(i):
            x, y = to_arrays([samples[int(i)]], size, classes, core_scale, face_weights, centres)
            return x[0], y[0]
    else:
        held = {id(s): s for s in samples}  # one copy of each distinct sample, in first-seen order
        row = {key: k for k, key in enumerate(held)}
        x, y = to_arrays(list(held.values()), size, classes, core_scale, face_weights, centres)
        rows = np.array([row[id(s)] for s in samples], np.int64)

        def prepare(i):
            return x[rows[i]], y[rows[i]]

    def load(i):
        image, target = tf.numpy_function(prepare, [i], (tf.uint8, tf.float32), stateful=False)
        return tf.ensure_shape(image, (size, size, 3)), tf.ensure_shape(target, (size, size, channels))

    return Examples(load, len(samples), size, log_sizes)


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
        lambda xy, s: _augment(xy[0], xy[1], s, augment or NO_AUGMENT, out_size, data.log_sizes),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.batch(batch_size, drop_remainder=False).prefetch(tf.data.AUTOTUNE), max(1, math.ceil(data.n / batch_size))


def validation_dataset(data: Examples, batch_size: int):
    """The split in index order as float images, batched: what validation predicts."""
    import tensorflow as tf

    ds = tf.data.Dataset.range(data.n).map(data.load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.map(lambda x, y: (tf.cast(x, tf.float32), y)).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _augment(image, mask, seed, cfg: AugmentConfig, out_size: int, log_sizes: tuple[int, ...] = ()):
    """Flip, random zoom-and-crop to `out_size` (zoom > 1 enlarges small faces), brightness, contrast.

    The `log_sizes` target channels are resized by nearest neighbour (a face's size, never a blend with
    its neighbour's) and shifted by log(out_size / crop), the zoom: they are log sizes in pixels of the
    tensor the model sees over the model's input side, so a face of n pixels has one target whether the
    model sees a crop or (when served) the whole image, where they are fractions of the image.
    """
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
    resized = tf.image.resize(both, [out_size, out_size], method="bilinear")
    image, mask = resized[..., :3], resized[..., 3:]
    if log_sizes:
        nearest = tf.image.resize(both, [out_size, out_size], method="nearest")[..., 3:]
        shift = tf.math.log(float(out_size) / tf.cast(crop, tf.float32))
        channel = tf.range(tf.shape(mask)[-1])
        is_size = tf.reduce_any(channel[:, None] == tf.constant(log_sizes, tf.int32)[None, :], axis=1)
        mask = tf.where(is_size, nearest + shift, mask)
    if cfg.brightness:
        image = tf.image.stateless_random_brightness(image, 255.0 * cfg.brightness, seeds[3])
    if cfg.contrast:
        c = cfg.contrast
        image = tf.image.stateless_random_contrast(image, 1 - c, 1 + c, seeds[4])
    return tf.clip_by_value(image, 0, 255), mask  # bilinear: the targets and weights stay within their range

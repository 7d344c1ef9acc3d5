"""Losses and training metrics for mask segmentation (Keras 3, backend-agnostic ops)."""

from __future__ import annotations

import math

import keras
from keras import ops

from pipeline.data.masks import Channels


def _per_image(y_true, y_pred, smooth: float, weight=1.0):
    axes = tuple(range(1, len(y_pred.shape)))
    y_true = ops.cast(y_true, y_pred.dtype)
    inter = ops.sum(weight * y_true * y_pred, axis=axes)
    total = ops.sum(weight * y_true, axis=axes) + ops.sum(weight * y_pred, axis=axes)
    return (2.0 * inter + smooth) / (total + smooth)


def _bce(y_true, y_pred, weight=1.0):
    """Binary cross-entropy per image: the mean over pixels of each pixel's (weighted) loss."""
    return ops.mean(ops.expand_dims(keras.losses.binary_crossentropy(y_true, y_pred), -1) * weight, axis=(1, 2, 3))


# Each face loss takes an optional per-pixel weight map (`FaceAndClassLoss` with `face_weights`).
@keras.saving.register_keras_serializable(package="facemask")
def dice_loss(y_true, y_pred, weight=1.0):
    """1 - soft dice, per image then averaged: small-face images weigh as much as crowded ones."""
    return 1.0 - _per_image(y_true, y_pred, smooth=1.0, weight=weight)


@keras.saving.register_keras_serializable(package="facemask")
def bce_dice_loss(y_true, y_pred, weight=1.0):
    return _bce(y_true, y_pred, weight) + dice_loss(y_true, y_pred, weight)


@keras.saving.register_keras_serializable(package="facemask")
def focal_dice_loss(y_true, y_pred, weight=1.0):
    """Focal BCE (gamma 2) + dice: down-weights the easy background that is ~95% of pixels."""
    y_true = ops.cast(y_true, y_pred.dtype)
    p = ops.clip(y_pred, 1e-6, 1 - 1e-6)
    pt = y_true * p + (1 - y_true) * (1 - p)
    focal = -ops.mean(weight * ops.square(1 - pt) * ops.log(pt), axis=(1, 2, 3))
    return focal + dice_loss(y_true, y_pred, weight)


@keras.saving.register_keras_serializable(package="facemask")
def bce_logdice_loss(y_true, y_pred, weight=1.0):
    """BCE - log(dice): the course notebooks' loss, kept for the baseline preset."""
    return _bce(y_true, y_pred, weight) - ops.log(_per_image(y_true, y_pred, smooth=1.0, weight=weight))


LOSSES = {"dice": dice_loss, "bce_dice": bce_dice_loss, "focal_dice": focal_dice_loss, "bce_logdice": bce_logdice_loss}


@keras.saving.register_keras_serializable(package="facemask")
def dice(y_true, y_pred):
    """Hard dice at 0.5 per image of the face channel: the quantity early stopping watches (as val_dice)."""
    y_true, y_pred = y_true[..., :1], y_pred[..., :1]
    return _per_image(ops.cast(y_true > 0.5, "float32"), ops.cast(y_pred > 0.5, "float32"), smooth=1e-6)


@keras.saving.register_keras_serializable(package="facemask")
class FaceAndClassLoss(keras.losses.Loss):
    """The face loss on channel 0, plus cross-entropy of the class channels on the pixels of faces
    whose class is known, weighted per class against the imbalance (faces from sources without
    labels teach face finding only: their pixels carry no class target).

    With `face_weights` the target's last channel is a per-pixel weight (`data.dataset.to_arrays`)
    that multiplies both terms: every face counts alike for finding and for labelling. With `centres`
    (`model.centres`) the three channels after the classes are CenterNet's: `centre_loss` adds to it.

    With `background` > 0 the class channels also learn on the pixels off faces, towards equal
    probabilities (the KL divergence from uniform, that weight times its mean there): a found box
    that is no face then gets a low label score, which ranks it down in every class's AP.
    """

    def __init__(self, face_loss: str = "bce_dice", class_weights=(), face_weights: bool = False,
                 centres: bool = False, background: float = 0.0, name: str = "face_and_class", **kwargs):
        super().__init__(name=name, **kwargs)
        self.face_loss, self.class_weights = face_loss, [float(w) for w in class_weights]
        self.face_weights, self.centres, self.background = bool(face_weights), bool(centres), float(background)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        pixel = y_true[..., -1:] if self.face_weights else ops.ones_like(y_true[..., :1])
        loss = get_loss(self.face_loss)(y_true[..., :1], y_pred[..., :1], pixel)
        ch = Channels(len(self.class_weights), self.centres, self.face_weights)
        if self.centres:
            loss = loss + centre_loss(y_true[..., :1], y_true[..., ch.centre], y_pred[..., ch.centre])
        if not ch.n_classes:
            return loss
        target = y_true[..., ch.classes]
        weight = ops.sum(target * ops.convert_to_tensor(self.class_weights, y_pred.dtype), axis=-1) * pixel[..., 0]
        log_p = ops.log(ops.clip(y_pred[..., ch.classes], 1e-7, 1.0))
        entropy = -ops.sum(target * log_p, axis=-1)
        labelled = ops.sum(target * pixel, axis=(1, 2, 3))
        loss = loss + ops.sum(weight * entropy, axis=(1, 2)) / (labelled + 1e-6)
        if not self.background:
            return loss
        off = (1.0 - y_true[..., 0]) * pixel[..., 0]
        from_uniform = -ops.mean(log_p, axis=-1) - math.log(ch.n_classes)
        return loss + self.background * ops.sum(off * from_uniform, axis=(1, 2)) / (ops.sum(off, axis=(1, 2)) + 1e-6)

    def get_config(self):
        return {**super().get_config(), "face_loss": self.face_loss, "class_weights": self.class_weights,
                "face_weights": self.face_weights, "centres": self.centres, "background": self.background}


def centre_loss(face, y_true, y_pred):
    """Per image: the quality focal loss of the centre heatmap (GFL's soft-target focal loss: the Gaussian
    targets are never exactly 1 after resizing, which CenterNet's own focal loss needs), summed and divided
    by the heatmap's mass, plus the mean L1 error of the log width and height over the face cores. (Divided
    by the number of faces instead, as CenterNet, it outweighed the face loss: test dice 0.45 against 0.69.)"""
    heat, p = y_true[..., 0], ops.clip(y_pred[..., 0], 1e-6, 1 - 1e-6)
    focal = ops.square(heat - p) * -(heat * ops.log(p) + (1 - heat) * ops.log(1 - p))
    heat_loss = ops.sum(focal, axis=(1, 2)) / (ops.sum(heat, axis=(1, 2)) + 1.0)
    inside = ops.cast(face[..., 0] >= 0.5, y_pred.dtype)
    error = ops.sum(ops.abs(y_true[..., 1:] - y_pred[..., 1:]), axis=-1)
    return heat_loss + ops.sum(inside * error, axis=(1, 2)) / (ops.sum(inside, axis=(1, 2)) + 1e-6)


def get_loss(name: str):
    if name not in LOSSES:
        raise ValueError(f"train.loss: unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]

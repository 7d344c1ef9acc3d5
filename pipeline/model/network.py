"""MobileNet encoder (ImageNet transfer learning) + U-Net decoder, built the Keras way."""

from __future__ import annotations

import warnings
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

# name -> (constructor, skip layers from 1/2 to 1/16 resolution, bottleneck at 1/32)
ENCODERS = {
    "mobilenet": (
        keras.applications.MobileNet,
        ["conv_pw_1_relu", "conv_pw_3_relu", "conv_pw_5_relu", "conv_pw_11_relu"],
        "conv_pw_13_relu",
    ),
    "mobilenet_v2": (
        keras.applications.MobileNetV2,
        ["block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu"],
        "out_relu",
    ),
}


class WeightsError(RuntimeError):
    """Pretrained encoder weights could not be loaded; the message says how to provide them."""


def build_encoder(backbone: str, alpha: float, weights: str | None) -> keras.Model:
    """The encoder as a sub-model with outputs [skip_1/2, ..., skip_1/16, bottleneck_1/32].

    `weights`: 'imagenet' (Keras cache/download), a path to a weights file, or None/'none'.
    Failure to load is an error, never a silent fallback to random weights.
    """
    if backbone not in ENCODERS:
        raise ValueError(f"model.backbone: unknown {backbone!r}; choose one of {sorted(ENCODERS)}")
    constructor, skips, bottom = ENCODERS[backbone]
    source = None if weights in (None, "none", "None", "") else str(weights)
    if source not in (None, "imagenet") and not Path(source).is_file():
        raise WeightsError(f"model.weights: file {source} does not exist; give the path of a Keras {backbone} "
                           f"alpha={alpha} no-top .h5 weights file, 'imagenet' or 'none'")
    try:
        with warnings.catch_warnings():  # "input shape undefined: loading the 224 weights" is what we want
            warnings.simplefilter("ignore", UserWarning)
            base = constructor(input_shape=(None, None, 3), alpha=alpha, include_top=False, weights=source)
    except Exception as err:  # download errors, wrong file, alpha/shape mismatch
        from keras.src.backend.config import keras_home  # $KERAS_HOME as Keras read it at import

        raise WeightsError(
            f"could not load {backbone} alpha={alpha} encoder weights from {source!r}: {err}\n"
            f"Provide them by (a) setting model.weights to the path of the no-top .h5 file "
            f"(e.g. ../shared/weights/mobilenet_2_5_224_tf_no_top.h5 for mobilenet alpha 0.25), "
            f"(b) copying that file into {Path(keras_home()) / 'models'} so weights: imagenet finds it offline, "
            f"or (c) allowing network access for the Keras download. "
            f"weights: none trains from random weights (only if you mean it)."
        ) from err
    outputs = [base.get_layer(name).output for name in [*skips, bottom]]
    return keras.Model(base.input, outputs, name="encoder")


@keras.saving.register_keras_serializable(package="facemask")
class BilinearUpsample2x(layers.Layer):
    """Bilinear x2 upsampling that works on inputs of any size, on any backend.

    A fixed 4x4 transposed-convolution kernel per channel equals half-pixel bilinear resizing;
    Keras' UpSampling2D(interpolation='bilinear') cannot take unknown spatial sizes. Used on the
    one-channel logits, where a dense per-channel kernel is cheap.
    """

    def build(self, input_shape):
        channels = int(input_shape[-1])
        k = np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25])
        kernel = np.zeros((4, 4, channels, channels), np.float32)
        for c in range(channels):
            kernel[:, :, c, c] = k
        self.kernel = self.add_weight(shape=kernel.shape, initializer=keras.initializers.Constant(kernel),
                                      trainable=False, name="kernel")

    def call(self, x):
        h, w = ops.shape(x)[1], ops.shape(x)[2]
        padded = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="symmetric")  # edge pixels, as resize does
        out = ops.conv_transpose(padded, self.kernel, strides=2, padding="same")
        return out[:, 2 : 2 + 2 * h, 2 : 2 + 2 * w, :]

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        return (n, None if h is None else 2 * h, None if w is None else 2 * w, c)


def _conv_block(x, filters: int, name: str):
    for i in (1, 2):
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_sepconv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def build_unet(
    backbone: str = "mobilenet",
    alpha: float = 0.25,
    weights: str | None = "imagenet",
    decoder: str = "conv",
    decoder_filters: tuple[int, ...] = (64, 48, 32, 24),
    bn_momentum: float = 0.99,
    name: str | None = None,
    n_classes: int = 0,
    centres: bool = False,
) -> keras.Model:
    """U-Net: RGB 0..255 image (sides multiples of 32) -> face probability per pixel, same size;
    with `n_classes`, followed by that many mask-wearing class probabilities (softmax) per pixel:
    one pass finds the faces and says what they wear. With `centres`, three more channels follow
    (CenterNet's head): a heatmap that peaks at each face's centre, and the log of the face's width
    and height as fractions of the image's, so touching faces get a box each.

    Fully convolutional: it trains on crops and predicts on whole images at another size.

    Normalisation to MobileNet's [-1, 1] is inside the model, so training and serving cannot
    disagree on it. `decoder='conv'` puts two separable conv + BN + ReLU blocks after each skip
    concatenation; `decoder='bare'` is the course recipe (upsample + concatenate only). The last
    decoder block runs at 1/2 resolution and the logits are upsampled, which keeps the costly
    full-resolution convolutions out of the model. `bn_momentum` is set on every BatchNorm layer:
    Keras' 0.99 leaves the moving statistics far from the batch statistics after the few hundred
    steps a small data set gives, and inference-mode predictions come out flat.
    """
    if decoder not in ("conv", "bare"):
        raise ValueError(f"model.decoder: unknown {decoder!r}; choose 'conv' or 'bare'")
    inputs = keras.Input((None, None, 3), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="normalise")(inputs)
    *skips, x = build_encoder(backbone, alpha, weights)(x)
    for i, (skip, filters) in enumerate(zip(reversed(skips), decoder_filters, strict=True)):
        x = layers.UpSampling2D(2, name=f"up{i}")(x)
        x = layers.Concatenate(name=f"concat{i}")([x, skip])
        if decoder == "conv":
            x = _conv_block(x, filters, name=f"dec{i}")
    features = x
    x = layers.Conv2D(1, 1, name="logits")(features)
    x = BilinearUpsample2x(name="up_full")(x)
    outputs = layers.Activation("sigmoid", dtype="float32", name="mask")(x)
    if n_classes:
        c = layers.Conv2D(n_classes, 1, name="class_logits")(features)
        # Softmax before upsampling: bilinear weights are convex, so the upsampled probabilities still sum
        # to 1, and the softmax runs on a quarter of the pixels (at full size it cost ONNX Runtime 13 ms at 512 px).
        c = layers.Softmax(axis=-1, dtype="float32", name="classes")(c)
        c = BilinearUpsample2x(dtype="float32", name="up_classes")(c)
        outputs = layers.Concatenate(dtype="float32", name="mask_and_classes")([outputs, c])
    if centres:
        rare = keras.initializers.Constant(-4.6)  # p = 0.01 everywhere at first, as RetinaNet and CenterNet start a focal loss
        heat = layers.Conv2D(1, 1, bias_initializer=rare, name="centre_logits")(features)
        heat = layers.Activation("sigmoid", dtype="float32", name="centres")(heat)
        start = keras.initializers.Constant(-2.5)  # faces a tenth of the image: no exp(0) = whole-image boxes at first
        sizes = layers.Conv2D(2, 1, bias_initializer=start, dtype="float32", name="log_sizes")(features)
        both = layers.Concatenate(dtype="float32", name="centres_and_sizes")([heat, sizes])
        outputs = layers.Concatenate(dtype="float32", name="outputs")([outputs, BilinearUpsample2x(dtype="float32", name="up_centres")(both)])
    model = keras.Model(inputs, outputs, name=name or f"unet_{backbone}_{alpha}")
    for layer in [*model.get_layer("encoder").layers, *model.layers]:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = bn_momentum
    return model


def average_models(models: list[keras.Model]) -> keras.Model:
    """One model whose output is the mean of its members' probabilities.

    Members trained from other seeds err on different pixels, so their mean is a better map
    than any one of them. Saved, evaluated and served as a single model; it costs the sum of
    the members' inference time. Member names must differ (`build_unet(name=...)`). Each member
    is re-wrapped (same layers) without its compile state: a nested compiled model needs the
    training loss registered to load, and a serving process does not import it.
    """
    if len(models) == 1:
        return models[0]
    members = [keras.Model(m.input, m.output, name=m.name) for m in models]
    inputs = keras.Input((None, None, 3), name="image")
    outputs = layers.Average(dtype="float32", name="mask")([m(inputs) for m in members])
    return keras.Model(inputs, outputs, name="ensemble")


def set_trainable(model: keras.Model, trainable_layers: int | str) -> int:
    """Freeze the encoder except its last `trainable_layers` layers ('all' or -1: none frozen).

    Frozen BatchNormalization layers run in inference mode (Keras 3 semantics), keeping the
    ImageNet statistics. The decoder always trains. Returns the number of trainable weights.
    """
    encoder = model.get_layer("encoder")
    n = len(encoder.layers)
    if trainable_layers in ("all", -1):
        first = 0
    else:
        k = int(trainable_layers)
        if k < 0:
            raise ValueError(f"trainable_layers must be >= 0, 'all' or -1, got {trainable_layers}")
        first = n - k
    encoder.trainable = True
    for i, layer in enumerate(encoder.layers):
        layer.trainable = i >= first
    return len(model.trainable_weights)


def load_model(path) -> keras.Model:
    """Load a saved U-Net for inference (this module registers its custom layer)."""
    return keras.models.load_model(path, compile=False)

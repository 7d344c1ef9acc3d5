"""The U-Net: shapes, trainable layers, weights loading, the losses."""

import os
import shutil
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest

from pipeline.model.losses import bce_dice_loss, dice, dice_loss
from pipeline.model.network import WeightsError, build_unet, set_trainable
from tests.conftest import WEIGHTS


def test_unet_shapes_and_trainable_layers():
    model = build_unet("mobilenet", 0.25, None, "conv", (16, 16, 8, 8), bn_momentum=0.9)
    out = model.predict(np.zeros((2, 64, 64, 3), np.float32), verbose=0)
    assert out.shape == (2, 64, 64, 1) and 0 <= out.min() and out.max() <= 1
    assert model.predict(np.zeros((1, 96, 160, 3), np.float32), verbose=0).shape == (1, 96, 160, 1)
    encoder = model.get_layer("encoder")
    set_trainable(model, 6)
    trainable = [layer.name for layer in encoder.layers if layer.trainable]
    assert trainable == ["conv_dw_13", "conv_dw_13_bn", "conv_dw_13_relu", "conv_pw_13", "conv_pw_13_bn", "conv_pw_13_relu"]
    frozen_bn = encoder.get_layer("conv_pw_12_bn")
    assert not frozen_bn.trainable and frozen_bn.momentum == 0.9
    n_partial = len(model.trainable_weights)
    assert set_trainable(model, "all") > n_partial == set_trainable(model, 6)
    assert model.get_layer("dec0_sepconv1").trainable


def test_v2_and_bare_decoder():
    model = build_unet("mobilenet_v2", 0.35, None, "bare", (1, 1, 1, 1))
    assert model.predict(np.zeros((1, 64, 64, 3), np.float32), verbose=0).shape == (1, 64, 64, 1)
    assert not any(isinstance(layer, keras.layers.SeparableConv2D) for layer in model.layers)


def test_missing_weights_file_is_an_error_not_random_init(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        build_unet(weights=str(tmp_path / "nope.h5"))


# Keras reads $KERAS_HOME once, at import: the 'imagenet' cache path is exercised in a subprocess.
IMAGENET_CONV1 = """
import sys, numpy as np
from pipeline.model.network import WeightsError, build_unet
try:
    w = build_unet(weights="imagenet").get_layer("encoder").get_layer("conv1").get_weights()[0]
except WeightsError as err:
    sys.exit(f"WeightsError: {err}")
np.save(sys.argv[1], w)
"""


def imagenet_in_subprocess(keras_home, out):
    env = {**os.environ, "KERAS_HOME": str(keras_home), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-c", IMAGENET_CONV1, str(out)], env=env, capture_output=True, text=True)


def test_unloadable_imagenet_weights_say_how_to_provide_them(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mobilenet_2_5_224_tf_no_top.h5").write_bytes(b"corrupt")
    result = imagenet_in_subprocess(tmp_path, tmp_path / "w.npy")
    assert result.returncode != 0 and not (tmp_path / "w.npy").exists()
    assert "WeightsError" in result.stderr and "setting model.weights to the path" in result.stderr
    assert str(tmp_path / "models") in result.stderr


@pytest.mark.skipif(not WEIGHTS.exists(), reason="../shared/weights not present (it is in CI)")
def test_real_imagenet_weights_load_by_path_and_from_the_keras_cache(tmp_path):
    with h5py.File(WEIGHTS) as f:
        group = f["conv1"]["conv1"]
        expected = np.asarray(group["kernel:0"] if "kernel:0" in group else group["kernel"])
    by_path = build_unet(weights=str(WEIGHTS)).get_layer("encoder").get_layer("conv1").get_weights()[0]
    np.testing.assert_allclose(by_path, expected)
    (tmp_path / "models").mkdir()
    shutil.copy(WEIGHTS, tmp_path / "models" / WEIGHTS.name)
    result = imagenet_in_subprocess(tmp_path, tmp_path / "w.npy")
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "w.npy"), expected)


def test_losses_per_image():
    y = np.zeros((2, 4, 4, 1), np.float32)
    y[0, :2, :2] = 1
    p = y.copy()
    assert np.allclose(dice_loss(y, p), [0, 0], atol=1e-6)
    assert float(np.mean(dice(y, p))) == pytest.approx(1.0)
    assert np.all(np.asarray(bce_dice_loss(y, 1 - p)) > 1)


def test_bilinear_upsample_matches_tensorflow_resize_on_any_size():
    import tensorflow as tf

    from pipeline.model.network import BilinearUpsample2x

    inputs = keras.Input((None, None, 1))
    model = keras.Model(inputs, BilinearUpsample2x()(inputs))
    for h, w in ((7, 9), (4, 12)):
        x = np.random.default_rng(h).random((2, h, w, 1)).astype(np.float32)
        np.testing.assert_allclose(model.predict(x, verbose=0), tf.image.resize(x, (2 * h, 2 * w), "bilinear").numpy(), atol=1e-6)


def test_a_labelling_unet_outputs_face_then_class_probabilities_and_reloads(tmp_path):
    from pipeline.model.network import load_model

    model = build_unet(weights=None, decoder_filters=(8, 8, 8, 8), n_classes=3)
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 96, 3)).astype(np.float32)
    out = model.predict(x, verbose=0)
    assert out.shape == (2, 64, 96, 4)
    assert np.all((out[..., 0] >= 0) & (out[..., 0] <= 1)) and np.allclose(out[..., 1:].sum(-1), 1, atol=1e-5)
    model.save(tmp_path / "m.keras")
    assert np.allclose(load_model(tmp_path / "m.keras").predict(x, verbose=0), out, atol=1e-6)


def test_class_loss_counts_only_faces_with_a_known_class():
    """Unlabelled face pixels (channel 0 only) add no class loss; a labelled face adds weight x cross-entropy."""
    from pipeline.model.losses import FaceAndClassLoss

    y_true = np.zeros((1, 4, 4, 3), np.float32)
    y_true[0, :2, :2, 0] = 1  # a face without a class
    y_pred = np.full((1, 4, 4, 3), 0.5, np.float32)
    loss = FaceAndClassLoss("bce_dice", [1.0, 3.0])
    face_only = float(bce_dice_loss(y_true[..., :1], y_pred[..., :1])[0])
    assert float(loss(y_true, y_pred)) == pytest.approx(face_only, rel=1e-5)
    y_true[0, :2, :2, 2] = 1  # ... now of class 1 (weight 3): mean over its pixels of -3 log 0.5
    assert float(loss(y_true, y_pred)) == pytest.approx(face_only + 3 * np.log(2), rel=1e-5)
    assert FaceAndClassLoss.from_config(loss.get_config()).class_weights == [1.0, 3.0]


def test_class_background_pulls_the_classes_to_uniform_off_faces():
    """With `background` the pixels off faces add its weight x the KL divergence of their class
    probabilities from uniform (mean over those pixels): nothing when uniform, much for a pixel sure of
    two of three classes (the third probability clipped at 1e-7); face pixels (labelled or not) add nothing more."""
    from pipeline.model.losses import FaceAndClassLoss

    y_true = np.zeros((1, 4, 4, 4), np.float32)
    y_true[0, :2, :2, 0] = 1  # a face without a class; the other 12 pixels are off faces
    y_pred = np.full((1, 4, 4, 4), 1 / 3, np.float32)
    plain = float(FaceAndClassLoss("bce_dice", [1.0, 1.0, 1.0])(y_true, y_pred))
    loss = FaceAndClassLoss("bce_dice", [1.0, 1.0, 1.0], background=0.5)
    assert float(loss(y_true, y_pred)) == pytest.approx(plain, rel=1e-5)  # uniform off faces: no loss
    y_pred[0, 2:, :, 1:] = [0.5, 0.5, 1e-9]  # 8 of the 12 pixels off faces sure of two classes
    y_pred[0, :2, :2, 1:] = [1.0, 1e-9, 1e-9]  # the unlabelled face: no class loss, whatever it says
    expected = plain + 0.5 * 8 / 12 * (-np.mean(np.log([0.5, 0.5, 1e-7])) - np.log(3))
    assert float(loss(y_true, y_pred)) == pytest.approx(expected, rel=1e-4)
    assert FaceAndClassLoss.from_config(loss.get_config()).background == 0.5


def test_face_weights_make_a_missed_small_face_cost_what_a_missed_large_one_does():
    """Without weights missing a 2 x 2 face costs a sixteenth of missing an 8 x 8 one; balanced weights (the
    target's last channel) make the two misses cost the same, for the cross-entropy and the dice alike."""
    from pipeline.data.dataset import to_arrays
    from pipeline.data.formats import Sample
    from pipeline.model.losses import FaceAndClassLoss

    sample = Sample("a", np.zeros((32, 32, 3), np.uint8), np.array([[0, 0, 8, 8], [20, 20, 22, 22]], np.float32), [None] * 2)
    cost = {}
    for kind in ("none", "balanced"):
        y = to_arrays([sample], 32, face_weights=kind)[1]
        loss = FaceAndClassLoss("bce_dice", (), face_weights=kind == "balanced")
        for missed, window in (("large", np.s_[:8, :8]), ("small", np.s_[20:22, 20:22])):
            pred = np.clip(y[..., :1], 0.01, 0.99)
            pred[0][window] = 0.01
            cost[kind, missed] = float(loss(y, pred))
    assert cost["none", "large"] > 3 * cost["none", "small"]
    assert cost["balanced", "large"] == pytest.approx(cost["balanced", "small"], rel=0.02)
    assert FaceAndClassLoss.from_config(loss.get_config()).face_weights
    plain = to_arrays([sample], 32)[1]
    pred = np.full(plain.shape, 0.3, np.float32)
    assert float(FaceAndClassLoss("bce_dice", ())(plain, pred)) == pytest.approx(float(bce_dice_loss(plain, pred)[0]), rel=1e-6)


def test_centre_loss_is_least_for_the_target_and_the_head_adds_three_channels(tmp_path):
    from pipeline.data.dataset import to_arrays
    from pipeline.data.formats import Sample
    from pipeline.model.losses import FaceAndClassLoss
    from pipeline.model.network import load_model

    sample = Sample("a", np.zeros((32, 32, 3), np.uint8), np.array([[4, 4, 12, 12], [14, 4, 22, 12]], np.float32), [None] * 2)
    y = to_arrays([sample], 32, centres=True)[1]
    loss = FaceAndClassLoss("bce_dice", (), centres=True)
    right = np.clip(y, 1e-3, None)
    right[..., 2:] = y[..., 2:]
    wrong_size, no_peak = right.copy(), right.copy()
    wrong_size[..., 2:] += 0.5
    no_peak[..., 1] = 0.01
    assert float(loss(y, right)) < float(loss(y, wrong_size)) and float(loss(y, right)) < float(loss(y, no_peak))
    assert FaceAndClassLoss.from_config(loss.get_config()).centres
    model = build_unet(weights=None, decoder_filters=(8, 8, 8, 8), n_classes=2, centres=True)
    out = model.predict(np.zeros((1, 64, 96, 3), np.float32), verbose=0)
    assert out.shape == (1, 64, 96, 6) and np.allclose(out[..., 1:3].sum(-1), 1, atol=1e-5)
    assert np.allclose(out[..., 4:], -2.5, atol=0.5)  # sizes start at about e^-2.5 of the image
    model.save(tmp_path / "m.keras")
    assert np.allclose(load_model(tmp_path / "m.keras").predict(np.zeros((1, 64, 96, 3), np.float32), verbose=0), out)

import os
import shutil
import subprocess
import sys

import h5py
import keras
import numpy as np
import pandas as pd
import pytest

from pipeline.data import make_dataset, to_arrays
from pipeline.formats import Sample
from pipeline.losses import bce_dice_loss, dice, dice_loss
from pipeline.model import WeightsError, build_unet, set_trainable
from pipeline.split import split_dataset
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
from pipeline.model import WeightsError, build_unet
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


def test_augmented_dataset_is_seeded_and_keeps_masks_aligned():
    x = np.zeros((4, 32, 32, 3), np.uint8)
    y = np.zeros((4, 32, 32, 1), np.float32)
    x[:, 4:12, 2:10] = 255  # the "face" is the bright patch
    y[:, 4:12, 2:10] = 1
    cfg = {"flip": True, "zoom": [0.8, 1.6], "brightness": 0.0, "contrast": 0.0}
    a = [b for b, _ in zip(make_dataset(x, y, 2, cfg, seed=3, crop_size=24)[0], range(4))]
    b = [b for b, _ in zip(make_dataset(x, y, 2, cfg, seed=3, crop_size=24)[0], range(4))]
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.shape == (2, 24, 24, 3) and ya.shape == (2, 24, 24, 1)
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())
        bright = xa.numpy()[..., 0] > 127
        face = ya.numpy()[..., 0] > 0.5
        assert (bright == face).mean() > 0.97  # image and mask moved together
    assert len({float(batch[1].numpy().sum()) for batch in a}) > 1  # crops differ


def test_crops_are_the_draws_of_tensorflows_own_flip_and_crop():
    """The window is cut before the float copy and the flip (half the input pipeline's cost), yet each
    crop is exactly what stateless_random_flip_left_right + stateless_random_crop of the image give."""
    import tensorflow as tf

    from pipeline.data import _augment

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    mask = rng.random((40, 48, 1)).astype(np.float32)
    flips = 0
    for k in range(12):
        seed = tf.constant([k, 7], tf.int64)
        x, y = _augment(tf.constant(image), tf.constant(mask), seed, {"flip": True, "zoom": [0.7, 2.5]}, 24)
        seeds = tf.random.experimental.stateless_split(seed, 6)
        both = tf.image.stateless_random_flip_left_right(tf.concat([image.astype(np.float32), mask], -1), seeds[0])
        crop = tf.cast(tf.clip_by_value(tf.round(24 / tf.random.stateless_uniform([], seeds[1], 0.7, 2.5 + 1e-6)), 8.0, 40.0), tf.int32)
        reference = tf.image.resize(tf.image.stateless_random_crop(both, tf.stack([crop, crop, 4]), seeds[2]), [24, 24])
        np.testing.assert_array_equal(np.concatenate([x.numpy(), y.numpy()], -1), reference.numpy())
        flips += bool(tf.random.stateless_uniform([], seeds[0], 0, 1.0) < 0.5)
    assert 0 < flips < 12  # both branches were compared


def test_to_arrays_keeps_tiny_faces_as_fractional_targets():
    s = Sample("a", np.zeros((400, 400, 3), np.uint8), np.array([[10, 10, 12, 12]], np.float32))
    _, y = to_arrays([s], 32)
    assert y.shape == (1, 32, 32, 1) and 0 < y.sum() < 1


def test_split_is_seeded_stratified_and_disjoint(rng):
    n = 120
    images = pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "width": 100, "height": 100,
                           "n_faces": rng.integers(0, 9, n)})
    boxes = pd.DataFrame([{"image_id": r.image_id, "x1": 0, "y1": 0, "x2": s, "y2": s}
                          for r in images.itertuples() for s in rng.integers(3, 40, r.n_faces)])
    a = split_dataset(images, boxes, 0.15, 0.15, seed=1)
    assert a.equals(split_dataset(images, boxes, 0.15, 0.15, seed=1))
    assert not a.equals(split_dataset(images, boxes, 0.15, 0.15, seed=2))
    assert a["split"].value_counts().to_dict() == {"train": 84, "val": 18, "test": 18}
    faces = images.set_index("image_id").n_faces
    by_split = a.assign(f=a.image_id.map(faces)).groupby("split").f.mean()
    assert by_split.max() - by_split.min() < 1.5  # face counts balanced across splits


def test_bilinear_upsample_matches_tensorflow_resize_on_any_size():
    import tensorflow as tf

    from pipeline.model import BilinearUpsample2x

    inputs = keras.Input((None, None, 1))
    model = keras.Model(inputs, BilinearUpsample2x()(inputs))
    for h, w in ((7, 9), (4, 12)):
        x = np.random.default_rng(h).random((2, h, w, 1)).astype(np.float32)
        np.testing.assert_allclose(model.predict(x, verbose=0), tf.image.resize(x, (2 * h, 2 * w), "bilinear").numpy(), atol=1e-6)


class _SizeProbe:
    """A stand-in model whose 'probability' is the input side / 1000: which sizes were asked."""

    def predict_on_batch(self, x):
        return np.full((*x.shape[:3], 1), x.shape[1] / 1000, np.float32) + x[..., :1] / 1e6


def test_tta_averages_every_size_and_the_mirror_at_the_image_resolution():
    from pipeline.inference import predict_probs, tta_sizes

    assert tta_sizes(416, [1.0, 1.5]) == [416, 640] and tta_sizes(64, [0.1]) == [32]
    with pytest.raises(ValueError, match="tta_scales"):
        tta_sizes(416, [])
    image = np.zeros((30, 50, 3), np.uint8)
    image[:, :10] = 255  # left edge bright: the mirrored prediction must be flipped back
    (plain,) = predict_probs(_SizeProbe(), [image], [64])
    (multi,) = predict_probs(_SizeProbe(), [image], [64, 128])
    (mirrored,) = predict_probs(_SizeProbe(), [image], [64], flip=True)
    assert plain.shape == multi.shape == mirrored.shape == (30, 50)
    assert np.allclose(multi[15, 25], (0.064 + 0.128) / 2, atol=1e-6)
    assert np.allclose(mirrored, plain, atol=1e-6)  # flip-back restores the bright left edge
    assert plain[15, 2] > plain[15, 40]


@pytest.mark.parametrize("ema, use_val", [(0.0, False), (0.8, False), (0.0, True)])
def test_fit_keeps_the_weights_it_validated_best(ema, use_val):
    """With weight averaging too, the returned model is the one that scored the best val dice;
    with train.use_val (val images are training images) it is the last epoch's."""
    from pipeline.synthetic import generate
    from pipeline.training import fit, summarize

    samples = generate(40, 64, 64, 2, seed=3)
    train, val = to_arrays(samples[:32], 64), to_arrays(samples[32:], 64)
    cfg = {"batch_size": 4, "seed": 0, "loss": "bce_dice", "epochs": 0, "lr": 0.0, "trainable_layers": 0, "use_val": use_val,
           "finetune_epochs": 6, "finetune_lr": 0.01, "finetune_trainable_layers": "all", "patience": 0, "ema_momentum": ema}
    keras.utils.set_random_seed(0)
    model = build_unet(weights=None, decoder_filters=(8, 8, 8, 8), bn_momentum=0.9)
    history = fit(model, train, val, cfg).assign(member=0)
    assert len(history) == 6 and history["val_dice"].nunique() > 1
    model.compile(loss="binary_crossentropy", metrics=[dice])
    score = model.evaluate(val[0].astype(np.float32), val[1], batch_size=4, verbose=0, return_dict=True)["dice"]
    kept = history.iloc[-1] if use_val else history.loc[history["val_dice"].idxmax()]
    assert score == pytest.approx(kept["val_dice"], abs=1e-5)
    params = {"train": {**cfg, "patience": 0}, "evaluate": {"threshold": 0.45}}
    assert summarize(history, params, samples[:32], samples[32:])["best_epoch"] == kept["epoch"]
    if use_val:
        assert history["val_dice"].iloc[-1] < history["val_dice"].max()  # else the case would not tell them apart


def test_val_every_skips_validations_without_changing_the_training():
    """train.val_every only saves the time of predicting val: the same seed trains the same weights,
    and the phase's last epoch is always validated."""
    import tensorflow as tf

    from pipeline.synthetic import generate
    from pipeline.training import fit

    tf.config.experimental.enable_op_determinism()  # as train_from_params does
    samples = generate(24, 64, 64, 2, seed=3)
    train, val = to_arrays(samples[:20], 64), to_arrays(samples[20:], 64)
    cfg = {"batch_size": 4, "seed": 0, "loss": "bce_dice", "epochs": 2, "lr": 0.01, "trainable_layers": "all", "use_val": True,
           "finetune_epochs": 5, "finetune_lr": 0.01, "finetune_trainable_layers": "all", "patience": 0}
    runs = {}
    for every in (1, 2):
        keras.utils.set_random_seed(0)
        model = build_unet(weights=None, decoder_filters=(8, 8, 8, 8), bn_momentum=0.9)
        runs[every] = fit(model, train, val, {**cfg, "val_every": every}), model.get_weights()
    (full, w1), (sparse, w2) = runs[1], runs[2]
    # Phase 1 (epochs 0-1) validates its 2nd and last; phase 2 (epochs 2-6) its 2nd, 4th and last.
    assert sparse["val_dice"].notna().tolist() == [False, True, False, True, False, True, True]
    assert full["val_dice"].notna().all() and np.allclose(sparse["loss"], full["loss"])
    assert all(np.array_equal(a, b) for a, b in zip(w1, w2))
    with pytest.raises(ValueError, match="train.val_every must be >= 1"):
        fit(model, train, val, {**cfg, "val_every": 0})


def test_use_val_trains_on_val_only_with_a_fixed_threshold_and_no_early_stopping():
    from pipeline.training import training_images

    train, val = ["a", "b"], ["c"]
    params = {"train": {"use_val": False, "patience": 6}, "evaluate": {"threshold": None}}
    assert training_images(params, train, val) == ["a", "b"]
    params["train"]["use_val"] = True
    with pytest.raises(ValueError, match="set train.patience to 0"):
        training_images(params, train, val)
    params["train"]["patience"] = 0
    with pytest.raises(ValueError, match="set evaluate.threshold"):
        training_images(params, train, val)
    params["evaluate"]["threshold"] = 0.45
    assert training_images(params, train, val) == ["a", "b", "c"]


def test_evaluate_uses_a_fixed_threshold_instead_of_vals_choice():
    from pipeline.evaluation import evaluate_model
    from pipeline.synthetic import generate

    val, test = generate(6, 64, 64, 2, seed=1)[:3], generate(6, 64, 64, 2, seed=2)[3:]
    cfg = {"flip_tta": False, "tta_scales": [1.0], "min_area": 0, "threshold_grid": [0.05, 0.1, 0.01], "split_faces": False}
    chosen, table, _ = evaluate_model(_SizeProbe(), val, test, {**cfg, "threshold": None}, 64)
    assert chosen["threshold"] == table.loc[table["dice"].idxmax(), "threshold"] and chosen["threshold"] < 0.064
    fixed, same_table, _ = evaluate_model(_SizeProbe(), val, test, {**cfg, "threshold": 0.5}, 64)
    assert fixed["threshold"] == 0.5 and same_table.equals(table)
    # Probabilities are ~0.064: nothing passes 0.5, which scores 1 only on the images without faces.
    assert fixed["dice"] == pytest.approx(np.mean([len(s.boxes) == 0 for s in test])) != chosen["dice"]


def test_ensemble_averages_members_trained_from_successive_seeds(tmp_path):
    """train.ensemble: 2 gives one saveable model whose output is the mean of two distinct members,
    the first of which is exactly the single model the same seed trains, whatever the second's length."""
    from pipeline.model import load_model
    from pipeline.synthetic import generate
    from pipeline.training import summarize, train_from_params

    samples = generate(24, 64, 64, 2, seed=5)
    params = {
        "model": {"backbone": "mobilenet", "alpha": 0.25, "input_size": 64, "weights": "none", "decoder": "conv",
                  "decoder_filters": [8, 8, 8, 8], "bn_momentum": 0.9},
        "train": {"seed": 3, "batch_size": 4, "crop_size": None, "loss": "bce_dice", "epochs": 0, "lr": 0.0,
                  "trainable_layers": 0, "finetune_epochs": 3, "finetune_lr": 0.01, "finetune_trainable_layers": "all",
                  "patience": 0, "ensemble": 2},
    }
    ensemble, history = train_from_params(params, samples[:20], samples[20:])
    assert history["member"].tolist() == [0, 0, 0, 1, 1, 1] and history["epoch"].tolist() == list(range(6))
    assert summarize(history, params, samples[:20], samples[20:])["best_val_dice"] == pytest.approx(
        history.groupby("member")["val_dice"].max().mean())

    x = to_arrays(samples[20:], 64)[0].astype(np.float32)
    a, b = (ensemble.get_layer(f"member{k}").predict(x, verbose=0) for k in (0, 1))
    assert np.abs(a - b).mean() > 1e-3  # other seed, other model
    out = ensemble.predict(x, verbose=0)
    assert out.shape == x.shape[:3] + (1,) and np.allclose(out, (a + b) / 2, atol=1e-6)
    ensemble.save(tmp_path / "ensemble.keras")
    assert np.allclose(load_model(tmp_path / "ensemble.keras").predict(x, verbose=0), out, atol=1e-6)
    # A serving process imports pipeline.model, not the training losses: it must load there too.
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np; from pipeline.model import load_model; "
            "np.save(sys.argv[2], load_model(sys.argv[1]).predict(np.load(sys.argv[3]), verbose=0))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "ensemble.keras"), str(tmp_path / "y.npy"), str(tmp_path / "x.npy")],
                   check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert np.allclose(np.load(tmp_path / "y.npy"), out, atol=1e-6)

    single, _ = train_from_params({**params, "train": {**params["train"], "ensemble": 1}}, samples[:20], samples[20:])
    assert np.allclose(single.predict(x, verbose=0), a, atol=1e-5)
    with pytest.raises(ValueError, match="train.ensemble must be >= 1"):
        train_from_params({**params, "train": {**params["train"], "ensemble": 0}}, samples[:20], samples[20:])

    # Each member may have its own length; the first is still the same model.
    mixed, history = train_from_params({**params, "train": {**params["train"], "finetune_epochs": [3, 1]}},
                                       samples[:20], samples[20:])
    assert history["member"].tolist() == [0, 0, 0, 1] and history["epoch"].tolist() == list(range(4))
    assert np.allclose(mixed.get_layer("member0").predict(x, verbose=0), a, atol=1e-5)
    with pytest.raises(ValueError, match=r"lists 3 members' epochs \(\[3, 1, 2\]\) but train.ensemble is 2"):
        train_from_params({**params, "train": {**params["train"], "finetune_epochs": [3, 1, 2]}}, samples[:20], samples[20:])

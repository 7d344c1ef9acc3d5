"""Training: the kept weights, validation frequency, ensembles of members."""

import os
import subprocess
import sys
from dataclasses import replace

import keras
import numpy as np
import pytest

from pipeline.data.dataset import examples, to_arrays
from pipeline.model.losses import dice
from pipeline.model.network import build_unet
from tests.conftest import PARAMS

pytestmark = pytest.mark.slow  # trains a model or starts a server

TRAIN = replace(PARAMS.train, batch_size=4, seed=0, loss="bce_dice", crop_size=None, patience=0, val_every=1, ema_momentum=0.0,
                ensemble=1, warmup_epochs=0, warmup_trainable_layers=0, finetune_trainable_layers="all", finetune_lr=0.01,
                lr_schedule="constant")


@pytest.mark.parametrize("ema, use_val", [(0.0, False), (0.8, False), (0.0, True)])
def test_fit_keeps_the_weights_it_validated_best(ema, use_val):
    """With weight averaging too, the returned model is the one that scored the best val dice;
    with train.use_val (val images are training images) it is the last epoch's."""
    from pipeline.data.synthetic import generate
    from pipeline.model.training import fit, summarize

    samples = generate(40, 64, 64, 2, seed=3)
    train, val = examples(samples[:32], 64), examples(samples[32:], 64)
    # Batches of 2 (96 steps): with 48, one CPU's rounding left a run predicting nothing on val for all six epochs,
    # and a flat val curve cannot tell the kept epoch from another.
    cfg = replace(TRAIN, use_val=use_val, finetune_epochs=6, ema_momentum=ema, batch_size=2)
    keras.utils.set_random_seed(0)
    model = build_unet(weights=None, decoder_filters=(8, 8, 8, 8), bn_momentum=0.9)
    history = fit(model, train, val, cfg, seed=0, finetune_epochs=6).assign(member=0)
    assert len(history) == 6 and history["val_dice"].nunique() > 1
    model.compile(loss="binary_crossentropy", metrics=[dice])
    x_val, y_val = to_arrays(samples[32:], 64)
    score = model.evaluate(x_val.astype(np.float32), y_val, batch_size=4, verbose=0, return_dict=True)["dice"]
    kept = history.iloc[-1] if use_val else history.loc[history["val_dice"].idxmax()]
    assert score == pytest.approx(kept["val_dice"], abs=1e-5)
    assert summarize(history, cfg, samples[:32], samples[32:])["best_epoch"] == kept["epoch"]
    if use_val:
        assert history["val_dice"].iloc[-1] < history["val_dice"].max()  # else the case would not tell them apart


def test_val_every_skips_validations_without_changing_the_training():
    """train.val_every only saves the time of predicting val: the same seed trains the same weights,
    and the phase's last epoch is always validated."""
    import tensorflow as tf

    from pipeline.data.synthetic import generate
    from pipeline.model.training import fit

    tf.config.experimental.enable_op_determinism()  # as train_model does
    samples = generate(24, 64, 64, 2, seed=3)
    train, val = examples(samples[:20], 64), examples(samples[20:], 64)
    cfg = replace(TRAIN, warmup_epochs=2, warmup_lr=0.01, warmup_trainable_layers="all", use_val=True, finetune_epochs=3)
    runs = {}
    for every in (1, 2):
        keras.utils.set_random_seed(0)
        model = build_unet(weights=None, decoder_filters=(8, 8, 8, 8), bn_momentum=0.9)
        runs[every] = fit(model, train, val, replace(cfg, val_every=every), seed=0, finetune_epochs=3), model.get_weights()
    (full, w1), (sparse, w2) = runs[1], runs[2]
    # Phase 1 (epochs 0-1) validates its 2nd and last; phase 2 (epochs 2-4) its 2nd and its last.
    assert sparse["val_dice"].notna().tolist() == [False, True, False, True, True]
    assert full["val_dice"].notna().all() and np.allclose(sparse["loss"], full["loss"])
    assert all(np.array_equal(a, b) for a, b in zip(w1, w2))


def test_ensemble_averages_members_trained_from_successive_seeds(tmp_path):
    """train.ensemble: 2 gives one saveable model whose output is the mean of two distinct members,
    each with its own length; the first is exactly the single model the same seed trains."""
    from pipeline.data.synthetic import generate
    from pipeline.model.network import load_model
    from pipeline.model.training import summarize, train_model

    samples = generate(24, 64, 64, 2, seed=5)
    model_cfg = replace(PARAMS.model, backbone="mobilenet", alpha=0.25, input_size=64, weights="none", decoder="conv",
                        decoder_filters=(8, 8, 8, 8), bn_momentum=0.9)
    cfg = replace(TRAIN, seed=3, finetune_epochs=(3, 1), ensemble=2)
    ensemble, history = train_model(model_cfg, cfg, samples[:20], samples[20:])
    assert history["member"].tolist() == [0, 0, 0, 1] and history["epoch"].tolist() == list(range(4))
    assert summarize(history, cfg, samples[:20], samples[20:])["best_val_dice"] == pytest.approx(
        history.groupby("member")["val_dice"].max().mean())

    x = to_arrays(samples[20:], 64)[0].astype(np.float32)
    a, b = (ensemble.get_layer(f"member{k}").predict(x, verbose=0) for k in (0, 1))
    assert np.abs(a - b).mean() > 1e-3  # other seed, other model
    out = ensemble.predict(x, verbose=0)
    assert out.shape == x.shape[:3] + (1,) and np.allclose(out, (a + b) / 2, atol=1e-6)
    ensemble.save(tmp_path / "ensemble.keras")
    assert np.allclose(load_model(tmp_path / "ensemble.keras").predict(x, verbose=0), out, atol=1e-6)
    # A serving process imports pipeline.model.network, not the training losses: it must load there too.
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np; from pipeline.model.network import load_model; "
            "np.save(sys.argv[2], load_model(sys.argv[1]).predict(np.load(sys.argv[3]), verbose=0))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "ensemble.keras"), str(tmp_path / "y.npy"), str(tmp_path / "x.npy")],
                   check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert np.allclose(np.load(tmp_path / "y.npy"), out, atol=1e-6)

    single, _ = train_model(model_cfg, replace(cfg, ensemble=1, finetune_epochs=3), samples[:20], samples[20:])
    assert np.allclose(single.predict(x, verbose=0), a, atol=1e-5)


def test_a_labelling_model_trains_evaluates_and_serves_labels_from_its_classes():
    """data.classes end to end in-process, here with CenterNet's head (model.centres): 1 + 3 + 3 output
    channels, mask-wearing metrics on test, and served faces labelled with one of the classes (synthetic
    faces given classes in turn; some none, as from a source without labels)."""
    from pipeline.config import ServingConfig
    from pipeline.data.synthetic import generate
    from pipeline.evaluation.evaluate import evaluate_model
    from pipeline.model.training import class_weights, train_model
    from pipeline.serving.pyfunc import predict_images

    classes = ("incorrect", "with_mask", "without_mask")
    samples = generate(24, 64, 64, 2, seed=5)
    for i, s in enumerate(samples):
        s.labels = [(classes + (None,))[(i + k) % 4] for k in range(len(s.boxes))]
    balanced = [sum(label is not None for s in samples[:20] for label in s.labels) /
                (3 * sum(label == c for s in samples[:20] for label in s.labels)) for c in classes]
    assert class_weights(samples[:20], classes) == pytest.approx(balanced)
    assert class_weights(samples[:20], classes, "sqrt") == pytest.approx(np.sqrt(balanced))
    assert class_weights(samples[:20], classes, "none") == [1.0, 1.0, 1.0]
    model_cfg = replace(PARAMS.model, input_size=64, weights="none", decoder_filters=(8, 8, 8, 8), bn_momentum=0.9,
                        centres=True)
    model, history = train_model(model_cfg, replace(TRAIN, finetune_epochs=2), samples[:16], samples[16:20], classes=classes)
    assert model.output_shape[-1] == 7 and len(history) == 2
    cfg = replace(PARAMS.evaluate, threshold=0.3, tta_scales=(1.0,), flip_tta=True)
    metrics, _, preds = evaluate_model(model, samples[16:20], samples[20:], cfg, model_cfg, classes)
    assert {"map50", "macro_f1", "label_accuracy", "ap50_incorrect", "f1_without_mask"} <= set(metrics)
    assert metrics["centre_threshold"] in np.round(np.arange(*cfg.threshold_grid), 4)  # val's best face F1
    assert np.array(metrics["confusion"]).shape == (3, 3)
    from pipeline.evaluation.evaluate import confusion_figure

    figure = confusion_figure(metrics["confusion"], classes)
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == list(classes)
    config = ServingConfig(input_size=64, tta_sizes=(64,), flip_tta=True, separate_faces=False, threshold=0.3,
                           threshold_ratio=0.0, min_area=4, test_fingerprint="x", test_dice=0.0, limits=PARAMS.export.limits,
                           caveat="", classes=classes, centres=True, centre_threshold=0.005)
    served = predict_images(model, [s.image for s in samples[20:]], config)
    faces = [f for row in served["faces"] for f in __import__("json").loads(row)]
    assert faces and all(f["label"] in classes and 0 < f["label_score"] <= 1 for f in faces)
    from pipeline.data.masks import centre_boxes
    from pipeline.model.inference import predict_probs

    probs = predict_probs(model, [s.image for s in samples[20:]], (64,), flip=True)
    assert served["n_faces"].tolist() == [len(centre_boxes(p[..., 4], p[..., 5:], 0.005)) for p in probs]

"""Two-phase transfer-learning fit: frozen encoder warm-up, then optional fine-tuning."""

from __future__ import annotations

import time
from functools import partial

import keras
import numpy as np
import pandas as pd

from pipeline.config import DataConfig, ModelConfig, TrainConfig, resolve_path
from pipeline.data.dataset import Examples, examples, make_dataset, validation_dataset
from pipeline.data.formats import Sample
from pipeline.data.sources import weigh_samples
from pipeline.model.losses import FaceAndClassLoss, dice, get_loss
from pipeline.model.multi_worker import fit_multi_worker
from pipeline.model.network import average_models, build_unet, set_trainable


class History(keras.callbacks.Callback):
    """Per-epoch rows (with phase and training-only seconds) for the CSV that `dvc plots` draws."""

    def __init__(self, phase: str, images_per_epoch: int):
        super().__init__()
        self.phase, self.images_per_epoch, self.rows = phase, images_per_epoch, []

    def on_epoch_begin(self, epoch, logs=None):
        self._t0, self._train_s = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        if self._train_s is None:
            self._train_s = time.perf_counter() - self._t0

    def on_epoch_end(self, epoch, logs=None):
        train_s = self._train_s if self._train_s is not None else time.perf_counter() - self._t0
        row = {"epoch": epoch, "phase": self.phase, **{k: float(v) for k, v in (logs or {}).items()}}
        row.update(train_seconds=train_s, images_per_s=self.images_per_epoch / max(train_s, 1e-9))
        self.rows.append(row)


class KeepBest(keras.callbacks.Callback):
    """Best val dice weights across all phases (EarlyStopping alone restores only within one fit)."""

    def __init__(self):
        super().__init__()
        self.best, self.weights = -np.inf, None

    def on_epoch_end(self, epoch, logs=None):
        if logs and logs.get("val_dice", -np.inf) > self.best:
            self.best, self.weights = logs["val_dice"], self.model.get_weights()


def phases(cfg: TrainConfig, finetune_epochs: int) -> list[tuple[str, int, float, int | str]]:
    """(name, epochs, learning rate, trainable encoder layers) for each phase that runs."""
    out = []
    if cfg.warmup_epochs > 0:
        out.append(("warmup", cfg.warmup_epochs, cfg.warmup_lr, cfg.warmup_trainable_layers))
    if finetune_epochs > 0:
        out.append(("finetune", finetune_epochs, cfg.finetune_lr, cfg.finetune_trainable_layers))
    return out


def fit(model: keras.Model, train: Examples, val: Examples, cfg: TrainConfig,
        seed: int, finetune_epochs: int, callbacks: list | None = None, first_epoch: int = 0, loss=None) -> pd.DataFrame:
    """Train in phases (optionally early stopping on val dice); keep the best val-dice weights of all phases.

    Val is predicted every `val_every` epochs of a phase and at its last epoch (early stopping's
    patience then counts validations). With `use_val` it judges nothing, and predicting it every
    epoch took about 15% of a preset fold.

    Epochs are numbered from `first_epoch`, so several fits log to one MLflow run without clashing steps.
    `loss` defaults to `train.loss` (a face-only model).
    """
    import tensorflow as tf

    ds, steps = make_dataset(train, batch_size=cfg.batch_size, augment=cfg.augment, seed=seed, crop_size=cfg.crop_size)
    val_ds = validation_dataset(val, cfg.batch_size)
    ema, every = cfg.ema_momentum, cfg.val_every
    replicas = tf.distribute.get_strategy().num_replicas_in_sync  # the strategy whose scope this fit runs in
    rows, epoch, keep = [], first_epoch, KeepBest()
    for name, epochs, lr, trainable in phases(cfg, finetune_epochs):
        set_trainable(model, trainable)
        if cfg.lr_schedule == "cosine":  # decay to 1/100 over the phase: no plateau to stall on
            lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=epochs * steps, alpha=0.01)
        optimizer = keras.optimizers.Adam(lr, use_ema=ema > 0, ema_momentum=ema)
        model.compile(optimizer=optimizer, loss=loss or get_loss(cfg.loss), metrics=[dice])
        history = History(name, steps * cfg.batch_size)
        # With EMA, validation, early stopping and KeepBest all see the averaged weights.
        swap = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if ema > 0 else []
        stop = [keras.callbacks.EarlyStopping(monitor="val_dice", mode="max", patience=cfg.patience)] if cfg.patience else []
        # Keras counts epochs from 1 here; the phase's last epoch is always validated.
        validated = [e for e in range(epoch + 1, epoch + epochs + 1) if (e - epoch) % every == 0 or e == epoch + epochs]
        model.fit(ds, steps_per_epoch=steps, validation_data=val_ds,
                  validation_freq=validated, initial_epoch=epoch, epochs=epoch + epochs,
                  callbacks=[history, *swap, *stop, keep, *(callbacks or [])], verbose=2)
        rows += [{**row, "replicas": replicas} for row in history.rows]
        epoch += len(history.rows)
    # With train.use_val the val images are training images: their dice picks no epoch, the last stays.
    if not cfg.use_val and keep.weights is not None:
        model.set_weights(keep.weights)
    return pd.DataFrame(rows)


def training_images(cfg: TrainConfig, train: list[Sample], val: list[Sample], data: DataConfig | None = None) -> list[Sample]:
    """What an epoch shows: the train split, plus the val split with `train.use_val`, each image as
    often as `data`'s source and class repeats say (`weigh_samples`), val images as their source's others.

    On a small data set the val images are worth more as training data than as a judge: the
    last epoch is kept instead of the best val epoch, and `evaluate.threshold` replaces the
    threshold val would choose (both rules are checked in `Params`).
    """
    images = train + val if cfg.use_val else train
    return weigh_samples(images, data) if data is not None else images


def class_weights(samples: list[Sample], classes: tuple[str, ...], kind: str = "balanced") -> list[float]:
    """Per-class loss weights over the training faces: "balanced" is n / (k * n_c) (scikit-learn's:
    the 3% `incorrect` faces weigh as much in total as the others), "sqrt" its square root (a
    milder push towards rare classes), "none" all 1. A class with no face weighs 1."""
    counts = np.array([sum(label == c for s in samples for label in s.labels) for c in classes], np.float64)
    balanced = np.array([counts.sum() / (len(classes) * n) if n else 1.0 for n in counts])
    return [float(w) for w in {"balanced": balanced, "sqrt": np.sqrt(balanced), "none": np.ones(len(classes))}[kind]]


def training_loss(cfg: TrainConfig, train: list[Sample], classes: tuple[str, ...] = (), centres: bool = False):
    """`train.loss` on the face channel, or with classes, `train.face_weights` or `model.centres` the
    `FaceAndClassLoss` that reads their target channels (`data.dataset.to_arrays`), with the class weights
    of the training faces."""
    if not classes and cfg.face_weights == "none" and not centres:
        return get_loss(cfg.loss)
    return FaceAndClassLoss(cfg.loss, class_weights(train, classes, cfg.class_weights), cfg.face_weights != "none", centres,
                            cfg.class_background)


def train_model(model_cfg: ModelConfig, cfg: TrainConfig, train: list[Sample], val: list[Sample],
                callbacks: list | None = None, classes: tuple[str, ...] = ()):
    """Seed, build the U-Net the params describe and fit it: (model, history). Shared by the train
    stage and the cross-validation benchmark, so both train exactly the same way.

    With `train.ensemble: N > 1`, N members are trained with seeds seed, seed+1, ... (weights
    init, crops and augmentation all differ; `train.finetune_epochs` may give each its own length)
    and returned as one model averaging their outputs.
    `train` is every image the fit learns from, as often as an epoch shows it (`training_images` adds
    the val split with `train.use_val`); `val` is what it validates on. With `classes`
    (`data.classes`), the model also outputs each pixel's mask-wearing class probabilities.
    """
    import tensorflow as tf

    strategy = distribution(cfg.distribute)  # first: a multi-worker strategy must exist before any other op
    size, members = model_cfg.input_size, cfg.ensemble
    tf.config.experimental.enable_op_determinism()
    weights = model_cfg.weights if model_cfg.weights in ("none", "imagenet") else str(resolve_path(model_cfg.weights))
    data = tuple(examples(split, size, classes, cfg.stream, model_cfg.core_scale, cfg.face_weights, model_cfg.centres)
                 for split in (train, val))
    models, histories = [], []
    loss = training_loss(cfg, train, classes, model_cfg.centres)
    for k, epochs in enumerate(cfg.member_epochs):
        seed = cfg.seed + k
        keras.utils.set_random_seed(seed)
        with strategy.scope():  # variables mirrored on each replica; fit splits every batch among them
            model = build_unet(model_cfg.backbone, model_cfg.alpha, weights, model_cfg.decoder, model_cfg.decoder_filters,
                               model_cfg.bn_momentum, name=f"member{k}" if members > 1 else None, n_classes=len(classes),
                               centres=model_cfg.centres)
            fit_here = partial(fit_multi_worker, strategy) if cfg.distribute == "multi_worker" else fit
            history = fit_here(model, *data, cfg, seed, epochs, callbacks, first_epoch=sum(map(len, histories)), loss=loss)
        models.append(model)
        histories.append(history.assign(member=k))
    return average_models(models), pd.concat(histories, ignore_index=True)


def distribution(kind: str):
    """The tf.distribute strategy of `train.distribute`: `mirrored` over the local GPUs, or over the logical
    CPU devices where there is none (one, unless the process split its CPU: how a test runs two replicas
    without a GPU); `multi_worker` over the machines `TF_CONFIG` lists; else TensorFlow's default."""
    import tensorflow as tf

    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()


def summarize(history: pd.DataFrame, cfg: TrainConfig, train: list[Sample], val: list[Sample]) -> dict:
    """Val dice of the kept epochs (the mean over ensemble members), epochs, image counts and training
    throughput (time-weighted images/s). Each member keeps its best val epoch, or its last with
    `train.use_val` (whose val dice is then measured on training images)."""
    best = history.groupby("member").tail(1) if cfg.use_val else history.loc[history.groupby("member")["val_dice"].idxmax()]
    return {
        "n_train": len(train),
        "n_val": len(val),
        "best_val_dice": float(best["val_dice"].mean()),
        "best_epoch": int(best["epoch"].iloc[-1]),
        "epochs_run": len(history),
        "train_images_per_s": float(np.average(history["images_per_s"], weights=history["train_seconds"])),
        "train_seconds": float(history["train_seconds"].sum()),
        "replicas": int(history["replicas"].max()),
    }


def encoder_weights_note(cfg: ModelConfig) -> str:
    return f"pretrained: {cfg.weights}" if cfg.pretrained else "random init (model.weights: none)"


def learning_curves(history: pd.DataFrame):
    """Matplotlib figure of train and val loss and dice by epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    validated = history.dropna(subset=["val_loss"])  # train.val_every skips epochs
    for ax, key in zip(axes, ["loss", "dice"]):
        ax.plot(history["epoch"], history[key], label=f"train {key}")
        ax.plot(validated["epoch"], validated[f"val_{key}"], label=f"val {key}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.legend()
    fig.tight_layout()
    return fig

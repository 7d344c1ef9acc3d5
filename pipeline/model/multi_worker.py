"""Training on several machines: tf.distribute.MultiWorkerMirroredStrategy, with a plain training loop.

Keras 3's `fit` fails under this strategy (keras-team/keras#20585), so this loop does for the
pipeline what `fit` does on one machine: the phases and their learning-rate schedules, validation
every `train.val_every` epochs and at each phase's end, early stopping, the best val-dice weights
kept, and each epoch's logs to the callbacks. Every worker runs it on its share of each global
batch; gradients are summed across workers at each step, so all hold the same trainable weights
(BatchNormalization's moving statistics are each worker's own, as in TensorFlow's own `fit`).
Workers are described by `TF_CONFIG`, as TensorFlow reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import keras
import numpy as np
import pandas as pd
from keras import ops

from pipeline.config import TrainConfig
from pipeline.data.dataset import Examples, make_dataset, validation_dataset
from pipeline.model.losses import dice, get_loss
from pipeline.model.network import set_trainable


def is_chief() -> bool:
    """Whether this process logs and writes outputs: the `chief` task, or worker 0 of a cluster without
    one, or a process with no `TF_CONFIG` at all."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task, cluster = config.get("task", {}), config.get("cluster", {})
    if not task:
        return True
    return task.get("type") == "chief" or (task.get("type") == "worker" and int(task.get("index", 0)) == 0
                                           and "chief" not in cluster)


def weights_digest(model: keras.Model) -> str:
    """A hash of the trainable weights: equal on every worker after a synchronous fit."""
    return hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in model.trainable_weights)).hexdigest()[:16]


def fit_multi_worker(strategy, model: keras.Model, train: Examples, val: Examples, cfg: TrainConfig, seed: int,
                     finetune_epochs: int, callbacks: list | None = None, first_epoch: int = 0, loss=None) -> pd.DataFrame:
    """`training.fit` under `strategy` (build `model` in its scope first); the same history rows."""
    import tensorflow as tf

    from pipeline.model.training import phases

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds, steps = make_dataset(train, cfg.batch_size, cfg.augment, seed, cfg.crop_size)
    batches = iter(strategy.experimental_distribute_dataset(ds.with_options(options)))
    val_ds = strategy.experimental_distribute_dataset(validation_dataset(val, cfg.batch_size).with_options(options))
    loss_fn, replicas = loss or get_loss(cfg.loss), strategy.num_replicas_in_sync

    def sums(y, pred, value):  # loss x images, summed dice, images: summed over replicas, divided at the end
        n = ops.cast(ops.shape(y)[0], "float32")
        return ops.stack([ops.where(n > 0, value * n, 0.0), ops.sum(dice(y, pred)), n])

    rows, epoch, best, best_weights = [], first_epoch, -np.inf, None
    for name, epochs, lr, trainable in phases(cfg, finetune_epochs):
        set_trainable(model, trainable)
        if cfg.lr_schedule == "cosine":
            lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=epochs * steps, alpha=0.01)
        with strategy.scope():
            optimizer = keras.optimizers.Adam(lr)
            optimizer.build(model.trainable_variables)

        @tf.function
        def train_step(iterator):
            def replica(x, y):
                with tf.GradientTape() as tape:
                    pred = model(x, training=True)
                    value = ops.mean(loss_fn(y, pred))
                    share = value / replicas  # summed over replicas: the global batch's mean
                grads = tape.gradient(share, model.trainable_variables)
                optimizer.apply_gradients(zip(grads, model.trainable_variables))
                return sums(y, pred, value)

            return strategy.reduce("SUM", strategy.run(replica, args=next(iterator)), axis=None)

        @tf.function
        def val_step(x, y):
            def replica(x, y):
                pred = model(x, training=False)
                return sums(y, pred, ops.mean(loss_fn(y, pred)))  # an empty share: nan, masked in sums

            return strategy.reduce("SUM", strategy.run(replica, args=(x, y)), axis=None)

        phase_best, waited = -np.inf, 0
        for k in range(epochs):
            start = time.perf_counter()
            total = sum(train_step(batches) for _ in range(steps)).numpy()
            seconds = time.perf_counter() - start
            logs = {"dice": total[1] / total[2], "loss": total[0] / total[2]}
            if (k + 1) % cfg.val_every == 0 or k == epochs - 1:
                checked = sum(val_step(x, y) for x, y in val_ds).numpy()
                logs.update(val_dice=checked[1] / checked[2], val_loss=checked[0] / checked[2])
                if logs["val_dice"] > best:
                    best, best_weights = logs["val_dice"], model.get_weights()
                waited = 0 if logs["val_dice"] > phase_best else waited + 1
                phase_best = max(phase_best, logs["val_dice"])
            rows.append({"epoch": epoch, "phase": name, **{key: float(v) for key, v in logs.items()},
                         "train_seconds": seconds, "images_per_s": steps * cfg.batch_size / seconds, "replicas": replicas})
            for callback in callbacks or []:
                callback.on_epoch_end(epoch, logs)
            epoch += 1
            if cfg.patience and waited >= cfg.patience:
                break
    if not cfg.use_val and best_weights is not None:
        model.set_weights(best_weights)
    return pd.DataFrame(rows)

"""train: MobileNet U-Net with transfer learning; creates the pipeline execution's MLflow run."""

import logging

import keras
import mlflow
import numpy as np
import tensorflow as tf

from pipeline.config import load_params, resolve_path
from pipeline.data import to_arrays
from pipeline.io import atomic_path, write_csv, write_json
from pipeline.model import build_unet
from pipeline.tracking import epoch_logger, new_run
from pipeline.training import fit
from stages.common import MODEL, RUN, split_samples

METRICS, HISTORY = "metrics/train.json", "plots/train_history.csv"


def main() -> None:
    params = load_params()
    mcfg, tcfg = params["model"], params["train"]
    keras.utils.set_random_seed(int(tcfg["seed"]))
    tf.config.experimental.enable_op_determinism()
    size = int(mcfg["input_size"])
    for key, value in (("model.input_size", size), ("train.crop_size", tcfg.get("crop_size") or size)):
        if int(value) % 32:
            raise ValueError(f"params.yaml {key} must be a multiple of 32, got {value}")
    train, val = to_arrays(split_samples("train"), size), to_arrays(split_samples("val"), size)
    weights = mcfg["weights"]
    weights = weights if weights in (None, "none", "imagenet") else str(resolve_path(weights))
    model = build_unet(mcfg["backbone"], float(mcfg["alpha"]), weights, mcfg["decoder"],
                       tuple(mcfg["decoder_filters"]), float(mcfg["bn_momentum"]))

    with new_run(params, RUN):
        note = "random init (model.weights: none)" if weights in (None, "none") else f"pretrained: {weights}"
        mlflow.set_tag("encoder_weights", note)
        logging.info("encoder weights: %s", note)
        history = fit(model, train, val, tcfg, callbacks=[epoch_logger()])
        with atomic_path(MODEL) as tmp:
            model.save(tmp)
        write_csv(HISTORY, history)
        best = history.loc[history["val_dice"].idxmax()]
        summary = {
            "best_val_dice": float(best["val_dice"]),
            "best_epoch": int(best["epoch"]),
            "epochs_run": len(history),
            "train_images_per_s": float(np.average(history["images_per_s"], weights=history["train_seconds"])),
            "train_seconds": float(history["train_seconds"].sum()),
            "n_train": len(train[0]),
            "n_val": len(val[0]),
            "n_params": int(model.count_params()),
        }
        write_json(METRICS, summary)
        mlflow.log_metrics({k: v for k, v in summary.items() if k != "best_epoch"})
        mlflow.log_artifact(HISTORY, "plots")
        mlflow.log_figure(_curves(history), "plots/learning_curves.png")
        logging.info("train: %s", summary)


def _curves(history):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ["loss", "dice"]):
        ax.plot(history["epoch"], history[key], label=f"train {key}")
        ax.plot(history["epoch"], history[f"val_{key}"], label=f"val {key}")
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    main()

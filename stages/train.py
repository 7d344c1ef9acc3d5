"""train: MobileNet U-Net with transfer learning; creates the pipeline execution's MLflow run."""

import logging

import mlflow

from pipeline.config import assert_params_unchanged, load_params
from pipeline.io import atomic_path, write_csv, write_json
from pipeline.tracking import epoch_logger, new_run
from pipeline.training import encoder_weights_note, summarize, train_from_params
from stages.common import MODEL, RUN, run_stage, split_samples

METRICS, HISTORY = "metrics/train.json", "plots/train_history.csv"


def main() -> None:
    params = load_params()
    train, val = split_samples("train"), split_samples("val")
    with new_run(params, RUN):
        note = encoder_weights_note(params)
        mlflow.set_tag("encoder_weights", note)
        logging.info("encoder weights: %s", note)
        model, history = train_from_params(params, train, val, callbacks=[epoch_logger()])
        assert_params_unchanged()
        with atomic_path(MODEL) as tmp:
            model.save(tmp)
        write_csv(HISTORY, history)
        summary = {
            **summarize(history, params, train, val),
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
    validated = history.dropna(subset=["val_loss"])  # train.val_every skips epochs
    for ax, key in zip(axes, ["loss", "dice"]):
        ax.plot(history["epoch"], history[key], label=f"train {key}")
        ax.plot(validated["epoch"], validated[f"val_{key}"], label=f"val {key}")
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    run_stage(main)

"""train: MobileNet U-Net with transfer learning; creates the pipeline execution's MLflow run."""

import logging

import mlflow

from pipeline.config import assert_params_unchanged, load_params
from pipeline.data.formats import fingerprint
from pipeline.io import atomic_path, write_csv, write_json
from pipeline.model.multi_worker import is_chief, weights_digest
from pipeline.model.training import encoder_weights_note, learning_curves, summarize, train_model, training_images
from pipeline.tracking import epoch_logger, log_split, new_run
from stages.common import MODEL, RUN, run_stage, split_samples

METRICS, HISTORY = "metrics/train.json", "plots/train_history.csv"


def main() -> None:
    params = load_params()
    split, val = (split_samples(name, lazy=params.train.stream) for name in ("train", "val"))
    train = training_images(params.train, split, val, params.data)  # as often per epoch as the repeats say
    if not is_chief():  # another machine of a multi-worker fit: it trains, the chief logs and writes
        model, _ = train_model(params.model, params.train, train, val, classes=params.data.classes)
        logging.info("train: worker done, trainable weights %s", weights_digest(model))
        return
    with new_run(params) as run:
        note = encoder_weights_note(params.model)
        mlflow.set_tag("encoder_weights", note)
        logging.info("encoder weights: %s", note)
        log_split("training", split, fingerprint(split))
        log_split("validation", val, fingerprint(val))
        model, history = train_model(params.model, params.train, train, val, callbacks=[epoch_logger()],
                                     classes=params.data.classes)
        assert_params_unchanged()
        with atomic_path(MODEL) as tmp:
            model.save(tmp)
        write_csv(HISTORY, history)
        summary = {**summarize(history, params.train, train, val), "n_params": int(model.count_params()),
                   "weights_digest": weights_digest(model)}
        write_json(METRICS, summary)
        kept = summary["best_epoch"]  # metrics at this step describe the saved weights; the logged model links them
        mlflow.log_metrics({"val/kept_dice": summary["best_val_dice"], "train/epochs": summary["epochs_run"],
                            "train/images_per_s": summary["train_images_per_s"], "train/seconds": summary["train_seconds"],
                            "data/n_train": summary["n_train"], "data/n_val": summary["n_val"],
                            "model/n_params": summary["n_params"]}, step=kept)
        mlflow.log_artifact(HISTORY, "plots")
        mlflow.log_figure(learning_curves(history), "plots/learning_curves.png")
        write_json(RUN, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "kept_epoch": kept})
        logging.info("train: %s", summary)


if __name__ == "__main__":
    run_stage(main)

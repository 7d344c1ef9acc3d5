"""train: MobileNet U-Net with transfer learning; creates the pipeline execution's MLflow run."""

import logging

import mlflow

from pipeline.config import assert_params_unchanged, load_params
from pipeline.io import atomic_path, write_csv, write_json
from pipeline.tracking import epoch_logger, new_run
from pipeline.training import encoder_weights_note, learning_curves, summarize, train_model
from stages.common import MODEL, RUN, run_stage, split_samples

METRICS, HISTORY = "metrics/train.json", "plots/train_history.csv"


def main() -> None:
    params = load_params()
    train, val = split_samples("train"), split_samples("val")
    with new_run(params, RUN):
        note = encoder_weights_note(params.model)
        mlflow.set_tag("encoder_weights", note)
        logging.info("encoder weights: %s", note)
        model, history = train_model(params.model, params.train, train, val, callbacks=[epoch_logger()])
        assert_params_unchanged()
        with atomic_path(MODEL) as tmp:
            model.save(tmp)
        write_csv(HISTORY, history)
        summary = {**summarize(history, params.train, train, val), "n_params": int(model.count_params())}
        write_json(METRICS, summary)
        mlflow.log_metrics({k: v for k, v in summary.items() if k != "best_epoch"})
        mlflow.log_artifact(HISTORY, "plots")
        mlflow.log_figure(learning_curves(history), "plots/learning_curves.png")
        logging.info("train: %s", summary)


if __name__ == "__main__":
    run_stage(main)

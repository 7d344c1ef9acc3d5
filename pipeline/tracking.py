"""MLflow store resolution and run bookkeeping shared by the train, evaluate and export stages."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from typing import Iterator

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.config import flatten, project_root
from pipeline.io import read_json, write_json


def default_uri() -> str:
    """`mlflow.db` (SQLite) at the project root, resolved from DVC_ROOT so that queued and
    temporary experiments land in the same store."""
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else the project's default store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def setup(experiment: str) -> str:
    """Point MLflow at the store; in the default store, experiments keep artifacts in `mlartifacts/`."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)  # note: this also exports MLFLOW_TRACKING_URI
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = (project_root() / "mlartifacts").as_uri() if uri == default_uri() else None
    return mlflow.create_experiment(experiment, artifact_location=location)


def run_tags() -> dict[str, str]:
    """Git commit and DVC experiment name, so a run can be traced back to its code and params."""
    tags = {"mlflow.source.type": "PROJECT", "pipeline": "dvc"}
    commit = os.environ.get("DVC_EXP_BASELINE_REV") or _git_head()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


def _git_head() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=project_root(), check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


@contextmanager
def new_run(params: dict, run_file: str | os.PathLike) -> Iterator[mlflow.ActiveRun]:
    """Start the pipeline execution's MLflow run, log all params and record its id in `run_file`."""
    experiment_id = setup(params["mlflow"]["experiment"])
    with mlflow.start_run(experiment_id=experiment_id, run_name=os.environ.get("DVC_EXP_NAME"), tags=run_tags()) as run:
        mlflow.log_params({k: str(v)[:6000] for k, v in flatten(params).items()})
        yield run
        write_json(run_file, {"run_id": run.info.run_id, "experiment_id": experiment_id})


@contextmanager
def resume_run(params: dict, run_file: str | os.PathLike) -> Iterator[mlflow.ActiveRun]:
    """Log into the run that trained the model (its id read from the train stage's output)."""
    setup(params["mlflow"]["experiment"])
    run_id = read_json(run_file)["run_id"]
    try:
        MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException as err:
        raise RuntimeError(
            f"{run_file} names MLflow run {run_id}, which is not in the store {tracking_uri()}; "
            f"re-train to create it: dvc repro --force train"
        ) from err
    with mlflow.start_run(run_id=run_id) as run:
        yield run


def epoch_logger():
    """Keras callback sending every epoch's logs to the active MLflow run."""
    import keras

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            mlflow.log_metrics({k: float(v) for k, v in (logs or {}).items()}, step=epoch)

    return EpochLogger()

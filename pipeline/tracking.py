"""MLflow store resolution and run bookkeeping shared by the train, evaluate and export stages."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow
import pandas as pd
import yaml
from mlflow.tracking import MlflowClient

from pipeline.config import Params, assert_params_unchanged, flatten, project_root
from pipeline.data.formats import Sample
from pipeline.io import read_json


def default_uri() -> str:
    """`mlflow.db` (SQLite) at the project root, resolved from DVC_ROOT so that queued and
    temporary experiments land in the same store."""
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else the project's default store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def setup(experiment: str) -> str:
    """Point MLflow at the store; in the default store, experiments keep artifacts in `mlartifacts/`.

    Runs of this experiment that a killed stage left RUNNING are marked KILLED first.
    """
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)  # note: this also exports MLFLOW_TRACKING_URI
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        end_dead_runs(MlflowClient(), found.experiment_id)
        return found.experiment_id
    location = (project_root() / "mlartifacts").as_uri() if uri == default_uri() else None
    return mlflow.create_experiment(experiment, artifact_location=location)


PROCESS_TAG = "facemask.process"
SYSTEM_METRICS_SECONDS = 5


def this_process() -> str:
    """`host:pid:start time`: names the process that holds a run open, also after its pid is reused."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _is_dead(owner: str) -> bool:
    """Whether the process named by `this_process()` is gone; processes of other machines are not judged."""
    host, pid, start = owner.rsplit(":", 2)
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return start != "None" and _start_time(int(pid)) not in (None, start)


def end_dead_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """Mark KILLED the runs left RUNNING by stages that were killed (SIGKILL, power loss); their ids."""
    dead = [r for r in client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
            if PROCESS_TAG in r.data.tags and _is_dead(r.data.tags[PROCESS_TAG])]
    for run in dead:
        client.set_tag(run.info.run_id, "facemask.interrupted", f"process {run.data.tags[PROCESS_TAG]} ended without closing the run")
        client.set_terminated(run.info.run_id, "KILLED")
        logging.getLogger(__name__).warning("MLflow run %s was left running by a killed stage: marked KILLED", run.info.run_id)
    return [r.info.run_id for r in dead]


def run_tags() -> dict[str, str]:
    """Git commit and DVC experiment name, so a run can be traced back to its code and params."""
    tags = {"mlflow.source.type": "PROJECT", "pipeline": "dvc", PROCESS_TAG: this_process()}
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


def run_name(params: Params) -> str:
    """The DVC experiment's name, else the preset and data source: runs tell apart at a glance."""
    return os.environ.get("DVC_EXP_NAME") or f"{params.preset}-{params.data.name}"


def describe_run(params: Params, baseline: dict | None, commit: str | None) -> str:
    """The run's description (the UI's Description box): data, weights, preset, what changed."""
    lines = [f"Caveat: {params.caveat}." if params.caveat else "",
             "Data: " + " + ".join(s.type + (f" ({s.path})" if s.path else "") + (f" x{s.repeat} an epoch" if s.repeat > 1 else "")
                                   for s in params.data.sources) + "."
             + "".join(f" Images with {c} faces x{n} an epoch." for c, n in params.data.class_repeat.items()),
             f"Encoder weights: {params.model.weights}; preset: {params.preset}."]
    if baseline is None:
        lines.append("No baseline params to compare with (not a git checkout).")
    else:
        now, before = flatten(params.to_dict()), flatten(baseline)
        changed = [f"{k}: {before.get(k)!r} -> {v!r}" for k, v in now.items() if before.get(k) != v]
        where = f"the baseline commit {commit[:7]}" if commit else "the baseline"
        lines.append(f"Changed against {where}: " + "; ".join(changed) + "." if changed else f"Same params as {where}.")
    return "\n".join(line for line in lines if line)


def baseline_params(commit: str | None) -> dict | None:
    """params.yaml as committed at `commit` (the experiment's baseline), or None."""
    if not commit:
        return None
    try:
        out = subprocess.run(["git", "show", f"{commit}:params.yaml"], capture_output=True, text=True, cwd=project_root(),
                             check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return yaml.safe_load(out.stdout)


@contextmanager
def new_run(params: Params) -> Iterator[mlflow.ActiveRun]:
    """Start the pipeline execution's MLflow run: name, description, all params, system metrics."""
    experiment_id = setup(params.mlflow.experiment)
    tags = run_tags()
    commit = tags.get("mlflow.source.git.commit")
    tags["mlflow.note.content"] = describe_run(params, baseline_params(commit), commit)
    mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_SECONDS)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name(params), tags=tags, log_system_metrics=True) as run:
        mlflow.log_params({k: str(v)[:6000] for k, v in flatten(params.to_dict()).items()})
        yield run


def log_split(context: str, samples: list[Sample], digest: str) -> None:
    """Log a split as an MLflow dataset (the runs table's Dataset column): one row per image.

    The digest is the split's content fingerprint (images and boxes), the one versions are
    compared by; the DVC hash of the extracted data rides along as a tag when dvc.lock has it.
    """
    table = pd.DataFrame({"image_id": [s.image_id for s in samples], "width": [s.width for s in samples],
                          "height": [s.height for s in samples], "n_faces": [len(s.boxes) for s in samples]})
    with warnings.catch_warnings():  # MLflow's notes on integer columns and on two equal local-file source types
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(table, source=str(Path.cwd() / "data" / "extracted"), name=context, digest=digest)
        mlflow.log_input(dataset, context=context, tags={"dvc.md5": md5} if (md5 := _extracted_md5()) else None)


def _extracted_md5() -> str | None:
    try:
        lock = yaml.safe_load(Path("dvc.lock").read_text())
        return next(o["md5"] for o in lock["stages"]["extract"]["outs"] if o["path"] == "data/extracted")
    except (OSError, KeyError, StopIteration, TypeError, yaml.YAMLError):
        return None


@contextmanager
def resume_run(params: Params, run_file: str | os.PathLike) -> Iterator[mlflow.ActiveRun]:
    """Log into the run that trained the model (its id read from the train stage's output)."""
    setup(params.mlflow.experiment)
    run_id = read_json(run_file)["run_id"]
    try:
        MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException as err:
        raise RuntimeError(
            f"{run_file} names MLflow run {run_id}, which is not in the store {tracking_uri()}; "
            f"re-train to create it: dvc repro --force train"
        ) from err
    with mlflow.start_run(run_id=run_id, tags={PROCESS_TAG: this_process()}) as run:
        yield run


def namespaced(keras_key: str) -> str:
    """Keras' `loss`, `val_dice` ... as `train/loss`, `val/dice`: the UI groups its charts by prefix."""
    return f"val/{keras_key[4:]}" if keras_key.startswith("val_") else f"train/{keras_key}"


def epoch_logger():
    """Keras callback sending every epoch's logs to the active MLflow run."""
    import keras

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            assert_params_unchanged()  # stop a run whose params another `dvc exp run` replaced
            mlflow.log_metrics({namespaced(k): float(v) for k, v in (logs or {}).items()}, step=epoch)

    return EpochLogger()

"""What is recorded is what ran: serving changes, concurrent runs and exports, killed runs.

Real `dvc`, a real SQLite MLflow store, real processes killed with real signals.
"""

import json
import multiprocessing
import os
import signal
import subprocess
import time

import mlflow
import pytest
import yaml

from pipeline.serving.registry import register_once
from tests.pipeline_fixture import TINY, client, deep_merge, env, make_clone, sh

pytestmark = pytest.mark.slow  # trains a model or starts a server

NAME = "face-segmenter"


def versions(c, **tags) -> list:
    found = c.search_model_versions(f"name = '{NAME}'")
    return sorted((v for v in found if all(v.tags.get(k) == x for k, x in tags.items())), key=lambda v: int(v.version))


def served_config(project, version) -> dict:
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    path = mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version}")
    return json.loads((__import__("pathlib").Path(path) / "artifacts" / "serving_config.json").read_text())


@pytest.mark.xdist_group("project")
def test_a_changed_serving_setting_is_a_new_version_never_a_silent_reuse(project):
    c = client(project)
    run_id = json.loads((project / "models/run.json").read_text())["run_id"]
    first = versions(c, source_run_id=run_id)
    try:
        sh(project, "dvc", "exp", "run", "-S", "evaluate.min_area=9")  # evaluate and export run again, train does not
        registration = json.loads((project / "export/registration.json").read_text())
        now = versions(c, source_run_id=run_id)
        assert len(now) == len(first) + 1 and registration["version"] == int(now[-1].version)
        assert served_config(project, registration["version"])["min_area"] == 9
        assert json.loads((project / "eval/serving_config.json").read_text())["min_area"] == 9
        assert "up to date" in sh(project, "dvc", "status")
    finally:
        sh(project, "git", "checkout", "params.yaml")
    sh(project, "dvc", "exp", "run")  # back to the committed settings: the version registered for them again
    registration = json.loads((project / "export/registration.json").read_text())
    assert registration["version"] == int(first[0].version) and len(versions(c, source_run_id=run_id)) == len(first) + 1
    assert served_config(project, registration["version"])["min_area"] == 4


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def _export(uri: str, run_id: str, barrier, results) -> None:
    """One exporter process: both look, find nothing, wait for each other, then both register."""
    mlflow.set_tracking_uri(uri)

    def log_model():
        barrier.wait(timeout=120)
        with mlflow.start_run(run_id=run_id):
            return mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=[])

    version = register_once(mlflow.MlflowClient(), NAME, run_id, "digest1", log_model, {"test_dice": "0.5"})
    results.put(int(version.version))


def test_two_exports_at_once_register_one_version(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("race", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        pass
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_export, args=(uri, run.info.run_id, barrier, results)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert [w.exitcode for w in workers] == [0, 0]
    chosen = {results.get(timeout=5), results.get(timeout=5)}
    left = mlflow.MlflowClient().search_model_versions(f"name = '{NAME}'")
    assert chosen == {int(v.version) for v in left} and len(left) == 1  # both answered the one version kept


# --- interrupted and concurrent runs, in a clone of their own ---------------------------------------------------

@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    smaller = deep_merge(TINY, {"data": {"synthetic": {"n_images": 32}}, "train": {"finetune_epochs": 4}})
    return make_clone(tmp_path_factory.mktemp("interrupted"), smaller)


def start(root, *cmd) -> subprocess.Popen:
    client(root).search_experiments()  # create the store's tables now, not while the pipeline creates them
    return subprocess.Popen(cmd, cwd=root, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def wait_for_running_run(root, proc, known: set[str], timeout: float = 600):
    """The new RUNNING run of the pipeline `proc` runs, once training has begun logging epochs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the pipeline ended before training began:\n{proc.stdout.read()[-3000:]}"
        c = client(root)
        experiment = c.get_experiment_by_name("facemask")
        runs = c.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'") if experiment else []
        started = [r for r in runs if r.info.run_id not in known and c.get_metric_history(r.info.run_id, "train/loss")]
        if started:
            return started[0]
        time.sleep(0.5)  # polling interval while waiting for the condition above
    raise TimeoutError("no training run started")


def all_runs(root) -> list:
    c = client(root)
    experiment = c.get_experiment_by_name("facemask")
    return c.search_runs([experiment.experiment_id]) if experiment else []


@pytest.mark.xdist_group("clone")  # the next test goes on in the clone this one ran in
def test_a_killed_training_run_is_marked_killed_by_the_next_repro(clone):
    proc = start(clone, "dvc", "repro")
    run = wait_for_running_run(clone, proc, set())
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert client(clone).get_run(run.info.run_id).info.status == "RUNNING"  # what a kill leaves behind

    sh(clone, "dvc", "repro", timeout=900)
    c = client(clone)
    killed = c.get_run(run.info.run_id)
    assert killed.info.status == "KILLED" and "ended without closing the run" in killed.data.tags["facemask.interrupted"]
    (finished,) = [r for r in all_runs(clone) if r.info.run_id != run.info.run_id]
    assert finished.info.status == "FINISHED"
    assert c.get_model_version_by_alias(NAME, "champion").run_id == finished.info.run_id
    assert not [v for v in c.search_model_versions(f"name = '{NAME}'") if v.run_id == run.info.run_id]


@pytest.mark.xdist_group("clone")
def test_a_second_exp_run_in_the_same_workspace_cannot_change_what_the_first_records(clone):
    sh(clone, "git", "add", "-A")
    sh(clone, "git", "commit", "-qm", "pipeline outputs")
    lock_before = (clone / "dvc.lock").read_text()
    known = {r.info.run_id for r in all_runs(clone)}
    n_versions = len(client(clone).search_model_versions(f"name = '{NAME}'"))
    first = start(clone, "dvc", "exp", "run", "-S", "train.finetune_epochs=400")  # stopped long before its end
    run = wait_for_running_run(clone, first, known)
    second = subprocess.run(["dvc", "exp", "run", "-S", "train.seed=7"], cwd=clone, env=env(), capture_output=True,
                            text=True, timeout=300)
    output = first.communicate(timeout=900)[0]
    if yaml.safe_load((clone / "params.yaml").read_text())["train"]["seed"] == 7:  # DVC wrote the refused run's value
        assert second.returncode != 0
        assert first.returncode != 0 and "params.yaml changed while this stage ran" in output, output[-3000:]
        assert client(clone).get_run(run.info.run_id).info.status == "FAILED"
        assert (clone / "dvc.lock").read_text() == lock_before  # nothing of the mixed-up run was recorded
        assert len(client(clone).search_model_versions(f"name = '{NAME}'")) == n_versions
    else:  # a DVC that leaves params.yaml alone: then the first run must record exactly what it ran
        assert first.returncode == 0, output[-3000:]
        logged = client(clone).get_run(run.info.run_id).data.params
        assert logged["train.finetune_epochs"] == "400" and logged["train.seed"] == "42"
    sh(clone, "git", "checkout", "params.yaml")

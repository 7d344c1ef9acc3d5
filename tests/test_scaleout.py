"""Past one folder: a PostgreSQL tracking server, DVC remote storage, training on several devices and machines."""

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests

from ops.servers import free_port, scoring_server
from ops.tracking_server import ServerError, mlflow_server, pg_bin, postgres
from pipeline.serving.client import request_body
from tests.conftest import ROOT
from tests.pipeline_fixture import TINY, client, deep_merge, env, make_clone, sh, synthetic_voc

pytestmark = pytest.mark.slow

# Short, and streamed: the train stage reads its images from disk at every step (train.stream).
QUICK = deep_merge(TINY, {"train": {"warmup_epochs": 1, "finetune_epochs": 2, "stream": True},
                          "evaluate": {"tta_scales": [1.0], "flip_tta": False}})


def postgres_or_skip() -> None:
    """PostgreSQL's server programs, or a loud skip; `.ci/run` installs them and sets REQUIRE_POSTGRES=1 (then: fail)."""
    try:
        pg_bin("initdb")
    except ServerError as err:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"NOT TESTED: the PostgreSQL tracking server ({err})")


def test_pipeline_registry_and_serving_work_unchanged_against_a_postgres_tracking_server(tmp_path):
    """The tiny pipeline, here with labelled faces from a VOC folder, face cores and CenterNet's head (model.core_scale,
    model.centres), against the server: the served answer carries each face's label over HTTP."""
    postgres_or_skip()
    state = Path(tempfile.mkdtemp(prefix="facemask-tracking-"))  # under /tmp: reachable by the `postgres` user
    try:
        with postgres(state, free_port()) as backend, \
                mlflow_server(backend, state / "artifacts", free_port(), log=tmp_path / "server.log") as url:
            assert backend.startswith("postgresql+psycopg://postgres:") and "@127.0.0.1:" in backend
            password = (state / "postgres-password").read_text().strip()
            assert oct((state / "postgres-password").stat().st_mode)[-3:] == "600"
            assert not any(password in line for line in command_lines())  # in no process's arguments
            voc = synthetic_voc(tmp_path / "voc", 48, seed=1)
            labelled = deep_merge(QUICK, {"data": {"sources": [{"type": "voc", "path": str(voc)}],
                                                   "labels": {"masked": "with_mask", "bare": "without_mask"}},
                                          "model": {"core_scale": 0.75, "centres": True},
                                          "evaluate": {"centre_threshold": 0.005}})
            project = make_clone(tmp_path / "project", labelled)
            sh(project, "dvc", "repro", extra_env={"MLFLOW_TRACKING_URI": url})
            assert not (project / "mlflow.db").exists() and not (project / "mlartifacts").exists()  # all on the server

            api = f"{url}/api/2.0/mlflow"
            experiment = requests.get(f"{api}/experiments/get-by-name", params={"experiment_name": "facemask"}).json()
            runs = requests.post(f"{api}/runs/search", json={"experiment_ids": [experiment["experiment"]["experiment_id"]]}).json()
            (run,) = runs["runs"]
            assert run["info"]["status"] == "FINISHED"
            params = {p["key"]: p["value"] for p in run["data"]["params"]}
            assert params["model.input_size"] == "64" and params["train.finetune_epochs"] == "2"
            assert params["train.stream"] == "True"
            metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
            evaluation = json.loads((project / "metrics/eval.json").read_text())
            assert metrics["test/dice"] == pytest.approx(evaluation["dice"])
            alias = requests.get(f"{api}/registered-models/alias", params={"name": "face-segmenter", "alias": "champion"})
            assert alias.status_code == 200
            version = alias.json()["model_version"]
            assert version["version"] == "1" and version["run_id"] == run["info"]["run_id"]
            assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:/")  # proxied: clients never see the path
            assert list((state / "artifacts").rglob("MLmodel")) and list((state / "artifacts").rglob("model.onnx"))

            with scoring_server("models:/face-segmenter@champion", url, log_path=tmp_path / "serve.log") as server:
                photos = sorted((project / "data/extracted/images").iterdir())[:8]
                # low thresholds: three epochs at 64 px find few faces, and the labels of found ones are checked
                body = request_body([base64.b64encode(photo.read_bytes()).decode() for photo in photos], 0.05)
                answer = requests.post(f"{server.url}/invocations", json=body, timeout=60)
                assert answer.status_code == 200, answer.text
                predictions = answer.json()["predictions"]
                assert len(predictions) == len(photos)
                for prediction in predictions:
                    boxes, faces = json.loads(prediction["boxes"]), json.loads(prediction["faces"])
                    assert prediction["n_faces"] == len(boxes) and prediction["mask"]
                    assert [f["box"] for f in faces] == [b[:4] for b in boxes]
                    assert all(f["label"] in ("with_mask", "without_mask") and 0 < f["label_score"] <= 1 for f in faces)
                assert sum(p["n_faces"] for p in predictions) > 0
    finally:
        shutil.rmtree(state, ignore_errors=True)


def command_lines():
    """Every running process's arguments, as any local user can read them."""
    for file in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            yield file.read_bytes().decode(errors="replace")
        except OSError:  # a process that ended meanwhile
            continue


def test_a_missing_postgres_is_an_error_that_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerError, match="apt-get install postgresql"):
        pg_bin("initdb", debian=tmp_path)
    (tmp_path / "15" / "bin").mkdir(parents=True)
    (tmp_path / "15" / "bin" / "initdb").touch()
    assert pg_bin("initdb", debian=tmp_path) == str(tmp_path / "15" / "bin" / "initdb")


def digests(root: Path, paths: list[str]) -> dict[str, str]:
    files = sorted(f for p in paths for f in ([root / p] if (root / p).is_file() else (root / p).rglob("*")) if f.is_file())
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.mark.xdist_group("project")
def test_dvc_push_then_pull_into_an_empty_cache_restores_data_and_models(project, tmp_path):
    clone = tmp_path / "clone"
    shutil.copytree(project, clone, symlinks=True)
    remote = tmp_path / "remote"
    sh(clone, "dvc", "remote", "modify", "--local", "storage", "url", str(remote))  # a user's own remote, not committed
    outputs = ["data/extracted", "data/split.csv", "models/model.keras", "export/model.onnx"]
    before = digests(clone, outputs)
    assert len(before) > 48 and "models/model.keras" in before
    sh(clone, "dvc", "push")
    assert sum(1 for f in remote.rglob("*") if f.is_file()) >= len(before)
    for path in [*outputs, ".dvc/cache"]:
        target = clone / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    sh(clone, "dvc", "pull")
    assert digests(clone, outputs) == before
    assert "up to date" in sh(clone, "dvc", "status")


def test_mirrored_training_splits_every_batch_over_the_local_replicas(tmp_path):
    """train.distribute: mirrored. Without a GPU the process splits its CPU into two logical devices, as a
    machine with two GPUs would have two: the model trains on both replicas and saves as one model."""
    code = """
import json, sys
from dataclasses import replace
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from pipeline.data.synthetic import generate
from pipeline.model.training import summarize, train_model
from tests.conftest import PARAMS
samples = generate(24, 64, 64, 2, seed=5)
model_cfg = replace(PARAMS.model, input_size=64, weights="none", decoder_filters=(8, 8, 8, 8))
cfg = replace(PARAMS.train, distribute="mirrored", batch_size=4, warmup_epochs=0, finetune_epochs=3, patience=0)
model, history = train_model(model_cfg, cfg, samples[:20], samples[20:])
model.save(sys.argv[1])
print(json.dumps(summarize(history, cfg, samples[:20], samples[20:])))
"""
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model.keras")], cwd=ROOT, env=env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["replicas"] == 2 and summary["epochs_run"] == 3 and 0 <= summary["best_val_dice"] <= 1
    from pipeline.model.network import load_model

    assert load_model(tmp_path / "model.keras").count_params() > 0


def test_two_workers_train_one_model_logged_once_by_the_chief_with_the_same_weights(tmp_path):
    """train.distribute: multi_worker on two processes on 127.0.0.1: the chief runs the stage under
    `dvc repro`, the other worker the same command by hand, as a second machine would."""
    project = make_clone(tmp_path / "project", deep_merge(QUICK, {"train": {"distribute": "multi_worker"}}))
    sh(project, "dvc", "repro", "split")
    ports = [free_port(), free_port()]

    def worker(index: int, *cmd: str) -> subprocess.Popen:
        cluster = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
        return subprocess.Popen(cmd, cwd=project, env={**env(), "TF_CONFIG": json.dumps(cluster)}, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    chief, other = worker(0, "dvc", "repro", "train"), worker(1, sys.executable, "-m", "stages.train")
    logs = [p.communicate(timeout=600)[0] for p in (chief, other)]
    assert chief.returncode == 0 and other.returncode == 0, "\n\n".join(log[-3000:] for log in logs)
    summary = json.loads((project / "metrics/train.json").read_text())
    assert summary["replicas"] == 2 and summary["epochs_run"] == 3
    (digest,) = re.findall(r"worker done, trainable weights (\w+)", logs[1])
    assert summary["weights_digest"] == digest  # both workers ended with the same weights
    assert "worker done" not in logs[0] and (project / "models/model.keras").is_file()
    c = client(project)
    (run,) = c.search_runs([c.get_experiment_by_name("facemask").experiment_id])  # one run: the chief's
    assert run.data.params["train.distribute"] == "multi_worker"
    assert len(c.get_metric_history(run.info.run_id, "val/dice")) == 3

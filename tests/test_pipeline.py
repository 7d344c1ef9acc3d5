"""The real pipeline: `dvc repro` and queued `dvc exp run` in a temporary clone, checked in MLflow."""

import json
import subprocess

import cv2
import mlflow
import pandas as pd
import pytest

from tests.pipeline_fixture import TINY, client, env, sh

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("project")]  # real pipeline runs, one shared clone


def test_repro_tracks_one_run_and_registers_the_champion(project):
    c = client(project)
    runs = c.search_runs([c.get_experiment_by_name("facemask").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.artifact_uri.startswith((project / "mlartifacts").as_uri())
    assert not (project / "mlruns").exists()
    assert run.data.params["model.input_size"] == "64" and run.data.params["data.sources"] == "[{'type': 'synthetic', 'path': None, 'repeat': 1}]"
    assert run.data.tags["encoder_weights"].startswith("random init")
    assert len(run.data.tags["mlflow.source.git.commit"]) == 40
    assert len(c.get_metric_history(run.info.run_id, "val/dice")) == json.loads((project / "metrics/train.json").read_text())["epochs_run"]
    evaluation = json.loads((project / "metrics/eval.json").read_text())
    assert run.data.metrics["test/dice"] == pytest.approx(evaluation["dice"])
    assert 0.0 <= evaluation["dice"] <= 1.0 and evaluation["n_images"] == 7 and 0.1 <= evaluation["threshold"] <= 0.9
    serving = json.loads((project / "eval/serving_config.json").read_text())
    assert serving["tta_sizes"] == [64, 96] and serving["flip_tta"] is True and serving["separate_faces"] is True
    assert json.loads((project / "metrics/train.json").read_text())["epochs_run"] == 13  # patience 0: no early stop
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id, "gallery")}
    assert len(artifacts) == 2
    assert {a.path for a in c.list_artifacts(run.info.run_id, "plots")} >= {"plots/train_history.csv", "plots/thresholds.csv",
                                                                             "plots/learning_curves.png"}
    champion = c.get_model_version_by_alias("face-segmenter", "champion")
    assert champion.run_id == run.info.run_id and int(champion.version) == 1
    assert champion.tags["test_fingerprint"] == evaluation["test_fingerprint"]
    registration = json.loads((project / "export/registration.json").read_text())
    assert registration["alias"] == "champion" and registration["version"] == 1 and registration["engine"] == "onnx"
    parity = json.loads((project / "metrics/export.json").read_text())  # the served ONNX model against the evaluated Keras one
    assert parity["onnx_dice"] == pytest.approx(evaluation["dice"], abs=0.005) and parity["keras_dice"] == pytest.approx(evaluation["dice"])
    assert parity["max_prob_difference"] < 1e-3 and parity["n_images"] == 7 and parity["n_compared"] == 7
    assert run.data.metrics["export/dice_difference"] == pytest.approx(parity["dice_difference"])
    assert (project / "export/model.onnx").stat().st_size > 0
    assert (project / "plots/confusion.csv").read_text().strip() == "actual,predicted"  # face-only: no classes to confuse
    assert "ONNX parity on the test images" in champion.description and "Served by onnx" in champion.description
    extract = json.loads((project / "metrics/extract.json").read_text())
    assert extract["n_images"] == 48 and extract["source"] == "synthetic" and extract["classes"] == {}
    assert extract["sources"] == [{"type": "synthetic", "path": None, "n_images": 48, "n_faces": extract["n_faces"], "classes": {}}]
    split = pd.read_csv(project / "data/split.csv")
    assert split["split"].value_counts().to_dict() == {"train": 34, "val": 7, "test": 7}


def test_mlflow_shows_names_descriptions_datasets_and_the_linked_model(project):
    """What the MLflow UI shows, read back through the client."""
    c = client(project)
    (run,) = c.search_runs([c.get_experiment_by_name("facemask").experiment_id])
    evaluation = json.loads((project / "metrics/eval.json").read_text())
    kept = json.loads((project / "models/run.json").read_text())["kept_epoch"]
    assert run.info.run_name == "none-synthetic"
    description = run.data.tags["mlflow.note.content"]
    assert "synthetic demo" in description and "Same params as the baseline commit" in description
    inputs = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "testing"}
    assert inputs["testing"].digest == evaluation["test_fingerprint"] and inputs["testing"].name == "testing"
    assert any(k.startswith("system/") for k in run.data.metrics)  # system metrics are on
    assert {"train/loss", "train/dice", "val/loss", "val/dice", "test/dice", "data/n_train"} <= set(run.data.metrics)
    assert all("/" in k for k in run.data.metrics)  # namespaced: the UI groups the charts
    version = c.get_model_version_by_alias("face-segmenter", "champion")
    assert version.source.startswith("models:/m-")  # registered from the logged model ...
    model = c.get_logged_model(version.source.removeprefix("models:/"))
    assert model.name == "face-segmenter" and model.source_run_id == run.info.run_id
    linked_versions = [(m["name"], str(m["version"])) for m in json.loads(model.tags["mlflow.modelVersions"])]
    assert linked_versions == [("face-segmenter", "1")]  # ... and linked to it, as the model's page shows
    linked = {m.key: m for m in model.metrics}
    assert linked["test/dice"].value == pytest.approx(evaluation["dice"]) and linked["test/dice"].step == kept
    assert linked["val/dice"].step == kept  # the kept weights' epoch, not step 0
    assert "Test dice" in version.description and "Alias champion: first registered version" in version.description
    assert "compared by dice" in version.description and version.tags["primary_metric"] == "test_dice"
    assert "synthetic demo" in version.description
    assert run.data.tags["alias"] == "champion"
    gallery = [a.path for a in c.list_artifacts(run.info.run_id, "gallery")]
    panel = cv2.imread(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=gallery[0],
                                                           tracking_uri=f"sqlite:///{project / 'mlflow.db'}"))
    assert panel.shape[0] >= 480 and panel.shape[1] > panel.shape[0]  # truth beside prediction, readable size


def test_noop_repro_and_rerun_export_adds_no_version(project):
    assert "up to date" in sh(project, "dvc", "repro")
    sh(project, "dvc", "repro", "--force", "--single-item", "export")
    assert [int(v.version) for v in client(project).search_model_versions("name = 'face-segmenter'")] == [1]
    assert "dice" in sh(project, "dvc", "metrics", "show")


def _find(tree, key: str):
    """Every value stored under `key` anywhere in a JSON tree (dvc exp show --json nests deeply)."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from ([v] if k == key else []) + list(_find(v, key))
    elif isinstance(tree, list):
        for v in tree:
            yield from _find(v, key)


def test_a_queued_experiment_lands_in_the_same_store_and_records_what_ran(project):
    """A queued experiment (run by DVC's worker in a temporary copy) picks a preset that sets
    finetune_epochs 4 and overrides it with 2: DVC, MLflow and the training itself all say 2, and the
    run, its model version and its alias land in the project's store. Its source's `repeat: 2` trains
    on the same split's images twice an epoch."""
    (project / "conf/preset/quick.yaml").write_text("# @package _global_\npreset: quick\ntrain:\n  warmup_epochs: 1\n"
                                                     "  finetune_epochs: 4\n")
    sh(project, "git", "add", "conf/preset/quick.yaml")
    sh(project, "git", "commit", "-qm", "a quick preset")
    sh(project, "dvc", "exp", "run", "--queue", "-S", "preset=quick", "-S", "train.finetune_epochs=2",
       "-S", "data.sources=[{type:synthetic,path:null,repeat:2}]")
    sh(project, "dvc", "exp", "run", "--run-all", timeout=900)
    c = client(project)
    runs = c.search_runs([c.get_experiment_by_name("facemask").experiment_id])
    assert len(runs) == 2
    (quick,) = [r for r in runs if "dvc.exp_name" in r.data.tags]
    assert quick.data.params["preset"] == "quick" and quick.data.params["train.finetune_lr"] == str(TINY["train"]["finetune_lr"])
    assert quick.data.params["train.finetune_epochs"] == "2" and quick.data.params["train.warmup_epochs"] == "1"
    assert len(c.get_metric_history(quick.info.run_id, "train/loss")) == 1 + 2  # what trained
    (first,) = [r for r in runs if r is not quick]
    assert quick.data.metrics["data/n_train"] == 2 * first.data.metrics["data/n_train"]  # the same split, twice
    assert "repeat': 2" in quick.data.params["data.sources"] and "synthetic x2 an epoch" in quick.data.tags["mlflow.note.content"]
    assert "test/dice" in quick.data.metrics
    versions = c.search_model_versions("name = 'face-segmenter'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    champion = c.get_model_version_by_alias("face-segmenter", "champion")
    best = max(float(v.tags["test_dice"]) for v in versions)  # same test set: promotion keeps the best
    assert float(champion.tags["test_dice"]) == best
    assert len({v.tags["test_fingerprint"] for v in versions}) == 1
    holders = {str(version): alias for alias, version in c.get_registered_model("face-segmenter").aliases.items()}
    assert sorted(holders.values()) == ["challenger", "champion"]
    for v in versions:  # the runs' alias tags follow the registry as the aliases move
        assert c.get_run(v.run_id).data.tags["alias"] == holders[str(v.version)]
    shown = json.loads(subprocess.run(["dvc", "exp", "show", "--json"], cwd=project, env=env(), capture_output=True,
                                      text=True, check=True).stdout)
    names = [n for n in _find(shown, "name") if isinstance(n, str)]
    assert quick.data.tags["dvc.exp_name"] in names
    recorded = [p for p in _find(shown, "data") if isinstance(p, dict) and p.get("preset") == "quick"]
    assert recorded and all(p["train"]["finetune_epochs"] == 2 and p["train"]["warmup_epochs"] == 1 for p in recorded)
    assert 3 in [m.get("epochs_run") for m in _find(shown, "data") if isinstance(m, dict) and "epochs_run" in m]
    assert not (project / ".dvc" / "tmp" / "exps" / "mlflow.db").exists()

"""One typed configuration: composed from conf/ as DVC composes it, validated once, complete dvc.yaml deps."""

import ast
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, Params, ServingConfig, build, compose
from tests.conftest import PARAMS, ROOT


def test_committed_params_yaml_is_conf_composed_as_dvc_exp_run_writes_it():
    assert yaml.safe_load((ROOT / "params.yaml").read_text()) == compose([])


def test_a_preset_and_an_override_of_a_key_it_sets_compose_to_the_override():
    params = build(Params, compose(["preset=widerface", "train.finetune_epochs=20"]), "composed")
    assert params.preset == "widerface" and params.train.finetune_epochs == 20  # the preset's [245, 60] is replaced
    assert params.model.input_size == 512 and params.train.member_epochs == [20, 20]
    assert build(Params, compose(["preset=course"]), "composed").model.decoder == "bare"


def raw(**changes) -> dict:
    out = compose([])
    for key, value in changes.items():
        section, name = key.split("__")
        out[section][name] = value
    return out


@pytest.mark.parametrize("changes, message", [
    ({"train__finetune_epoch": 3}, "params.yaml.train: unknown key finetune_epoch (a typo?)"),
    ({"train__batch_size": "8"}, "params.yaml.train.batch_size: '8' is not an integer"),
    ({"train__loss": "mse"}, "params.yaml.train.loss: 'mse' is not one of 'dice', 'bce_dice'"),
    ({"model__input_size": 100}, "model.input_size: must be a positive multiple of 32"),
    ({"evaluate__threshold_ratio": 2}, "evaluate.threshold_ratio: must be between 0 (off) and 1"),
    ({"train__finetune_epochs": [3, 1, 2]}, "lists 3 members' epochs but train.ensemble is 1"),
    ({"train__use_val": True}, "train.patience: must be 0 with train.use_val"),
    ({"train__use_val": True, "train__patience": 0}, "evaluate.threshold: must be set with train.use_val"),
    ({"train__warmup_epochs": 0, "train__finetune_epochs": 0}, "nothing to train"),
    ({"export__limits": {"min_side": 8, "max_side": 4096}}, "params.yaml.export.limits: missing keys max_bytes, max_images"),
    ({"data__sources": []}, "data.sources: must list at least one source"),
    ({"data__sources": [{"type": "voc", "path": None}]}, "data.sources: a 'voc' source needs a path"),
    ({"data__sources": [{"type": "voc", "pth": "x"}]}, "params.yaml.data.sources[0]: unknown key pth (a typo?)"),
    ({"data__sources": [{"type": "coco", "path": "x"}]}, "data.sources[0].type: 'coco' is not one of 'synthetic'"),
    ({"data__labels": {"with_mask": 1}}, "params.yaml.data.labels.with_mask: 1 is not a string"),
    ({"data__labels": ["with_mask"]}, "params.yaml.data.labels: ['with_mask'] is not a mapping"),
    ({"train__distribute": "multi_worker", "train__ema_momentum": 0.99}, "train.ema_momentum: must be 0 with train.distribute"),
    ({"train__distribute": "horovod"}, "train.distribute: 'horovod' is not one of 'none', 'mirrored', 'multi_worker'"),
])
def test_bad_settings_are_errors_naming_the_key(changes, message):
    with pytest.raises(ConfigError) as err:
        build(Params, raw(**changes), "params.yaml")
    assert message in str(err.value)


def test_int_is_accepted_where_a_float_is_meant_and_lists_become_tuples():
    params = build(Params, raw(evaluate__threshold_ratio=0, evaluate__tta_scales=[1, 2]), "params.yaml")
    assert params.evaluate.threshold_ratio == 0.0 and params.evaluate.tta_scales == (1.0, 2.0)
    assert yaml.safe_load(yaml.safe_dump(params.to_dict())) == params.to_dict()


def test_serving_config_round_trips_and_refuses_unknown_keys():
    config = ServingConfig(128, (128, 256), True, False, 0.4, 0.0, 4, "abc", 0.6, PARAMS.export.limits, "")
    assert ServingConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown key split_faces"):
        ServingConfig.from_dict({**config.to_dict(), "split_faces": True})
    assert replace(config, min_area=9) != config


def project_imports(module: str) -> set[str]:
    """Project modules `module` imports (top-level and inside functions), transitively."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:k]) + ".__init__" for k in range(1, len(parts)) if not name.endswith("__init__")]  # run first
        if not (ROOT / (name.replace(".", "/") + ".py")).is_file():
            continue
        for node in ast.walk(ast.parse((ROOT / (name.replace(".", "/") + ".py")).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                candidates = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            todo += [c for c in candidates if (ROOT / (c.replace(".", "/") + ".py")).is_file()]
    return {name for name in seen if (ROOT / (name.replace(".", "/") + ".py")).is_file()}


def test_every_stage_depends_on_all_the_code_it_runs():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        module = stage["cmd"].split("python -m ", 1)[1].split()[0]
        deps = [Path(d) for d in stage["deps"]]
        for imported in project_imports(module):
            file = Path(imported.replace(".", "/") + ".py")
            assert any(file == d or d in file.parents for d in deps), f"dvc.yaml stage {name} runs {file} but does not depend on it"


def test_committed_dvc_lock_matches_the_code_and_params():
    """`dvc status` may miss outputs (a fresh clone has none) but no code or param may differ from dvc.lock."""
    import json
    import subprocess
    import sys

    dvc = Path(sys.executable).with_name("dvc")
    status = json.loads(subprocess.run([str(dvc), "status", "--json"], cwd=ROOT, capture_output=True, text=True,
                                       check=True).stdout or "{}")
    changed = {stage: change for stage, entries in status.items() for entry in entries if isinstance(entry, dict)
               for change in [{k: v for k, v in entry.get("changed deps", {}).items() if v != "deleted"}] if change}
    assert not changed, f"dvc.lock is stale, run `make run` and commit dvc.lock: {changed}"


def test_centres_refuse_test_time_scales_they_cannot_size():
    with pytest.raises(ConfigError, match="evaluate.tta_scales"):
        Params(**{**PARAMS.__dict__, "model": replace(PARAMS.model, centres=True),
                  "evaluate": replace(PARAMS.evaluate, tta_scales=(1.0, 2.0))})

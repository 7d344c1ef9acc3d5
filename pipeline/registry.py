"""Log the pyfunc, register it, and move the `champion` alias only on a fair win."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"


def log_pyfunc(keras_path: Path, config_path: Path, example: pd.DataFrame, output: pd.DataFrame, config: dict,
               requirements: list[str]):
    """Log FaceSegmenter with its Keras model, config, signature (params schema) and input example."""
    from pipeline.serving import FaceSegmenter

    params = {"threshold": float(config["threshold"]), "threshold_ratio": float(config["threshold_ratio"]),
              "min_area": int(config["min_area"])}
    signature = infer_signature(example, output, params=params)
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=FaceSegmenter(),
        artifacts={"keras_model": str(keras_path), "config": str(config_path)},
        code_paths=[str(Path(__file__).parent)],
        signature=signature,
        input_example=(example, {"threshold": float(config["threshold"])}),
        pip_requirements=requirements,
    )


def find_version(client: MlflowClient, name: str, run_id: str):
    """The version already registered from this run, if any (re-running export adds none)."""
    versions = client.search_model_versions(f"name = '{name}' and tags.source_run_id = '{run_id}'")
    return min(versions, key=lambda v: int(v.version)) if versions else None


def register(client: MlflowClient, model_uri: str, name: str, run_id: str, tags: dict[str, str]):
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
            raise
    return client.create_model_version(name, model_uri, run_id=run_id, tags={"source_run_id": run_id, **tags})


def promote(client: MlflowClient, name: str, version, metric: str) -> dict:
    """Set `champion` if this version beats the current one on the same test data, else `challenger`."""
    mine_fp, mine = version.tags["test_fingerprint"], float(version.tags[metric])
    try:
        champ = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champ = None
    if champ is None or champ.version == version.version:
        alias, reason = CHAMPION, "first registered version" if champ is None else "already champion"
    elif champ.tags.get("test_fingerprint") != mine_fp:
        alias, reason = CHALLENGER, (f"not compared: test set differs from champion v{champ.version}'s "
                                     f"({mine_fp} vs {champ.tags.get('test_fingerprint')})")
    elif mine > float(champ.tags[metric]):
        alias, reason = CHAMPION, f"{metric} {mine:.4f} beats champion v{champ.version} ({float(champ.tags[metric]):.4f})"
    else:
        alias, reason = CHALLENGER, f"{metric} {mine:.4f} does not beat champion v{champ.version} ({float(champ.tags[metric]):.4f})"
    client.set_registered_model_alias(name, alias, version.version)
    log.info("model %s v%s -> %s: %s", name, version.version, alias, reason)
    return {"alias": alias, "reason": reason}

"""Log the pyfunc, register it, and move the `champion` alias only on a fair win."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import warnings
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from pipeline.config import ServingConfig
from pipeline.serving.onnx_model import OnnxModel

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
CODE_DIR = Path(__file__).parent  # the `pipeline` package, shipped with the model as its code
REQUIREMENTS = ["tensorflow", "keras", "mlflow", "onnxruntime", "opencv-python-headless", "pandas", "numpy", "pillow",
                "scipy", "pyyaml"]


def log_model(name: str, step: int, keras_path: Path, onnx: OnnxModel, config: ServingConfig,
              example_image: np.ndarray):
    """Log FaceSegmenter into the active run: the Keras model and its ONNX export (`config.engine` says
    which one serves), its serving config, a signature with the request params, an input example
    with its prediction, and the pinned requirements.

    `step` is the kept weights' epoch: MLflow links the run's metrics at that step (val, train
    and the test metrics evaluate logs there) to the logged model.
    """
    from pipeline.serving.pyfunc import FaceSegmenter, encode_image, predict_images

    example = pd.DataFrame({"image": [encode_image(example_image, ".jpg")]})
    output = predict_images(onnx, [example_image], config)
    params = {"threshold": config.threshold, "threshold_ratio": config.threshold_ratio, "min_area": config.min_area}
    with warnings.catch_warnings():  # MLflow's hint that integer columns cannot hold missing values: n_faces never is
        warnings.simplefilter("ignore", UserWarning)
        signature = infer_signature(example, output, params=params)
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "serving_config.json"
        config_path.write_text(json.dumps(config.to_dict(), indent=2))
        return mlflow.pyfunc.log_model(
            name=name,
            step=step,
            python_model=FaceSegmenter(),
            artifacts={"keras_model": str(keras_path), "onnx_model": str(onnx.path), "config": str(config_path)},
            code_paths=[str(CODE_DIR)],
            signature=signature,
            input_example=(example, {"threshold": config.threshold}),
            pip_requirements=[f"{p}=={version(p)}" for p in REQUIREMENTS],
        )


def version_tags(config: ServingConfig) -> dict[str, str]:
    """What a version was measured on and with: promotion compares versions by these."""
    tags = {"test_fingerprint": config.test_fingerprint, "test_dice": f"{config.test_dice:.6f}",
            "threshold": str(config.threshold), "primary_metric": config.primary_metric}
    if config.test_map50 is not None:
        tags["test_map50"] = f"{config.test_map50:.6f}"
    return tags


def serving_digest(keras_path: Path, config: ServingConfig) -> str:
    """Hash of everything that decides what the model serves: weights, serving config and the code it ships."""
    h = hashlib.sha256(Path(keras_path).read_bytes())
    h.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    for file in sorted(CODE_DIR.glob("*.py")):
        h.update(file.name.encode() + file.read_bytes())
    return h.hexdigest()[:16]


def find_version(client: MlflowClient, name: str, run_id: str, digest: str):
    """The first version registered from this run with exactly this digest, if any."""
    versions = client.search_model_versions(
        f"name = '{name}' and tags.source_run_id = '{run_id}' and tags.serving_digest = '{digest}'")
    return min(versions, key=lambda v: int(v.version)) if versions else None


def register_once(client: MlflowClient, name: str, run_id: str, digest: str, log_model: Callable[[], object],
                  tags: dict[str, str]):
    """The version of `name` from this run and digest: found, or logged by `log_model()` and registered.

    Re-running export with the same model and serving config adds no version; any change to
    them makes a new one, so a version always serves what its tags say was evaluated. Two
    exports at once may both register: each then keeps the first such version and deletes its
    own duplicate (with its logged model), so one remains whichever finished first.
    """
    found = find_version(client, name, run_id, digest)
    if found is not None:
        return found
    info = log_model()
    # register_model (not client.create_model_version) also tags the logged model with its version,
    # which is how the UI links the two: no "Not registered" model page beside the version.
    mine = mlflow.register_model(info.model_uri, name, tags={"source_run_id": run_id, "serving_digest": digest, **tags})
    first = find_version(client, name, run_id, digest)
    if first.version == mine.version:
        return mine
    client.delete_model_version(name, mine.version)
    client.delete_logged_model(info.model_id)
    log.info("model %s v%s duplicated v%s (a concurrent export): deleted", name, mine.version, first.version)
    return first


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
    elif champ.tags.get("primary_metric", "test_dice") != metric:  # a face-only model and a labelling one
        alias, reason = CHALLENGER, (f"not compared: champion v{champ.version} is ranked by "
                                     f"{champ.tags.get('primary_metric', 'test_dice')}, this version by {metric}")
    elif mine > float(champ.tags[metric]):
        alias, reason = CHAMPION, f"{metric} {mine:.4f} beats champion v{champ.version} ({float(champ.tags[metric]):.4f})"
    else:
        alias, reason = CHALLENGER, f"{metric} {mine:.4f} does not beat champion v{champ.version} ({float(champ.tags[metric]):.4f})"
    client.set_registered_model_alias(name, alias, version.version)
    log.info("model %s v%s -> %s: %s", name, version.version, alias, reason)
    return {"alias": alias, "reason": reason}


def describe_version(metrics: dict, config: ServingConfig, decision: dict, parity: dict) -> str:
    """The version's description: what it scored, on which test set, why it has its alias."""
    caveat = f"Caveat: {config.caveat}.\n" if config.caveat else ""
    labels = (f"Labels {', '.join(config.classes)}: mAP@0.5 {metrics['map50']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, "
              f"label accuracy {metrics['label_accuracy']:.3f} on found faces.\n") if config.classes else ""
    policy = (f"Champion policy: versions tested on the same test fingerprint are compared by "
              f"{config.primary_metric.removeprefix('test_')}.\n")
    return (f"{caveat}Test dice {metrics['dice']:.4f} (IoU {metrics['iou']:.4f}, pooled {metrics['pooled_dice']:.4f}, "
            f"face recall {metrics['face_recall']:.3f}, precision {metrics['face_precision']:.3f}) on "
            f"{metrics['n_images']} test images, fingerprint {config.test_fingerprint}.\n{labels}{policy}"
            f"Served by {config.engine}: input {list(config.tta_sizes)} px, flip {config.flip_tta}, threshold {config.threshold}, "
            f"ratio {config.threshold_ratio}, min_area {config.min_area}. ONNX parity on the test images: dice "
            f"{parity['onnx_dice']:.4f} vs Keras {parity['keras_dice']:.4f}, largest probability difference "
            f"{parity['max_prob_difference']:.2g}.\n"
            f"Alias {decision['alias']}: {decision['reason']}.")


def sync_alias_tags(client: MlflowClient, name: str) -> None:
    """Set each run's `alias` tag to the aliases its versions hold now, so no run keeps a stale one."""
    holders: dict[str, list[str]] = {}  # version -> aliases (version search results carry none)
    for alias, number in client.get_registered_model(name).aliases.items():
        holders.setdefault(str(number), []).append(alias)
    by_run: dict[str, list[str]] = {}
    for v in client.search_model_versions(f"name = '{name}'"):
        by_run.setdefault(v.run_id, []).extend(holders.get(str(v.version), []))
    for run_id, aliases in by_run.items():
        client.set_tag(run_id, "alias", ", ".join(sorted(aliases)) or "none")

"""export: log the pyfunc into the run, register it, move `champion` only on a fair win."""

import logging
import tempfile
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from pipeline.config import assert_params_unchanged, load_params
from pipeline.images import Limits
from pipeline.model import load_model
from pipeline.io import read_json, write_json
from pipeline.registry import log_pyfunc, promote, register_once, serving_digest
from pipeline.serving import encode_image, predict_images
from pipeline.tracking import resume_run
from stages.common import MODEL, RUN, run_stage, split_samples
from stages.evaluate import CONFIG

OUT = "export/registration.json"
REQUIREMENTS = ["tensorflow", "keras", "mlflow", "opencv-python-headless", "pandas", "numpy", "pillow"]


def log_model(config: dict):
    """Log the pyfunc, with a predicted input example, into the active run."""
    model = load_model(MODEL)
    image = split_samples("test")[0].image
    example = pd.DataFrame({"image": [encode_image(image, ".jpg")]})
    output = predict_images(model, [image], config, config["threshold"], config["min_area"], config["threshold_ratio"])
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "serving_config.json"
        write_json(config_path, config)
        return log_pyfunc(Path(MODEL), config_path, example, output, config, [f"{p}=={version(p)}" for p in REQUIREMENTS])


def main() -> None:
    params = load_params()
    name = params["export"]["model_name"]
    config = {**read_json(CONFIG), "limits": asdict(Limits.from_params(params["export"]["limits"]))}
    digest = serving_digest(Path(MODEL), config)
    tags = {"test_fingerprint": config["test_fingerprint"], "test_dice": f"{config['test_dice']:.6f}",
            "threshold": str(config["threshold"])}
    assert_params_unchanged()
    with resume_run(params, RUN) as run:
        client = MlflowClient()
        run_id = run.info.run_id
        model_version = register_once(client, name, run_id, digest, lambda: log_model(config), tags)
        decision = promote(client, name, model_version, "test_dice")
        mlflow.set_tags({"registered_model": name, "registered_version": model_version.version, "alias": decision["alias"]})
    write_json(OUT, {"model_name": name, "version": int(model_version.version), "run_id": run_id,
                     "model_uri": f"models:/{name}/{model_version.version}", "serving_digest": digest, **decision})
    logging.info("export: %s v%s -> %s (%s)", name, model_version.version, decision["alias"], decision["reason"])


if __name__ == "__main__":
    run_stage(main)

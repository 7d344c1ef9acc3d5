"""export: write and check the ONNX model, log the pyfunc into the run, register it, move `champion`
only on a fair win."""

import dataclasses
import logging
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.config import ServingConfig, assert_params_unchanged, load_params
from pipeline.io import read_json, write_json
from pipeline.model.network import load_model
from pipeline.serving.onnx_model import export_onnx, parity
from pipeline.serving.registry import (describe_version, log_model, promote, register_once, serving_digest,
                                       sync_alias_tags, version_tags)
from pipeline.tracking import resume_run
from stages.common import MODEL, RUN, SERVING_CONFIG, run_stage, split_samples

OUT, EVAL_METRICS, ONNX, PARITY = "export/registration.json", "metrics/eval.json", "export/model.onnx", "metrics/export.json"


def main() -> None:
    params = load_params()
    name, cfg = params.export.model_name, params.export
    config = dataclasses.replace(ServingConfig.from_dict(read_json(SERVING_CONFIG), SERVING_CONFIG),
                                 engine=cfg.engine, threads=cfg.threads)
    digest = serving_digest(Path(MODEL), config)
    test = split_samples("test")
    keras_model = load_model(MODEL)
    onnx = export_onnx(keras_model, ONNX, config)
    check = parity(keras_model, onnx, test, config, cfg.parity_tolerance, cfg.parity_images)  # raises if broken
    assert_params_unchanged()
    write_json(PARITY, check)
    with resume_run(params, RUN) as run:
        client, run_id = MlflowClient(), run.info.run_id
        kept = read_json(RUN)["kept_epoch"]
        mlflow.log_metrics({f"export/{k}": v for k, v in check.items()}, step=kept)
        log_this_model = lambda: log_model(name, kept, Path(MODEL), onnx, config, test[0].image)  # noqa: E731
        model_version = register_once(client, name, run_id, digest, log_this_model, version_tags(config))
        decision = promote(client, name, model_version, config.primary_metric)
        client.update_model_version(name, model_version.version,
                                    describe_version(read_json(EVAL_METRICS), config, decision, check))
        sync_alias_tags(client, name)
        mlflow.set_tags({"registered_model": name, "registered_version": model_version.version, "engine": cfg.engine})
    write_json(OUT, {"model_name": name, "version": int(model_version.version), "run_id": run_id,
                     "model_uri": f"models:/{name}/{model_version.version}", "serving_digest": digest,
                     "engine": cfg.engine, "onnx": ONNX, **decision})
    logging.info("export: ONNX parity dice %.4f vs %.4f (largest probability difference %.2g); %s v%s -> %s (%s)",
                 check["onnx_dice"], check["keras_dice"], check["max_prob_difference"], name, model_version.version,
                 decision["alias"], decision["reason"])


if __name__ == "__main__":
    run_stage(main)

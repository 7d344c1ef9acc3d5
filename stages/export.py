"""export: log the pyfunc into the run, register it, move `champion` only on a fair win."""

import logging
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.config import ServingConfig, assert_params_unchanged, load_params
from pipeline.io import read_json, write_json
from pipeline.registry import (describe_version, log_model, promote, register_once, serving_digest, sync_alias_tags,
                               version_tags)
from pipeline.tracking import resume_run
from stages.common import MODEL, RUN, SERVING_CONFIG, run_stage, split_samples

OUT, EVAL_METRICS = "export/registration.json", "metrics/eval.json"


def main() -> None:
    params = load_params()
    name, config = params.export.model_name, ServingConfig.from_dict(read_json(SERVING_CONFIG), SERVING_CONFIG)
    digest = serving_digest(Path(MODEL), config)
    assert_params_unchanged()
    with resume_run(params, RUN) as run:
        client, run_id = MlflowClient(), run.info.run_id
        kept = read_json(RUN)["kept_epoch"]
        log_this_model = lambda: log_model(name, kept, Path(MODEL), config, split_samples("test")[0].image)  # noqa: E731
        model_version = register_once(client, name, run_id, digest, log_this_model, version_tags(config))
        decision = promote(client, name, model_version, config.primary_metric)
        client.update_model_version(name, model_version.version, describe_version(read_json(EVAL_METRICS), config, decision))
        sync_alias_tags(client, name)
        mlflow.set_tags({"registered_model": name, "registered_version": model_version.version})
    write_json(OUT, {"model_name": name, "version": int(model_version.version), "run_id": run_id,
                     "model_uri": f"models:/{name}/{model_version.version}", "serving_digest": digest, **decision})
    logging.info("export: %s v%s -> %s (%s)", name, model_version.version, decision["alias"], decision["reason"])


if __name__ == "__main__":
    run_stage(main)

"""evaluate: threshold chosen on val (or evaluate.threshold); metrics on test at each image's own resolution."""

import logging

import cv2
import mlflow

from pipeline.config import ServingConfig, assert_params_unchanged, load_params
from pipeline.evaluation import evaluate_model
from pipeline.inference import tta_sizes
from pipeline.io import atomic_path, write_csv, write_json
from pipeline.masks import overlay
from pipeline.model import load_model
from pipeline.tracking import resume_run
from stages.common import MODEL, RUN, SERVING_CONFIG, run_stage, split_samples

METRICS, THRESHOLDS, GALLERY = "metrics/eval.json", "plots/thresholds.csv", "eval/gallery"


def main() -> None:
    params = load_params()
    cfg, size = params.evaluate, params.model.input_size
    test = split_samples("test")
    metrics, table, preds = evaluate_model(load_model(MODEL), split_samples("val"), test, cfg, size)
    serving = ServingConfig(input_size=size, tta_sizes=tuple(tta_sizes(size, cfg.tta_scales)), flip_tta=cfg.flip_tta,
                            separate_faces=cfg.separate_faces, threshold=metrics["threshold"],
                            threshold_ratio=cfg.threshold_ratio, min_area=cfg.min_area,
                            test_fingerprint=metrics["test_fingerprint"], test_dice=metrics["dice"], limits=params.export.limits)
    assert_params_unchanged()
    write_csv(THRESHOLDS, table)
    write_json(METRICS, metrics)
    write_json(SERVING_CONFIG, serving.to_dict())
    with atomic_path(GALLERY) as tmp:
        tmp.mkdir()
        for s, (mask, boxes) in list(zip(test, preds))[: cfg.gallery_size]:
            cv2.imwrite(str(tmp / f"{s.image_id}.png"), cv2.cvtColor(overlay(s.image, mask, boxes, s.boxes), cv2.COLOR_RGB2BGR))

    with resume_run(params, RUN):
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
        mlflow.log_artifact(THRESHOLDS, "plots")
        mlflow.log_artifacts(GALLERY, "gallery")
        mlflow.log_dict({"threshold": metrics["threshold"]}, "eval/threshold.json")
    logging.info("evaluate: threshold %.2f, test dice %.4f, face recall %.3f", metrics["threshold"], metrics["dice"],
                 metrics["face_recall"])


if __name__ == "__main__":
    run_stage(main)

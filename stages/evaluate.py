"""evaluate: threshold chosen on val (or evaluate.threshold); metrics on test at each image's own resolution."""

import logging

import cv2
import mlflow

from pipeline.config import assert_params_unchanged, load_params
from pipeline.data.masks import boxes_to_mask
from pipeline.evaluation.evaluate import confusion_figure, confusion_rows, evaluate_model, serving_config
from pipeline.evaluation.metrics import mask_dice
from pipeline.io import atomic_path, read_json, write_csv, write_json
from pipeline.model.network import load_model
from pipeline.serving.drawing import comparison
from pipeline.tracking import log_split, resume_run
from stages.common import MODEL, RUN, SERVING_CONFIG, run_stage, split_samples

METRICS, THRESHOLDS, GALLERY = "metrics/eval.json", "plots/thresholds.csv", "eval/gallery"
CONFUSION = "plots/confusion.csv"


def main() -> None:
    params = load_params()
    cfg = params.evaluate
    test = split_samples("test")
    classes = params.data.classes
    metrics, table, preds = evaluate_model(load_model(MODEL), split_samples("val"), test, cfg, params.model, classes)
    serving = serving_config(params, metrics)
    assert_params_unchanged()
    write_csv(THRESHOLDS, table)
    write_csv(CONFUSION, confusion_rows(metrics.get("confusion", []), classes))
    write_json(METRICS, metrics)
    write_json(SERVING_CONFIG, serving.to_dict())
    panels = {}
    for s, (mask, boxes) in list(zip(test, preds))[: cfg.gallery_size]:
        dice = mask_dice(mask, boxes_to_mask(s.boxes, s.height, s.width))
        panels[s.image_id] = comparison(s.image, s.boxes, mask, boxes, dice, f"test image {s.image_id}")
    with atomic_path(GALLERY) as tmp:
        tmp.mkdir()
        for image_id, panel in panels.items():
            cv2.imwrite(str(tmp / f"{image_id}.png"), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))

    with resume_run(params, RUN):
        kept = read_json(RUN)["kept_epoch"]  # test metrics at the kept weights' step: the logged model links them
        mlflow.log_metrics({f"test/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=kept)
        log_split("testing", test, metrics["test_fingerprint"])
        mlflow.log_artifact(THRESHOLDS, "plots")
        if classes:
            mlflow.log_figure(confusion_figure(metrics["confusion"], classes), "plots/confusion.png")
        for image_id, panel in panels.items():
            mlflow.log_image(panel, artifact_file=f"gallery/{image_id}.png")
    logging.info("evaluate: threshold %.2f, test dice %.4f, face recall %.3f", metrics["threshold"], metrics["dice"],
                 metrics["face_recall"])


if __name__ == "__main__":
    run_stage(main)

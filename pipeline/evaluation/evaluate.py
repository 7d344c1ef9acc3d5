"""Threshold choice on val and the full evaluation on test, at each image's own resolution."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.config import Decoding, EvaluateConfig, ModelConfig, Params, ServingConfig
from pipeline.data.formats import Sample, fingerprint
from pipeline.data.masks import Channels, boxes_to_mask, centre_boxes, find_faces
from pipeline.evaluation.metrics import evaluate_masks, mask_dice, mask_wearing_report, match_boxes, pixel_counts
from pipeline.model.inference import predict_probs, tta_sizes


def threshold_table(probs: list[np.ndarray], samples: list[Sample], thresholds: np.ndarray, min_area: int,
                    ratio: float = 0.0, core_scale: float = 1.0) -> pd.DataFrame:
    """Mean dice and pooled pixel precision/recall per threshold (the val PR curve; with `ratio`, per base threshold)."""
    trues = [boxes_to_mask(s.boxes, s.height, s.width) for s in samples]
    rows = []
    for t in thresholds:
        masks = [find_faces(p, float(t), min_area, ratio=ratio, core_scale=core_scale)[0] for p in probs]
        tp, fp, fn = np.sum([pixel_counts(m, g) for m, g in zip(masks, trues)], axis=0)
        rows.append({
            "threshold": round(float(t), 4),
            "dice": float(np.mean([mask_dice(m, g) for m, g in zip(masks, trues)])),
            "precision": float(tp / (tp + fp)) if tp + fp else 1.0,
            "recall": float(tp / (tp + fn)) if tp + fn else 1.0,
        })
    return pd.DataFrame(rows)


def choose_threshold(table: pd.DataFrame) -> float:
    """The threshold with the best mean val dice (the lowest among ties)."""
    return float(table.loc[table["dice"].idxmax(), "threshold"])


def choose_centre_threshold(probs: list[np.ndarray], samples: list[Sample], thresholds: np.ndarray, overlap: float,
                            n_classes: int = 0) -> float:
    """The centre peak threshold with the best face F1 at IoU 0.5 on val (the lowest among ties). Only the
    centre boxes depend on it, so only they are found again per threshold."""
    ch = Channels(n_classes, centres=True)

    def f1(t: float) -> float:
        found = [centre_boxes(p[..., ch.heat], p[..., ch.log_sizes], t, overlap) for p in probs]
        hits = sum(int(match_boxes(b, s.boxes)[0].sum()) for b, s in zip(found, samples))
        return 2 * hits / max(sum(len(b) for b in found) + sum(len(s.boxes) for s in samples), 1)

    return float(max(thresholds, key=f1))


def decode_faces(prob: np.ndarray, decoding: Decoding) -> tuple[np.ndarray, np.ndarray, list[tuple]]:
    """`find_faces` with every setting of `decoding`: what the served model answers and evaluate measures."""
    d = decoding
    return find_faces(prob, d.threshold, d.min_area, d.separate, d.ratio, d.classes, d.core_scale, d.centres)


def evaluate(probs: list[np.ndarray], samples: list[Sample], decoding: Decoding) -> tuple[dict, list]:
    """Test metrics and the (mask, boxes) predictions they were computed from; with `decoding.classes`,
    also how well the found faces are labelled (`mask_wearing_report`, its confusion matrix as a list).

    With centres and a lower `rank_threshold`, AP@0.5 and mAP rank every peak down to that one (as
    detection benchmarks rank all of a detector's boxes; each box keeps its score, so a user who asks
    for a lower threshold gets the boxes counted); all other figures are the served threshold's.
    """
    metrics, preds = score([decode_faces(p, decoding) for p in probs], samples, decoding.classes)
    ranking = decoding.ranked
    if ranking != decoding:
        ranked, _ = score([decode_faces(p, ranking) for p in probs], samples, decoding.classes)
        metrics.update({k: v for k, v in ranked.items() if k.startswith("ap50") or k == "map50"})
    return metrics, preds


def score(found: list[tuple], samples: list[Sample], classes: tuple[str, ...] = ()) -> tuple[dict, list]:
    """`evaluate`'s figures for `find_faces` answers (mask, boxes, labels), one per sample."""
    preds = [(mask, boxes) for mask, boxes, _ in found]
    trues = [boxes_to_mask(s.boxes, s.height, s.width) for s in samples]
    metrics = evaluate_masks([m for m, _ in preds], [b for _, b in preds], trues, [s.boxes for s in samples])
    if classes:
        report, confusion = mask_wearing_report([b for _, b, _ in found], [labels for _, _, labels in found],
                                                [s.boxes for s in samples], [s.labels for s in samples], classes)
        metrics.update(report, confusion=confusion.tolist())
    return metrics, preds


def serving_config(params: Params, metrics: dict | None = None) -> ServingConfig:
    """The served settings `params` ask for, with the threshold and test figures that `metrics` measured.

    Without `metrics` (a network measured for latency only): threshold 0.5, no test figures.
    """
    e, metrics = params.evaluate, metrics or {"threshold": 0.5, "test_fingerprint": "", "dice": 0.0}
    return ServingConfig(input_size=params.model.input_size, tta_sizes=tuple(tta_sizes(params.model.input_size, e.tta_scales)),
                         flip_tta=e.flip_tta, separate_faces=e.separate_faces, threshold=metrics["threshold"],
                         threshold_ratio=e.threshold_ratio, min_area=e.min_area,
                         test_fingerprint=metrics["test_fingerprint"], test_dice=metrics["dice"],
                         limits=params.export.limits, caveat=params.caveat, classes=params.data.classes,
                         test_map50=metrics.get("map50"), core_scale=params.model.core_scale,
                         centres=params.model.centres, centre_threshold=metrics.get("centre_threshold", 0.5),
                         centre_overlap=e.centre_overlap, centre_rank_threshold=e.centre_rank_threshold)


def evaluate_model(model, val: list[Sample], test: list[Sample], cfg: EvaluateConfig, model_cfg: ModelConfig,
                   classes: tuple[str, ...] = ()):
    """Choose the threshold on val, then measure test: (metrics, threshold table, predictions).

    Shared by the evaluate stage and the cross-validation benchmark. The test split is used
    only here, after every choice has been made on val. A number in `evaluate.threshold` is used
    instead of val's choice (the table is still val's curve), for models trained on val. A model
    with centres also gets its peak threshold: `evaluate.centre_threshold`, or val's best face F1.
    """
    min_area, ratio, sizes = cfg.min_area, cfg.threshold_ratio, tta_sizes(model_cfg.input_size, cfg.tta_scales)
    core_scale, grid = model_cfg.core_scale, np.arange(*cfg.threshold_grid)
    probs = lambda samples: predict_probs(model, [s.image for s in samples], sizes, flip=cfg.flip_tta)  # noqa: E731
    val_probs = probs(val)
    table = threshold_table(val_probs, val, grid, min_area, ratio, core_scale)
    threshold = choose_threshold(table) if cfg.threshold is None else cfg.threshold
    centres, chosen = None, {}
    if model_cfg.centres:
        peak = cfg.centre_threshold
        if peak is None:
            peak = choose_centre_threshold(val_probs, val, grid, cfg.centre_overlap, len(classes))
        centres, chosen = (float(peak), cfg.centre_overlap), {"centre_threshold": round(float(peak), 4)}
    decoding = Decoding(threshold=threshold, min_area=min_area, separate=cfg.separate_faces, ratio=ratio, classes=classes,
                        core_scale=core_scale, centres=centres, rank_threshold=cfg.centre_rank_threshold)
    metrics, preds = evaluate(probs(test), test, decoding)
    metrics.update(threshold=threshold, threshold_ratio=ratio, test_fingerprint=fingerprint(test), **chosen)
    return metrics, table, preds


def confusion_rows(confusion: list[list[int]], classes: tuple[str, ...]) -> pd.DataFrame:
    """One row (actual, predicted) per found face with a known class: what DVC's confusion template draws.
    Header only for a face-only model."""
    rows = [(classes[i], classes[j]) for i, counts in enumerate(confusion) for j, n in enumerate(counts) for _ in range(n)]
    return pd.DataFrame(rows, columns=["actual", "predicted"])


def confusion_figure(confusion: list[list[int]], classes: tuple[str, ...]):
    """Matplotlib figure of the mask-wearing confusion matrix (rows true, columns predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    from sklearn.metrics import ConfusionMatrixDisplay

    display = ConfusionMatrixDisplay(np.array(confusion), display_labels=list(classes)).plot(colorbar=False)
    display.ax_.set_title("faces found on test, by mask-wearing class")
    display.figure_.tight_layout()
    return display.figure_

"""Segmentation and face-level metrics on binary masks at the image's own resolution."""

from __future__ import annotations

import numpy as np

# Face size as sqrt(box area / image area): bucket upper bounds.
SIZE_BUCKETS = {"small": 0.05, "medium": 0.15, "large": np.inf}


def mask_dice(pred: np.ndarray, true: np.ndarray) -> float:
    """Dice of two binary masks; two empty masks agree perfectly (1.0)."""
    p, t = pred.astype(bool), true.astype(bool)
    denom = p.sum() + t.sum()
    return 1.0 if denom == 0 else float(2 * np.logical_and(p, t).sum() / denom)


def mask_iou(pred: np.ndarray, true: np.ndarray) -> float:
    p, t = pred.astype(bool), true.astype(bool)
    union = np.logical_or(p, t).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)


def pixel_counts(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """[tp, fp, fn] pixel counts, for pooling over a data set."""
    p, t = pred.astype(bool), true.astype(bool)
    return np.array([np.logical_and(p, t).sum(), np.logical_and(p, ~t).sum(), np.logical_and(~p, t).sum()], np.int64)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of x1 y1 x2 y2 boxes."""
    a, b = np.asarray(a, np.float64)[:, :4].reshape(-1, 4), np.asarray(b, np.float64)[:, :4].reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_boxes(pred: np.ndarray, true: np.ndarray, min_iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching by IoU: (true_matched, pred_matched) boolean arrays."""
    true_hit, pred_hit = np.zeros(len(true), bool), np.zeros(len(pred), bool)
    if len(true) and len(pred):
        ious = box_iou(pred, true)
        for flat in np.argsort(-ious, axis=None):
            i, j = np.unravel_index(flat, ious.shape)
            if ious[i, j] < min_iou:
                break
            if not pred_hit[i] and not true_hit[j]:
                pred_hit[i] = true_hit[j] = True
    return true_hit, pred_hit


def average_precision(pred_boxes: list[np.ndarray], true_boxes: list[np.ndarray], min_iou: float = 0.5) -> float:
    """AP at `min_iou` over a data set, Pascal VOC style (all-point interpolation): the standard
    detection figure. `pred_boxes` rows are `x1 y1 x2 y2 score`; detections of all images are taken
    by falling score, each matching the unmatched true box it overlaps most, else a false positive.
    """
    n_true = sum(len(t) for t in true_boxes)
    detections = [(float(b[4]), i, np.asarray(b[:4], np.float64)) for i, boxes in enumerate(pred_boxes) for b in boxes]
    if n_true == 0:
        return 1.0 if not detections else 0.0
    detections.sort(key=lambda d: -d[0])
    taken = [np.zeros(len(t), bool) for t in true_boxes]
    hit = np.zeros(len(detections), bool)
    for k, (_, i, box) in enumerate(detections):
        if len(true_boxes[i]):
            ious = box_iou(box[None], true_boxes[i])[0]
            j = int(np.argmax(np.where(taken[i], -1.0, ious)))
            if ious[j] >= min_iou and not taken[i][j]:
                taken[i][j] = hit[k] = True
    tp = np.cumsum(hit)
    recall = np.concatenate([[0.0], tp / n_true, [1.0]])
    precision = np.concatenate([[1.0], tp / np.arange(1, len(hit) + 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope: best precision at this recall or more
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def size_bucket(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bucket name per box by sqrt(box area / image area)."""
    b = np.asarray(boxes, np.float64)[:, :4].reshape(-1, 4)
    rel = np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / float(height * width))
    names = list(SIZE_BUCKETS)
    return np.array([names[int(np.searchsorted(list(SIZE_BUCKETS.values()), r, side="left"))] for r in rel], dtype=object)


def evaluate_masks(
    preds: list[np.ndarray],
    pred_boxes: list[np.ndarray],
    trues: list[np.ndarray],
    true_boxes: list[np.ndarray],
    min_iou: float = 0.5,
) -> dict[str, float]:
    """Mean per-image dice/IoU, pooled dice, pixel precision/recall, face recall/precision by size,
    and AP@0.5 of the boxes (as served: above the evaluated threshold)."""
    dices = [mask_dice(p, t) for p, t in zip(preds, trues, strict=True)]
    ious = [mask_iou(p, t) for p, t in zip(preds, trues, strict=True)]
    tp, fp, fn = np.sum([pixel_counts(p, t) for p, t in zip(preds, trues)], axis=0)
    out = {
        "n_images": len(preds),
        "dice": float(np.mean(dices)),
        "dice_std": float(np.std(dices)),
        "iou": float(np.mean(ious)),
        "pooled_dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "pixel_precision": _ratio(tp, tp + fp),
        "pixel_recall": _ratio(tp, tp + fn),
        "ap50": average_precision(pred_boxes, true_boxes, min_iou),
    }
    hits = {name: [0, 0, 0, 0] for name in ["all", *SIZE_BUCKETS]}  # true hit, true n, pred hit, pred n
    for pb, tb, mask in zip(pred_boxes, true_boxes, trues):
        h, w = mask.shape[:2]
        true_hit, pred_hit = match_boxes(pb, tb, min_iou)
        for name, group, hit in (("true", size_bucket(tb, h, w), true_hit), ("pred", size_bucket(pb, h, w), pred_hit)):
            k = 0 if name == "true" else 2
            for bucket in ["all", *SIZE_BUCKETS]:
                sel = np.ones(len(hit), bool) if bucket == "all" else group == bucket
                hits[bucket][k] += int(hit[sel].sum())
                hits[bucket][k + 1] += int(sel.sum())
    for bucket, (th, tn, ph, pn) in hits.items():
        suffix = "" if bucket == "all" else f"_{bucket}"
        out[f"face_recall{suffix}"] = _ratio(th, tn)
        out[f"face_precision{suffix}"] = _ratio(ph, pn)
        out[f"n_faces{suffix}"] = tn
    return out


def _ratio(num: float, den: float) -> float:
    """num/den, and 1.0 when there was nothing to find (den == 0)."""
    return 1.0 if den == 0 else float(num / den)

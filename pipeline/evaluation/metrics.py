"""Segmentation and face-level metrics on binary masks at the image's own resolution."""

from __future__ import annotations

from collections.abc import Callable

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


def match_pairs(pred: np.ndarray, true: np.ndarray, min_iou: float = 0.5) -> list[tuple[int, int]]:
    """Greedy one-to-one matching by IoU: (pred index, true index) pairs, best overlaps first."""
    pairs, pred_taken, true_taken = [], set(), set()
    if len(true) and len(pred):
        ious = box_iou(pred, true)
        for flat in np.argsort(-ious, axis=None):
            i, j = (int(v) for v in np.unravel_index(flat, ious.shape))
            if ious[i, j] < min_iou:
                break
            if i not in pred_taken and j not in true_taken:
                pred_taken.add(i)
                true_taken.add(j)
                pairs.append((i, j))
    return pairs


def match_boxes(pred: np.ndarray, true: np.ndarray, min_iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching by IoU: (true_matched, pred_matched) boolean arrays."""
    true_hit, pred_hit = np.zeros(len(true), bool), np.zeros(len(pred), bool)
    for i, j in match_pairs(pred, true, min_iou):
        pred_hit[i] = true_hit[j] = True
    return true_hit, pred_hit


def average_precision(pred_boxes: list[np.ndarray], true_boxes: list[np.ndarray], min_iou: float = 0.5,
                      ignore: list[np.ndarray] | None = None) -> float:
    """AP at `min_iou` over a data set, Pascal VOC style (all-point interpolation): the standard
    detection figure. `pred_boxes` rows are `x1 y1 x2 y2 score`; detections of all images are taken
    by falling score, each matching the unmatched true box it overlaps most, else a false positive.
    A detection that matches nothing but an `ignore` box (a face whose class is unknown, when
    scoring one class) counts neither way, as VOC treats its "difficult" objects.
    """
    n_true = sum(len(t) for t in true_boxes)
    detections = [(float(b[4]), i, np.asarray(b[:4], np.float64)) for i, boxes in enumerate(pred_boxes) for b in boxes]
    if n_true == 0:
        return 1.0 if not detections else 0.0
    detections.sort(key=lambda d: -d[0])
    taken = [np.zeros(len(t), bool) for t in true_boxes]
    hit, counted = np.zeros(len(detections), bool), np.ones(len(detections), bool)
    for k, (_, i, box) in enumerate(detections):
        if len(true_boxes[i]):
            ious = box_iou(box[None], true_boxes[i])[0]
            j = int(np.argmax(np.where(taken[i], -1.0, ious)))
            if ious[j] >= min_iou and not taken[i][j]:
                taken[i][j] = hit[k] = True
        if not hit[k] and ignore is not None and len(ignore[i]):
            counted[k] = box_iou(box[None], ignore[i]).max() < min_iou
    hit = hit[counted]
    tp = np.cumsum(hit)
    recall = np.concatenate([[0.0], tp / n_true, [1.0]])
    precision = np.concatenate([[1.0], tp / np.arange(1, len(hit) + 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope: best precision at this recall or more
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def mask_wearing_report(pred_boxes: list[np.ndarray], pred_labels: list[list], true_boxes: list[np.ndarray],
                        true_labels: list[list], classes: tuple[str, ...], min_iou: float = 0.5) -> tuple[dict, np.ndarray]:
    """How well faces are labelled: (metrics, confusion matrix).

    The confusion matrix (rows: true class, columns: predicted, in `classes` order) and per-class
    precision, recall and F1 count the faces found (matched at `min_iou`) whose true class is
    known (scikit-learn's definitions; 0 where a class is never predicted or present); macro-F1
    averages the classes that occur there. Per-class AP@0.5 ranks the faces labelled with a class by
    detection score x label score (`pred_boxes` rows `x1 y1 x2 y2 score`, `pred_labels` items
    `(label, label_score)`), true faces without a class ignored; mAP@0.5 is their mean over the
    classes that have test faces.
    """
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    found = [(tl[j], pl[i][0]) for pb, pl, tb, tl in zip(pred_boxes, pred_labels, true_boxes, true_labels, strict=True)
             for i, j in match_pairs(pb, tb, min_iou) if tl[j] is not None and pl[i][0] is not None]
    y_true, y_pred = [t for t, _ in found], [p for _, p in found]
    if found:
        confusion = confusion_matrix(y_true, y_pred, labels=list(classes))
        precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=list(classes), zero_division=0)
    else:  # no face found with a known class: nothing to score the labels on
        confusion, precision = np.zeros((len(classes),) * 2, np.int64), np.zeros(len(classes))
        recall = f1 = precision
    out: dict[str, float] = {}
    for k, c in enumerate(classes):
        scored = [np.array([[*b[:4], b[4] * s] for b, (label, s) in zip(pb, pl) if label == c], np.float64).reshape(-1, 5)
                  for pb, pl in zip(pred_boxes, pred_labels)]
        truth = [np.asarray(tb, np.float64)[[label == c for label in tl]].reshape(-1, 4) for tb, tl in zip(true_boxes, true_labels)]
        unknown = [np.asarray(tb, np.float64)[[label is None for label in tl]].reshape(-1, 4) for tb, tl in zip(true_boxes, true_labels)]
        out.update({f"precision_{c}": float(precision[k]), f"recall_{c}": float(recall[k]), f"f1_{c}": float(f1[k])})
        if sum(map(len, truth)):  # AP is undefined for a class without test faces (VOC leaves it out too)
            out[f"ap50_{c}"] = average_precision(scored, truth, min_iou, ignore=unknown)
    aps = [v for k, v in out.items() if k.startswith("ap50_")]
    out.update(macro_f1=float(f1_score(y_true, y_pred, average="macro", zero_division=0)) if found else 0.0,
               map50=float(np.mean(aps)) if aps else 0.0,
               label_accuracy=float(np.trace(confusion) / confusion.sum()) if found else 0.0)
    return out, confusion


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


def paired_bootstrap(score: Callable[[np.ndarray], dict[str, float]], n_items: int, n_resamples: int = 1000,
                     seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float, float]]:
    """How far a difference between two methods on one test set could be the test set's luck.

    `score(indices)` returns, for the items (images) at `indices`, each key's difference B - A of
    the two methods scored on exactly those items. Both are scored on the same resampled images
    (the paired bootstrap used to compare two systems on one test set), so the spread left is what
    the images' draw explains. Returns per key of `score` (difference on all items, low, high):
    the `level` percentile interval of `n_resamples` draws with replacement (seeded). A margin is
    clear when the interval excludes 0.
    """
    rng = np.random.default_rng(seed)
    full = score(np.arange(n_items))
    draws = [score(rng.integers(0, n_items, n_items)) for _ in range(n_resamples)]
    tail = 100 * (1 - level) / 2
    return {k: (v, *np.percentile([d[k] for d in draws], [tail, 100 - tail]).tolist()) for k, v in full.items()}

"""Face boxes to masks, and predicted probability maps back to a mask and boxes."""

from __future__ import annotations

import cv2
import numpy as np


def boxes_to_mask(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 {0, 1} mask: the union of the boxes filled in.

    A pixel is inside when its centre is; a box thinner than a pixel still marks one pixel, so
    no face is lost from the mask however small.
    """
    mask = np.zeros((height, width), np.uint8)
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4):
        c1, r1 = int(np.floor(x1 + 0.5)), int(np.floor(y1 + 0.5))
        c2, r2 = max(int(np.floor(x2 + 0.5)), c1 + 1), max(int(np.floor(y2 + 0.5)), r1 + 1)
        c1, r1 = min(c1, width - 1), min(r1, height - 1)
        mask[r1:r2, c1:c2] = 1
    return mask


def postprocess(prob: np.ndarray, threshold: float, min_area: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Threshold a probability map into (mask, boxes).

    Boxes are the connected components as `[x1, y1, x2, y2, score]` in pixels, score being the
    mean probability inside the component; components under `min_area` pixels are removed from
    both. Evaluation and serving both call this, so what is measured is what is served.
    """
    binary = (prob >= threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return binary, np.zeros((0, 5), np.float32)
    areas = stats[1:, cv2.CC_STAT_AREA]
    sums = np.bincount(labels.ravel(), weights=prob.ravel().astype(np.float64), minlength=n)[1:]
    keep = areas >= max(min_area, 1)
    if not keep.all():
        binary = np.isin(labels, np.flatnonzero(keep) + 1).astype(np.uint8)
    s = stats[1:][keep]
    boxes = np.column_stack(
        [
            s[:, cv2.CC_STAT_LEFT],
            s[:, cv2.CC_STAT_TOP],
            s[:, cv2.CC_STAT_LEFT] + s[:, cv2.CC_STAT_WIDTH],
            s[:, cv2.CC_STAT_TOP] + s[:, cv2.CC_STAT_HEIGHT],
            sums[keep] / areas[keep],
        ]
    ).astype(np.float32)
    return binary, boxes


def overlay(image: np.ndarray, mask: np.ndarray, boxes: np.ndarray, true_boxes: np.ndarray | None = None) -> np.ndarray:
    """RGB picture of a prediction: mask tinted red, predicted boxes yellow, true boxes green."""
    out = image.astype(np.float32)
    red = np.array([255, 0, 0], np.float32)
    m = mask.astype(bool)
    out[m] = 0.55 * out[m] + 0.45 * red
    out = out.astype(np.uint8)
    thick = max(1, round(max(image.shape[:2]) / 400))
    for x1, y1, x2, y2 in (true_boxes if true_boxes is not None else np.zeros((0, 4)))[:, :4]:
        cv2.rectangle(out, (int(x1), int(y1)), (int(x2) - 1, int(y2) - 1), (0, 255, 0), thick)
    for x1, y1, x2, y2 in np.asarray(boxes)[:, :4]:
        cv2.rectangle(out, (int(x1), int(y1)), (int(x2) - 1, int(y2) - 1), (255, 255, 0), thick)
    label = f"faces: {len(boxes)}" + (f" / true {len(true_boxes)}" if true_boxes is not None else "")
    scale = max(0.4, max(image.shape[:2]) / 800)
    cv2.putText(out, label, (4, int(18 * scale) + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2)
    cv2.putText(out, label, (4, int(18 * scale) + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick)
    return out

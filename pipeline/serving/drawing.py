"""Pictures of predictions: overlays for users, truth-beside-prediction panels for the gallery."""

from __future__ import annotations

import math
from collections import Counter

import cv2
import numpy as np

from pipeline.data.masks import boxes_to_mask

RED, YELLOW, GREEN, WHITE, BLACK = (230, 30, 30), (255, 220, 0), (0, 200, 60), (255, 255, 255), (0, 0, 0)
PANEL_HEIGHT = 480  # gallery panels are scaled up to at least this many pixels high, to be read at a glance
# Box colours of mask-wearing labels: the usual names get the usual colours, others the next free one.
LABEL_COLOURS = {"with_mask": (0, 200, 60), "without_mask": (255, 60, 200), "incorrect": (255, 150, 0)}
SPARE_COLOURS = [(0, 160, 255), (180, 100, 255), (140, 255, 140), (255, 255, 140)]


def overlay(image: np.ndarray, mask: np.ndarray, faces: list[dict], caveat: str = "") -> np.ndarray:
    """The image at its own size: predicted mask tinted red, face boxes yellow or coloured by their
    mask-wearing label, a key with the counts in the corner (and the caveat's first words, e.g.
    "synthetic demo", when the model has one). `faces` as served: dicts with `box` and `label`."""
    out = _tint(image, mask, RED)
    colours = label_colours(f["label"] for f in faces)
    for f in faces:
        _rectangles(out, np.array([f["box"]], np.float32), colours.get(f["label"], YELLOW))
    counts = count_labels(faces)
    lines = [[(f"{len(faces)} faces", WHITE), ("  mask", RED)] + ([("  box", YELLOW)] if None in counts else [])]
    lines += [[(f"{label} {n}", colours[label])] for label, n in counts.items() if label is not None]
    if caveat:
        lines.append([(caveat.split(":")[0] + " model", WHITE)])
    scale = max(0.4, max(image.shape[:2]) / 1000)
    y = 0
    for line in lines:
        y = _text_line(out, line, 4, y, scale, background=BLACK)
    return out


def label_colours(labels) -> dict:
    """A colour per label name (stable for the usual names)."""
    names = sorted({label for label in labels if label is not None})
    spare = iter(SPARE_COLOURS)
    return {name: LABEL_COLOURS.get(name) or next(spare, WHITE) for name in names}


def count_labels(faces: list[dict]) -> dict:
    """Faces per label, most frequent first (None: faces without a label)."""
    return dict(Counter(f["label"] for f in faces).most_common())


def comparison(image: np.ndarray, true_boxes: np.ndarray, mask: np.ndarray, boxes: np.ndarray, dice: float,
               title: str) -> np.ndarray:
    """Truth (green) beside prediction (red mask, yellow boxes), scaled to a readable size, captioned."""
    h, w = image.shape[:2]
    truth = _tint(image, boxes_to_mask(true_boxes, h, w), GREEN)
    _rectangles(truth, true_boxes, GREEN)
    prediction = _tint(image, mask, RED)
    _rectangles(prediction, boxes, YELLOW)
    factor = max(1, math.ceil(PANEL_HEIGHT / h))
    gap = np.full((h, max(2, w // 50), 3), 255, np.uint8)
    panel = cv2.resize(np.concatenate([truth, gap, prediction], axis=1), None, fx=factor, fy=factor,
                       interpolation=cv2.INTER_NEAREST)
    caption = np.full((0, panel.shape[1], 3), 255, np.uint8)
    lines = [[(f"{title}   dice {dice:.3f}", BLACK)],
             [(f"truth: {len(true_boxes)} faces ", BLACK), ("(green)", GREEN),
              (f"   prediction: {len(boxes)} faces ", BLACK), ("(mask red, ", RED), ("boxes yellow)", (170, 140, 0))]]
    for line in lines:
        strip = np.full((30, panel.shape[1], 3), 255, np.uint8)
        _text_line(strip, line, 6, 0, 0.55)
        caption = np.concatenate([caption, strip])
    return np.concatenate([caption, panel])


def _tint(image: np.ndarray, mask: np.ndarray, colour) -> np.ndarray:
    out = image.astype(np.float32)
    m = mask.astype(bool)
    out[m] = 0.55 * out[m] + 0.45 * np.array(colour, np.float32)
    return out.astype(np.uint8)


def _rectangles(image: np.ndarray, boxes: np.ndarray, colour) -> None:
    thick, boxes = max(1, round(max(image.shape[:2]) / 400)), np.asarray(boxes, np.float32)
    for x1, y1, x2, y2 in (boxes[:, :4] if boxes.size else []):
        cv2.rectangle(image, (int(x1), int(y1)), (int(x2) - 1, int(y2) - 1), colour, thick)


def _text_line(image: np.ndarray, parts: list[tuple[str, tuple]], x: int, y: int, scale: float,
               background: tuple | None = None) -> int:
    """Draw coloured pieces of text on one line starting at (x, y top); returns the next line's y."""
    font, thick = cv2.FONT_HERSHEY_SIMPLEX, max(1, round(scale * 2))
    height = cv2.getTextSize("Ag", font, scale, thick)[0][1]
    baseline = y + int(height * 1.6)
    if background is not None:
        width = sum(cv2.getTextSize(text, font, scale, thick)[0][0] for text, _ in parts)
        cv2.rectangle(image, (x - 3, y), (min(image.shape[1] - 1, x + width + 3), baseline + int(height * 0.5)), background, -1)
    for text, colour in parts:
        cv2.putText(image, text, (x, baseline), font, scale, colour, thick, cv2.LINE_AA)
        x += cv2.getTextSize(text, font, scale, thick)[0][0]
    return baseline + int(height * 0.6)

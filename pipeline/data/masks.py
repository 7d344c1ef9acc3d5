"""Face boxes to masks, and predicted probability maps back to a mask and boxes."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Channels:
    """Where each quantity lives in a model's map and its training targets, in this order: the face,
    one per mask-wearing class, with `centres` CenterNet's heatmap, log width and log height, and with
    `weight` (targets only) a per-pixel loss weight. The one place that spells out the layout."""

    n_classes: int = 0
    centres: bool = False
    weight: bool = False

    @property
    def classes(self) -> slice:
        return slice(1, 1 + self.n_classes)

    @property
    def heat(self) -> int:
        return 1 + self.n_classes

    @property
    def log_sizes(self) -> slice:
        return slice(2 + self.n_classes, 4 + self.n_classes)

    @property
    def centre(self) -> slice:
        """The heatmap and both log sizes: what `centre_loss` compares."""
        return slice(self.heat, self.log_sizes.stop)

    @property
    def total(self) -> int:
        return 1 + self.n_classes + 3 * self.centres + self.weight


def boxes_to_mask(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 {0, 1} mask: the union of the boxes filled in.

    A pixel is inside when its centre is; a box thinner than a pixel still marks one pixel, so
    no face is lost from the mask however small.
    """
    mask = np.zeros((height, width), np.uint8)
    for rows, cols in box_slices(boxes, height, width):
        mask[rows, cols] = 1
    return mask


def box_slices(boxes: np.ndarray, height: int, width: int) -> list[tuple[slice, slice]]:
    """(rows, columns) of the pixels each box covers, as `boxes_to_mask` fills them."""
    out = []
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4):
        c1, r1 = int(np.floor(x1 + 0.5)), int(np.floor(y1 + 0.5))
        c2, r2 = max(int(np.floor(x2 + 0.5)), c1 + 1), max(int(np.floor(y2 + 0.5)), r1 + 1)
        out.append((slice(min(r1, height - 1), r2), slice(min(c1, width - 1), c2)))
    return out


def face_weight_map(boxes: np.ndarray, height: int, width: int, size: int, power: float) -> np.ndarray:
    """float32 height x width loss weights that give every face of the image the same total weight
    (PixelLink's instance-balanced loss): face i's pixels weigh (mean face area / its area) ** `power`,
    the background 1; areas are counted in pixels of the `size` x `size` model input, at least one.

    Without it a face's weight grows with its area, so one close face outweighs a crowd of small ones:
    the small faces are the ones the model never finds. The faces' total weight, S with power 1, is
    unchanged. Where boxes overlap the larger weight holds.
    """
    weights = np.ones((height, width), np.float32)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not len(boxes):
        return weights
    areas = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * size * size / (height * width), 1.0)
    face = (areas.mean() / areas) ** power
    order = np.argsort(face)  # ascending: a smaller face painted later keeps its larger weight where boxes overlap
    slices = box_slices(boxes, height, width)
    for k in order:
        weights[slices[k]] = face[k]
    return weights


def scale_boxes(boxes: np.ndarray, factor: float, height: int | None = None, width: int | None = None) -> np.ndarray:
    """Boxes (`x1 y1 x2 y2` and any further columns, kept) scaled about their centres by `factor`,
    clipped to the image when its size is given."""
    out = np.array(boxes, np.float32).reshape(-1, np.shape(boxes)[-1] if np.size(boxes) else 4)
    if factor == 1 or not len(out):
        return out
    centre, half = (out[:, :2] + out[:, 2:4]) / 2, (out[:, 2:4] - out[:, :2]) * (factor / 2)
    out[:, :2], out[:, 2:4] = centre - half, centre + half
    if height is not None:
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def postprocess(prob: np.ndarray, threshold: float, min_area: int = 0, separate: bool = False,
                ratio: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Threshold a probability map into (mask, boxes).

    With `ratio` > 0 the threshold is the image's own: `ratio` times the mean probability of
    its pixels at or above `threshold`. The model is less sure of the faces in blurred crowds
    than of clear portraits, and one threshold for both cuts the faint faces short.

    Connected components under `min_area` pixels are removed from the mask. Each remaining
    component is a face box `[x1, y1, x2, y2, score]` in pixels, score being the mean probability
    inside it; with `separate`, touching faces that merged into one component are cut apart first
    (`separate_touching`), which changes the boxes, never the mask (a cut-off piece under
    `min_area` pixels gets no box of its own). Evaluation and serving both call this, so what
    is measured is what is served.
    """
    binary = (prob >= image_threshold(prob, threshold, ratio)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    keep = stats[1:, cv2.CC_STAT_AREA] >= max(min_area, 1)
    if not keep.all():
        binary = np.isin(labels, np.flatnonzero(keep) + 1).astype(np.uint8)
        labels = labels * binary
    if separate and binary.any():
        labels = separate_touching(prob, binary)
    return binary, region_boxes(labels, prob, max(min_area, 1))


def image_threshold(prob: np.ndarray, threshold: float, ratio: float = 0.0) -> float:
    """`threshold`, or with `ratio` > 0, `ratio` times the mean of `prob` at or above it (see `postprocess`)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"threshold ratio must be between 0 (off) and 1, got {ratio}")
    if ratio == 0:  # the usual case: no pass over the map
        return float(threshold)
    above = prob[prob >= threshold]
    return float(ratio * above.mean()) if above.size else float(threshold)


def separate_touching(prob: np.ndarray, binary: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Label map with one region per probability peak: watershed of the (smoothed) map in the mask.

    Neighbouring faces in a crowd merge into one component, whose single box then matches none
    of them; their centres still stand out as separate peaks.
    """
    smooth = cv2.GaussianBlur(prob.astype(np.float32), (0, 0), sigma)
    peaks = (smooth >= cv2.dilate(smooth, np.ones((3, 3), np.uint8))) & (binary > 0)
    n, markers = cv2.connectedComponents(peaks.astype(np.uint8), connectivity=8)
    markers[binary == 0] = n  # the background floods from its own seed
    relief = np.repeat((255 * (1 - np.clip(smooth, 0, 1))).astype(np.uint8)[..., None], 3, axis=2)
    cv2.watershed(relief, markers)
    labels = np.where((markers > 0) & (markers < n), markers, 0)
    if not labels.any():  # no peak inside the mask (the smoothed maximum fell outside): no cut
        return cv2.connectedComponents(binary, connectivity=8)[1]
    # Mask pixels the background flood or a ridge line took go to the nearest face region.
    nearest = ndimage.distance_transform_edt(labels == 0, return_distances=False, return_indices=True)
    return np.where(binary > 0, labels[nearest[0], nearest[1]], 0)


def region_boxes(labels: np.ndarray, prob: np.ndarray, min_area: int = 1) -> np.ndarray:
    """`[x1, y1, x2, y2, mean probability]` per labelled region of at least `min_area` pixels."""
    n = int(labels.max())
    flat = labels.ravel()
    areas = np.bincount(flat, minlength=n + 1)
    sums = np.bincount(flat, weights=prob.ravel().astype(np.float64), minlength=n + 1)
    rows = [
        [sl[1].start, sl[0].start, sl[1].stop, sl[0].stop, sums[k] / areas[k]]
        for k, sl in enumerate(ndimage.find_objects(labels, n), start=1)
        if sl is not None and areas[k] >= min_area
    ]
    return np.array(rows, np.float32).reshape(-1, 5)


def find_faces(prob: np.ndarray, threshold: float, min_area: int = 0, separate: bool = False, ratio: float = 0.0,
               classes: tuple[str, ...] = (), core_scale: float = 1.0, centres: tuple[float, float] | None = None
               ) -> tuple[np.ndarray, np.ndarray, list[tuple]]:
    """What a map from `predict_probs` answers, for evaluation and serving alike: the face mask,
    the boxes (`x1 y1 x2 y2 score`) and a (class, probability) per box, (None, None) for a model
    without classes. A labelling model's map is H x W x (1 + classes), face channel first.

    A model trained on face cores (`core_scale` < 1, the boxes shrunk about their centres) finds
    cores: each is labelled from its own pixels, then grown back by 1 / `core_scale`, and the
    mask is the union of the grown boxes (the face regions as the data defines them).
    A model with centres has three more channels after the classes: with `centres` (peak threshold,
    overlap limit) its boxes are `centre_boxes`, not the mask's components (the mask is found as without).
    """
    ch = Channels(len(classes), centres is not None)
    mask, boxes = postprocess(prob if prob.ndim == 2 else prob[..., 0], threshold, min_area, separate, ratio)
    label = (lambda m, b: label_faces(prob[..., ch.classes], m, b, classes)) if classes else (lambda m, b: [(None, None)] * len(b))
    labels = label(mask, boxes) if centres is None else None  # of the cores, with `core_scale`: their own pixels
    if core_scale != 1:
        boxes = scale_boxes(boxes, 1 / core_scale, *mask.shape)
        mask = boxes_to_mask(boxes[:, :4], *mask.shape)
    if centres is not None:
        boxes = centre_boxes(prob[..., ch.heat], prob[..., ch.log_sizes], *centres)
        labels = label(mask, boxes)
    return mask, boxes, labels


def centre_boxes(heat: np.ndarray, log_sizes: np.ndarray, threshold: float, overlap: float = 1.0) -> np.ndarray:
    """`[x1, y1, x2, y2, peak]` per local maximum of the centre heatmap at or above `threshold`
    (3 x 3 neighbourhood; a plateau of equal maxima is one face, at its centroid), the box's width
    and height read from `log_sizes` (log fractions of the image's) at the peak; highest peak first.
    A box overlapping a higher one by more than `overlap` (IoU) is dropped: a large face's heatmap
    can hold several peaks, each of which would be a false face."""
    height, width = heat.shape
    peaks = ((heat >= threshold) & (heat >= cv2.dilate(heat, np.ones((3, 3), np.uint8)))).astype(np.uint8)
    n, _, _, centroids = cv2.connectedComponentsWithStats(peaks, connectivity=8)
    cols, rows = np.round(centroids[1:]).astype(int).T if n > 1 else (np.zeros(0, int), np.zeros(0, int))
    w, h = (np.exp(np.minimum(log_sizes[rows, cols, i], 0.0)) * side for i, side in enumerate((width, height)))
    cx, cy = cols + 0.5, rows + 0.5
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, heat[rows, cols]], axis=1).astype(np.float32)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    boxes = boxes[np.argsort(-boxes[:, 4], kind="stable")].reshape(-1, 5)
    if overlap >= 1 or len(boxes) < 2:
        return boxes
    keep = cv2.dnn.NMSBoxes(np.c_[boxes[:, :2], boxes[:, 2:4] - boxes[:, :2]].tolist(), boxes[:, 4].tolist(), 0.0, overlap)
    return boxes[np.sort(np.asarray(keep, int).reshape(-1))]


def label_faces(class_probs: np.ndarray, mask: np.ndarray, boxes: np.ndarray, classes: tuple[str, ...]
                ) -> list[tuple[str, float]]:
    """(class, probability) per box: the class with the highest mean probability over the box's
    face pixels (the whole box where the mask has none there)."""
    out = []
    for x1, y1, x2, y2 in np.asarray(boxes, np.float32)[:, :4].astype(int):
        region, inside = class_probs[y1:y2, x1:x2], mask[y1:y2, x1:x2].astype(bool)
        mean = (region[inside] if inside.any() else region.reshape(-1, region.shape[-1])).mean(axis=0)
        k = int(np.argmax(mean))
        out.append((classes[k], float(mean[k])))
    return out

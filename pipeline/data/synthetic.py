"""Deterministic synthetic face scenes: the embedded demo data, a stand-in for real photos.

Scenes hold 0..max_faces face-like heads (skin-tone ellipse, hair, eyes, mouth) of varied size,
tilt and tone, some partly occluded, on crops of scikit-learn's bundled sample photos or
procedural textures, with skin-coloured distractor shapes that are not faces. Boxes are the
heads' full extent, occluded part included, as a human annotator would draw them.
"""

from __future__ import annotations

from importlib import resources

import cv2
import numpy as np

from pipeline.data.formats import Report, Sample, repair_boxes

SKIN_TONES = np.array(  # RGB, light to dark
    [[255, 224, 196], [241, 194, 158], [224, 172, 125], [198, 134, 92], [160, 104, 66], [111, 69, 44], [74, 46, 30]],
    np.float32,
)


def sample_photos() -> list[np.ndarray]:
    """scikit-learn's two bundled photos (china.jpg, flower.jpg), RGB; shipped with the package."""
    photos = []
    for name in ("china.jpg", "flower.jpg"):
        path = resources.files("sklearn.datasets.images") / name
        photos.append(cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    return photos


def generate(n_images: int, min_size: int, max_size: int, max_faces: int, seed: int) -> list[Sample]:
    """`n_images` scenes, identical for the same arguments."""
    rng = np.random.default_rng(seed)
    photos = sample_photos()
    report = Report()
    samples = []
    for i in range(n_images):
        h, w = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
        image = _background(rng, h, w, photos)
        for _ in range(int(rng.integers(0, 3))):
            _distractor(rng, image)
        boxes = [_face(rng, image) for _ in range(int(rng.integers(0, max_faces + 1)))]
        image = np.clip(image + rng.normal(0, rng.uniform(0, 8), image.shape), 0, 255).astype(np.uint8)
        samples.append(Sample(f"syn{i:05d}", image, repair_boxes(np.array(boxes), w, h, report)))
    return samples


def _background(rng: np.random.Generator, h: int, w: int, photos: list[np.ndarray]) -> np.ndarray:
    kind = rng.integers(0, 4)
    if kind == 0:  # photo crop
        photo = photos[rng.integers(len(photos))]
        ph, pw = photo.shape[:2]
        ch, cw = int(rng.integers(ph // 4, ph)), int(rng.integers(pw // 4, pw))
        y, x = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
        return cv2.resize(photo[y : y + ch, x : x + cw], (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    if kind == 1:  # linear gradient
        angle = rng.uniform(0, np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy) / (w + h)
    elif kind == 2:  # stripes / checks
        period = rng.uniform(6, 40)
        t = (np.sin(xx / period * (1 + rng.uniform())) * np.sin(yy / period) > 0).astype(np.float32)
    else:  # smooth noise
        coarse = rng.uniform(0, 1, (int(rng.integers(2, 8)), int(rng.integers(2, 8)))).astype(np.float32)
        t = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    t = np.clip(t, 0, 1)[..., None]
    return c1 * (1 - t) + c2 * t


def _distractor(rng: np.random.Generator, image: np.ndarray) -> None:
    """A skin-coloured hand/arm-like shape that must not be marked as a face."""
    h, w = image.shape[:2]
    color = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.85, 1.1)
    x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
    bw, bh = int(rng.integers(4, max(5, w // 3))), int(rng.integers(4, max(5, h // 8)))
    box = cv2.boxPoints(((x, y), (bw, bh), float(rng.uniform(0, 180)))).astype(np.int32)
    cv2.fillPoly(image, [box], color.tolist())


def _face(rng: np.random.Generator, image: np.ndarray) -> list[float]:
    h, w = image.shape[:2]
    fh = rng.uniform(0.06, 0.45) * min(h, w)  # head height
    fw = fh * rng.uniform(0.65, 0.85)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    angle = float(rng.uniform(-30, 30))
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.8, 1.15)
    hair = rng.uniform(0, 90, 3) * rng.uniform(0.3, 1.5)
    centre, axes = (cx, cy), (fw / 2, fh / 2)
    # hair: a slightly larger ellipse shifted up, under the face
    up = np.array([np.sin(np.radians(angle)), -np.cos(np.radians(angle))])
    hc = (cx + up[0] * fh * 0.08, cy + up[1] * fh * 0.08)
    _ellipse(image, hc, (axes[0] * 1.08, axes[1] * 1.02), angle, hair)
    _ellipse(image, centre, axes, angle, skin)
    # eyes and mouth in face coordinates, rotated with the head
    rot = cv2.getRotationMatrix2D((0, 0), -angle, 1.0)[:, :2]
    turn = rng.uniform(-0.15, 0.15)  # pose: features shift sideways
    for dx, dy, ax, ay, col in (
        (-0.2 + turn, -0.1, 0.08, 0.04, (30, 20, 20)),
        (0.2 + turn, -0.1, 0.08, 0.04, (30, 20, 20)),
        (turn, 0.25, 0.18, 0.04, skin * 0.55),
    ):
        off = rot @ np.array([dx * fw, dy * fh])
        _ellipse(image, (cx + off[0], cy + off[1]), (ax * fw, ay * fh), angle, col)
    pts = cv2.ellipse2Poly((int(cx), int(cy)), (max(1, int(axes[0])), max(1, int(axes[1] * 1.02))), int(angle), 0, 360, 10)
    x1, y1 = pts.min(axis=0)
    x2, y2 = pts.max(axis=0) + 1
    if rng.uniform() < 0.3:  # occluder (hand, mask, object) over part of the face
        oy = rng.uniform(y1, y2)
        ox = rng.uniform(x1, x2)
        color = rng.uniform(0, 255, 3)
        cv2.rectangle(image, (int(ox - fw * 0.4), int(oy)), (int(ox + fw * 0.4), int(oy + fh * 0.4)), color.tolist(), -1)
    return [float(x1), float(y1), float(x2), float(y2)]


def _ellipse(image: np.ndarray, centre, axes, angle: float, color) -> None:
    cv2.ellipse(
        image,
        (int(round(centre[0])), int(round(centre[1]))),
        (max(1, int(round(axes[0]))), max(1, int(round(axes[1])))),
        angle,
        0,
        360,
        np.asarray(color, np.float64).tolist(),
        -1,
        cv2.LINE_AA,
    )

"""Readers for face-box datasets and the normalised on-disk form every later stage reads.

Every source yields `Sample`s: an RGB uint8 image, its face boxes as `[x1, y1, x2, y2]` in
pixels and each face's mask-wearing class (None where the source has no labels). Input quirks
are repaired and counted in a `Report`, never silently; malformed input raises `FormatError`
naming the file, row and field.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import cv2
import numpy as np
import pandas as pd

from pipeline.config import Limits
from pipeline.data import safe_npy
from pipeline.data.images import open_image
from pipeline.io import atomic_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class FormatError(ValueError):
    """Input that cannot be read as a face dataset; the message says where and why."""


@dataclass
class Sample:
    image_id: str
    image: np.ndarray  # H x W x 3, uint8, RGB
    boxes: np.ndarray  # N x 4, float32, pixel x1 y1 x2 y2
    labels: list[str | None] | None = None  # one class per box; None: a face without a label (never "without mask")

    def __post_init__(self):
        if self.labels is None:
            self.labels = [None] * len(self.boxes)
        if len(self.labels) != len(self.boxes):
            raise ValueError(f"{self.image_id}: {len(self.labels)} labels for {len(self.boxes)} boxes")

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass
class Report:
    """What extraction repaired or dropped, by reason; and the box labels a source carries."""

    counts: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)

    def add(self, reason: str, n: int = 1) -> None:
        if n:
            self.counts[reason] += n


def to_rgb(image: np.ndarray, where: str, report: Report) -> np.ndarray:
    """RGB uint8 from grayscale, single-channel or RGBA input (alpha dropped)."""
    if not isinstance(image, np.ndarray):
        raise FormatError(f"{where}: image is {type(image).__name__}, expected a numpy array")
    if image.dtype != np.uint8:
        raise FormatError(f"{where}: image dtype is {image.dtype}, expected uint8")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        report.add("grayscale_to_rgb")
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        report.add("rgba_to_rgb")
        image = image[:, :, :3]
    elif not (image.ndim == 3 and image.shape[2] == 3):
        raise FormatError(f"{where}: image shape {image.shape} is not HxW, HxWx1, HxWx3 or HxWx4")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise FormatError(f"{where}: image is empty ({image.shape})")
    return np.ascontiguousarray(image)


def repair_boxes(boxes: np.ndarray, width: int, height: int, report: Report) -> np.ndarray:
    """Fix corner order, clip to the image, drop boxes left with no area; count each repair."""
    return _repair(boxes, width, height, report)[0]


def _repair(boxes: np.ndarray, width: int, height: int, report: Report) -> tuple[np.ndarray, np.ndarray]:
    """`repair_boxes`, and which of the input boxes were kept (for their labels)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if len(boxes) == 0:
        return boxes, np.zeros(0, bool)
    swapped = (boxes[:, 0] > boxes[:, 2]) | (boxes[:, 1] > boxes[:, 3])
    report.add("corner_order_fixed", int(swapped.sum()))
    boxes = np.stack(
        [
            np.minimum(boxes[:, 0], boxes[:, 2]),
            np.minimum(boxes[:, 1], boxes[:, 3]),
            np.maximum(boxes[:, 0], boxes[:, 2]),
            np.maximum(boxes[:, 1], boxes[:, 3]),
        ],
        axis=1,
    )
    clipped = np.stack(
        [boxes[:, 0].clip(0, width), boxes[:, 1].clip(0, height), boxes[:, 2].clip(0, width), boxes[:, 3].clip(0, height)],
        axis=1,
    )
    report.add("box_clipped", int((np.abs(clipped - boxes) > 1e-6).any(axis=1).sum()))
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    report.add("zero_area_box_dropped", int((~keep).sum()))
    return clipped[keep], keep


def read_images_npy(path: str | os.PathLike, report: Report, limits: Limits) -> list[Sample]:
    """The course layout: object array (N, 2) of [image, [{'points': [{x, y}, {x, y}], ...}]].

    Loaded with `safe_npy`: a file holding anything but plain data is refused, never run.
    """
    path = Path(path)
    try:
        data = safe_npy.load(path)
    except OSError as err:
        raise FormatError(f"{path}: cannot be read ({err})") from err
    except safe_npy.UnsafeFile as err:
        raise FormatError(f"{path}: refused, not plain data: {err}") from None
    except ValueError as err:
        raise FormatError(f"{path}: cannot be read as a .npy file: {err}") from None
    if data.dtype != object or data.ndim != 2 or data.shape[1] != 2:
        raise FormatError(
            f"{path}: expected an object array of shape (N, 2) [image, faces], got dtype {data.dtype} shape {data.shape}"
        )
    samples = []
    for i, (image, faces) in enumerate(data):
        where = f"{path} row {i}"
        image = to_rgb(image, f"{where} field 0 (image)", report)
        h, w = image.shape[:2]
        if problem := limits.size_problem(w, h):
            raise FormatError(f"{where} field 0 (image): {problem}")
        if faces is None:
            faces = []
        if not isinstance(faces, (list, tuple, np.ndarray)):
            raise FormatError(f"{where} field 1 (faces): expected a list of dicts, got {type(faces).__name__}")
        boxes = []
        for j, face in enumerate(faces):
            fwhere = f"{where} field 1 (faces) item {j}"
            if not isinstance(face, dict) or "points" not in face:
                raise FormatError(f"{fwhere}: missing 'points'")
            points = face["points"]
            try:
                (p1, p2) = points
                box = [float(p1["x"]) * w, float(p1["y"]) * h, float(p2["x"]) * w, float(p2["y"]) * h]
            except (TypeError, ValueError, KeyError) as err:
                raise FormatError(f"{fwhere} 'points': expected two {{'x', 'y'}} corners, got {points!r}") from err
            if not np.all(np.isfinite(box)):
                raise FormatError(f"{fwhere} 'points': not finite: {points!r}")
            boxes.append(box)
        samples.append(Sample(f"row{i:05d}", image, repair_boxes(np.array(boxes), w, h, report)))
    return samples


def read_yolo_folder(path: str | os.PathLike, report: Report, limits: Limits) -> list[Sample]:
    """`images/<name>.<ext>` with `labels/<name>.txt` lines `cls cx cy w h [...]`, normalised to 0..1."""
    root = Path(path)
    image_dir, label_dir = root / "images", root / "labels"
    if not image_dir.is_dir():
        raise FormatError(f"{root}: no images/ folder (expected images/ and labels/)")
    files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FormatError(f"{image_dir}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    if label_dir.is_dir():
        report.add("orphan_label_file", len({p.stem for p in label_dir.glob("*.txt")} - {f.stem for f in files}))
    samples = []
    for file in files:
        image = read_image_file(file, report, limits)
        h, w = image.shape[:2]
        label = label_dir / f"{file.stem}.txt"
        if not label.exists():
            report.add("missing_label_file_as_negative")
            boxes = []
        else:
            boxes = [_yolo_box(fields, w, h, f"{label} line {n}") for n, fields in _label_lines(label)]
        samples.append(Sample(file.stem, image, repair_boxes(np.array(boxes), w, h, report)))
    return samples


def _label_lines(label: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-empty line of a YOLO label file."""
    return [(n, line.split()) for n, line in enumerate(_text_lines(label), start=1) if line.strip()]


def _yolo_box(fields: list[str], width: int, height: int, where: str) -> list[float]:
    """Pixel corners of a `class cx cy w h` line; non-numbers and non-finite values are errors."""
    try:
        if len(fields) < 5:
            raise ValueError("fewer than 5 fields")
        cx, cy, bw, bh = (float(v) for v in fields[1:5])
    except ValueError as err:
        raise FormatError(f"{where}: expected 'class cx cy w h', got {' '.join(fields)!r} ({err})") from None
    if not np.all(np.isfinite([cx, cy, bw, bh])):
        raise FormatError(f"{where}: box values are not finite: {' '.join(fields[1:5])!r}")
    return [(cx - bw / 2) * width, (cy - bh / 2) * height, (cx + bw / 2) * width, (cy + bh / 2) * height]


def read_voc_folder(path: str | os.PathLike, report: Report, limits: Limits, classes: dict[str, str] | None = None
                    ) -> list[Sample]:
    """Pascal VOC: `Annotations/<name>.xml` (one `<object>` per face, `<bndbox>` in pixels) and
    `JPEGImages/<filename>`. Each object's `<name>` is counted in `report.labels`; with `classes`
    (`data.labels`: name -> class) it becomes the face's class, and a name not in it is an error
    naming file and object. Without, the faces carry no class.

    Stray text inside an annotation (real VOC files carry such debris) is ignored and counted;
    an entity declaration is refused (no entity expansion from a data file).
    """
    root = Path(path)
    ann_dir, image_dir = root / "Annotations", root / "JPEGImages"
    if not ann_dir.is_dir() or not image_dir.is_dir():
        raise FormatError(f"{root}: expected Annotations/ and JPEGImages/ folders (Pascal VOC)")
    annotations = sorted(ann_dir.glob("*.xml"))
    if not annotations:
        raise FormatError(f"{ann_dir}: no .xml annotation files")
    samples, named = [], set()
    for xml in annotations:
        filename, objects = _voc_annotation(xml, report)
        file = image_dir / filename
        if not file.is_file():
            raise FormatError(f"{xml} <filename>: {file} does not exist")
        named.add(file.name)
        image = read_image_file(file, report, limits)
        h, w = image.shape[:2]
        report.labels.update(label for label, _ in objects)
        for i, (label, _) in enumerate(objects):
            if classes and label not in classes:
                raise FormatError(f"{xml} <object> {i} <name>: {label!r} is not in data.labels "
                                  f"({', '.join(sorted(classes))}); add it there")
        boxes, kept = _repair(np.array([box for _, box in objects]), w, h, report)
        labels = [classes[label] if classes else None for (label, _), keep in zip(objects, kept) if keep]
        samples.append(Sample(xml.stem, image, boxes, labels))
    report.add("image_without_annotation",
               sum(1 for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in named))
    return samples


def read_crop_folders(path: str | os.PathLike, report: Report, limits: Limits, classes: dict[str, str] | None = None
                      ) -> Iterator[Sample]:
    """Face crops sorted into one folder per class (`<path>/<name>/*.jpg`, the layout mask classifiers
    train on): each image is one face filling it, its box the whole image. The folder's name is
    counted in `report.labels`; with `classes` (`data.labels`) it becomes the face's class, and a
    folder not in it is an error naming it. Files that are not images are counted and skipped.
    """
    root = Path(path)
    if not root.is_dir():
        raise FormatError(f"{root}: expected a folder with one subfolder of face crops per class")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise FormatError(f"{root}: no class subfolders (expected e.g. {root}/with_mask/*.jpg)")
    for folder in folders:
        if classes and folder.name not in classes:
            raise FormatError(f"{folder}: folder name {folder.name!r} is not in data.labels "
                              f"({', '.join(sorted(classes))}); add it there")
    for folder in folders:
        files = sorted(folder.iterdir())
        report.add("not_an_image", sum(1 for f in files if f.suffix.lower() not in IMAGE_SUFFIXES))
        images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
        stems = Counter(f.stem for f in images)
        for file in images:
            if stems[file.stem] > 1:  # the image id is folder and stem
                raise FormatError(f"{file}: another image in {folder} has the name {file.stem!r}; rename one")
            image = read_image_file(file, report, limits)
            h, w = image.shape[:2]
            report.labels[folder.name] += 1
            yield Sample(f"{folder.name}-{file.stem}", image, np.array([[0, 0, w, h]], np.float32),
                         [classes[folder.name] if classes else None])


def _voc_annotation(xml: Path, report: Report) -> tuple[str, list[tuple[str, list[float]]]]:
    """(image filename, [(label, [xmin, ymin, xmax, ymax])]) of one VOC file; FormatError naming file and object."""
    data = xml.read_bytes()
    if b"<!ENTITY" in data:
        raise FormatError(f"{xml}: refused, declares XML entities")
    try:
        tree = ElementTree.fromstring(data)
    except ElementTree.ParseError as err:
        raise FormatError(f"{xml}: not well-formed XML ({err})") from None
    filename = (tree.findtext("filename") or "").strip()
    if not filename:
        raise FormatError(f"{xml}: no <filename>")
    objects = []
    for i, obj in enumerate(tree.findall("object")):
        where = f"{xml} <object> {i}"
        report.add("stray_text_in_annotation", sum(bool((e.tail or "").strip()) for e in obj))
        label = (obj.findtext("name") or "").strip()
        if not label:
            raise FormatError(f"{where}: no <name>")
        try:
            box = [float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise FormatError(f"{where} <bndbox>: expected numbers xmin, ymin, xmax, ymax") from None
        if not np.all(np.isfinite(box)):
            raise FormatError(f"{where} <bndbox>: not finite: {box}")
        objects.append((label, box))
    return filename, objects


def read_wider_face(path: str | os.PathLike, report: Report, limits: Limits) -> Iterator[Sample]:
    """The official WIDER FACE layout, one image at a time: `wider_face_split/wider_face_<subset>_bbx_gt.txt`
    and `WIDER_<subset>/images/<event>/<name>.jpg`. `path` is the root (the train subset) or one of
    its `wider_face_<subset>_bbx_gt.txt` files (e.g. the val subset's).

    Each entry is a file name, a face count, then one line per face `x y w h blur expression
    illumination invalid occlusion pose`; an image with no face still has one line of zeros,
    which is skipped and counted. Every face is kept (WIDER's `invalid` ones too: they are faces,
    and training them as background would teach the model to miss them); `invalid`, heavy blur
    and heavy occlusion are counted. Image ids are file stems, which WIDER keeps unique.
    """
    path = Path(path)
    if path.is_file():
        named = re.fullmatch(r"wider_face_(\w+)_bbx_gt\.txt", path.name)
        if not named:
            raise FormatError(f"{path}: expected the root folder or a wider_face_<subset>_bbx_gt.txt file")
        root, subset, label_file = path.parent.parent, named.group(1), path
    else:
        root, subset = path, "train"
        label_file = root / "wider_face_split" / "wider_face_train_bbx_gt.txt"
    image_dir = root / f"WIDER_{subset}" / "images"
    if not label_file.is_file() or not image_dir.is_dir():
        raise FormatError(f"{path}: expected {label_file.relative_to(root)} and WIDER_{subset}/images/ under "
                          f"{root} (the official WIDER FACE layout)")
    lines = _text_lines(label_file)
    listed, n = set(), 0
    while n < len(lines):
        name, where = lines[n].strip(), f"{label_file} line {n + 1}"
        if not name.lower().endswith(IMAGE_SUFFIXES):
            raise FormatError(f"{where}: expected an image path such as 0--Parade/0_Parade_marchingband_1_849.jpg, "
                              f"got {name!r}")
        try:
            count = int(lines[n + 1])
        except (IndexError, ValueError):
            raise FormatError(f"{label_file} line {n + 2}: expected the face count of {name}") from None
        if count < 0:
            raise FormatError(f"{label_file} line {n + 2}: negative face count {count}")
        n += 2
        rows = [_wider_row(lines[i], f"{label_file} line {i + 1}") for i in range(n, min(n + count, len(lines)))]
        if len(rows) < count:
            raise FormatError(f"{label_file}: {name} lists {count} faces, the file ends after {len(rows)}")
        n += count
        if count == 0 and n < len(lines) and not lines[n].strip().lower().endswith(IMAGE_SUFFIXES):
            if any(_wider_row(lines[n], f"{label_file} line {n + 1}")):
                raise FormatError(f"{label_file} line {n + 1}: {name} has 0 faces but a face line follows")
            n += 1  # the placeholder line of an image without faces
        report.add("widerface_image_without_faces", int(count == 0))
        file = image_dir / name
        if not file.is_file():
            raise FormatError(f"{where}: {file} does not exist")
        if file.stem in listed:
            raise FormatError(f"{label_file}: {name} is listed twice")
        listed.add(file.stem)
        faces = np.array(rows, np.float32).reshape(-1, 10)
        report.add("widerface_invalid_face_kept", int((faces[:, 7] == 1).sum()))
        report.add("widerface_heavy_blur_face", int((faces[:, 4] == 2).sum()))
        report.add("widerface_heavy_occlusion_face", int((faces[:, 8] == 2).sum()))
        image = read_image_file(file, report, limits)
        h, w = image.shape[:2]
        boxes = np.concatenate([faces[:, :2], faces[:, :2] + faces[:, 2:4]], axis=1)
        yield Sample(file.stem, image, repair_boxes(boxes, w, h, report))
    report.add("image_without_annotation", sum(1 for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                                               and p.stem not in listed))


def _wider_row(line: str, where: str) -> list[int]:
    fields = line.split()
    try:
        if len(fields) != 10:
            raise ValueError
        values = [int(v) for v in fields]
    except ValueError:
        raise FormatError(f"{where}: expected 'x y w h blur expression illumination invalid occlusion pose' as "
                          f"integers, got {line.strip()!r}") from None
    return values


def _text_lines(file: Path) -> list[str]:
    try:
        return file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise FormatError(f"{file}: not a text file ({err})") from None


def read_image_file(file: Path, report: Report, limits: Limits) -> np.ndarray:
    """RGB image of a file; its size is checked from the header before decoding (as served images are)."""
    data = np.fromfile(file, dtype=np.uint8)
    try:
        open_image(data.tobytes(), limits)
    except ValueError as err:
        raise FormatError(f"{file}: {err}") from None
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FormatError(f"{file}: not a readable image file")
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
        image = cv2.cvtColor(image, code)
    return to_rgb(image, str(file), report)


# --- the normalised form written by the extract stage -------------------------------------

IMAGE_COLUMNS, BOX_COLUMNS = ["image_id", "width", "height", "n_faces"], ["image_id", "x1", "y1", "x2", "y2", "label"]


def to_tables(samples: Iterable[Sample]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(images, boxes) tables: image_id, width, height, n_faces / image_id, x1, y1, x2, y2, label
    (empty for a face without a class)."""
    images, boxes = [], []
    for s in samples:
        _add_rows(s, images, boxes)
    return pd.DataFrame(images, columns=IMAGE_COLUMNS), pd.DataFrame(boxes, columns=BOX_COLUMNS)


def _add_rows(s: Sample, images: list[dict], boxes: list[dict]) -> None:
    images.append({"image_id": s.image_id, "width": s.width, "height": s.height, "n_faces": len(s.boxes)})
    boxes += [{"image_id": s.image_id, "x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3], "label": label or ""}
              for b, label in zip(s.boxes, s.labels)]


def write_dataset(items: Iterable[tuple[Sample, np.ndarray]], out_dir: str | os.PathLike) -> None:
    """images/<id>.png, masks/<id>.png, images.csv and boxes.csv from (sample, mask) pairs, one image in
    memory at a time; all replaced at once. A repeated image id is an error (one would overwrite the other)."""
    images, boxes = [], []
    with atomic_path(out_dir) as tmp:
        (tmp / "images").mkdir(parents=True)
        (tmp / "masks").mkdir()
        for sample, mask in items:
            if (tmp / "images" / f"{sample.image_id}.png").exists():
                raise FormatError(f"image id {sample.image_id!r} appears twice: one would overwrite the other")
            _write_png(tmp / "images" / f"{sample.image_id}.png", cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
            _write_png(tmp / "masks" / f"{sample.image_id}.png", mask * 255)
            _add_rows(sample, images, boxes)
        pd.DataFrame(images, columns=IMAGE_COLUMNS).to_csv(tmp / "images.csv", index=False)
        pd.DataFrame(boxes, columns=BOX_COLUMNS).to_csv(tmp / "boxes.csv", index=False)


def read_table(data_dir: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(images, boxes) tables of an extracted dataset."""
    data_dir = Path(data_dir)
    images = pd.read_csv(data_dir / "images.csv", dtype={"image_id": str})
    boxes = pd.read_csv(data_dir / "boxes.csv", dtype={"image_id": str, "label": str}, keep_default_na=False)
    return images, boxes


def load_samples(data_dir: str | os.PathLike, image_ids: list[str] | None = None, lazy: bool = False) -> list[Sample]:
    """Samples of an extracted dataset, in `image_ids` order (all when None). With `lazy`, each one reads
    its image file only when asked for it (`StoredSample`): a split of any size costs its tables only."""
    data_dir = Path(data_dir)
    images, boxes = read_table(data_dir)
    ids = list(images["image_id"]) if image_ids is None else list(image_ids)
    sizes = images.set_index("image_id")[["width", "height"]]
    by_id = {k: g for k, g in boxes.groupby("image_id")}
    empty = boxes.iloc[:0]
    samples = []
    for image_id in ids:
        faces = by_id.get(image_id, empty)
        xyxy, labels = faces[["x1", "y1", "x2", "y2"]].to_numpy(np.float32), [label or None for label in faces["label"]]
        file = data_dir / "images" / f"{image_id}.png"
        if lazy:
            width, height = (int(v) for v in sizes.loc[image_id])
            samples.append(StoredSample(image_id, file, width, height, xyxy, labels))
        else:
            samples.append(Sample(image_id, _read_png(file), xyxy, labels))
    return samples


class StoredSample(Sample):
    """A sample of an extracted dataset whose pixels stay on disk: `image` reads the file at each access."""

    def __init__(self, image_id: str, file: Path, width: int, height: int, boxes: np.ndarray, labels: list):
        self.image_id, self.file, self._size, self.boxes, self.labels = image_id, file, (height, width), boxes, labels

    @property
    def image(self) -> np.ndarray:
        image = _read_png(self.file)
        if image.shape[:2] != self._size:
            raise FormatError(f"{self.file}: {image.shape[1]}x{image.shape[0]}, images.csv says "
                              f"{self._size[1]}x{self._size[0]}")
        return image

    @property
    def height(self) -> int:
        return self._size[0]

    @property
    def width(self) -> int:
        return self._size[1]


def _read_png(file: Path) -> np.ndarray:
    image = cv2.imread(str(file), cv2.IMREAD_COLOR)
    if image is None:
        raise FormatError(f"{file}: missing or unreadable")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _write_png(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")


def fingerprint(samples: list[Sample]) -> str:
    """Hash of the images and boxes of a split: versions are compared only on identical test data."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.image_id):
        h.update(s.image_id.encode())
        h.update(np.ascontiguousarray(s.image).tobytes())
        h.update(np.round(s.boxes, 2).astype(np.float32).tobytes())
        if any(s.labels):  # faces without classes hash as before labels existed
            h.update("\0".join(label or "" for label in s.labels).encode())
    return h.hexdigest()[:16]

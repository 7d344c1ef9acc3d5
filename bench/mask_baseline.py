"""The classic mask-detector recipe's classifier, measured on real faces: how separable are the classes?

    python -m bench.mask_baseline                      # ../shared/data/facemask-scenes and facemask-crops
    python -m bench.mask_baseline --alpha 0.25 --crop 96

Face crops (true boxes, a margin around them) go through a frozen ImageNet MobileNet v1; a small
dense head (as the classic projects train) learns the classes from the pooled features, with
class weights against the imbalance. Three measurements, each printed with its cost:
- scenes -> scenes: trained on the train split's faces of facemask-scenes, tested on its test split
  (the pipeline's seeded split, stratified by class), 3 classes;
- crops -> scenes: trained on facemask-crops' folders, tested on the same scene faces (2 classes);
- scenes -> crops: the scenes model on facemask-crops (2 classes; `incorrect` answers count as wrong).
True boxes, so this is the classifier's share only: the detector's misses come on top.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from pipeline.config import Params, build, compose, resolve_path
from pipeline.data.formats import IMAGE_SUFFIXES, Report, read_image_file, read_voc_folder, to_tables
from pipeline.data.split import split_dataset

SCENES_CLASSES = {"with_mask": "with_mask", "without_mask": "without_mask", "mask_weared_incorrect": "incorrect"}


def crops_of(samples, size: int, margin: float) -> tuple[np.ndarray, list[str]]:
    """Each labelled face, its box grown by `margin` of its side and clipped, resized to size x size."""
    out, labels = [], []
    for s in samples:
        for (x1, y1, x2, y2), label in zip(s.boxes, s.labels):
            dx, dy = margin * (x2 - x1), margin * (y2 - y1)
            x1, y1 = int(max(0, x1 - dx)), int(max(0, y1 - dy))
            x2, y2 = int(min(s.width, x2 + dx + 1)), int(min(s.height, y2 + dy + 1))
            out.append(cv2.resize(s.image[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_AREA))
            labels.append(label)
    return np.stack(out), labels


def folder_crops(root: Path, size: int, limits) -> tuple[np.ndarray, list[str]]:
    """facemask-crops: one image per face, in a folder named by its class."""
    out, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES):
            out.append(cv2.resize(read_image_file(file, Report(), limits), (size, size), interpolation=cv2.INTER_AREA))
            labels.append(folder.name)
    return np.stack(out), labels


def features(base, crops: np.ndarray) -> tuple[np.ndarray, float]:
    """Global-average-pooled features of the frozen encoder, and images/s."""
    import keras

    start = time.perf_counter()
    x = keras.applications.mobilenet.preprocess_input(crops.astype(np.float32))
    out = base.predict(x, batch_size=64, verbose=0)
    return out, len(crops) / (time.perf_counter() - start)


def train_head(x: np.ndarray, labels: list[str], classes: list[str], seed: int, epochs: int):
    """Dense(128) + dropout + softmax on the features, balanced class weights: (model, seconds)."""
    import keras
    from sklearn.utils.class_weight import compute_class_weight

    keras.utils.set_random_seed(seed)
    y = np.array([classes.index(label) for label in labels])
    weights = compute_class_weight("balanced", classes=np.arange(len(classes)), y=y)
    head = keras.Sequential([keras.Input(x.shape[1:]), keras.layers.Dense(128, activation="relu"),
                             keras.layers.Dropout(0.5), keras.layers.Dense(len(classes), activation="softmax")])
    head.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    start = time.perf_counter()
    head.fit(x, y, batch_size=64, epochs=epochs, class_weight=dict(enumerate(weights)), verbose=0)
    return head, time.perf_counter() - start


def score(head, x: np.ndarray, labels: list[str], classes: list[str], keep: list[str]) -> str:
    """Accuracy, macro-F1 over `keep` and the confusion matrix of the faces whose class is in `keep`."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    sel = [i for i, label in enumerate(labels) if label in keep]
    pred = [classes[k] for k in head.predict(x[sel], verbose=0).argmax(axis=1)]
    truth = [labels[i] for i in sel]
    columns = keep + [c for c in classes if c not in keep]
    matrix = confusion_matrix(truth, pred, labels=columns)[: len(keep)]
    return (f"accuracy {accuracy_score(truth, pred):.3f}, macro-F1 {f1_score(truth, pred, labels=keep, average='macro'):.3f} "
            f"on {len(sel)} faces; confusion (rows true {keep}, columns predicted {columns}): {matrix.tolist()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", default="../shared/data/facemask-scenes")
    parser.add_argument("--crops", default="../shared/data/facemask-crops")
    parser.add_argument("--alpha", type=float, default=0.75, help="encoder width: 0.25 or 0.75 (the weights in ../shared)")
    parser.add_argument("--crop", type=int, default=128, help="crop side in pixels")
    parser.add_argument("--margin", type=float, default=0.15, help="box margin, as a fraction of its side")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    params = build(Params, compose([]), "params")
    weights = str(resolve_path(f"../shared/weights/mobilenet_{'2_5' if args.alpha == 0.25 else '7_5'}_224_tf_no_top.h5"))
    labels_map = params.data.labels or SCENES_CLASSES
    classes = sorted(set(labels_map.values()))

    scenes = read_voc_folder(resolve_path(args.scenes), Report(), params.export.limits, labels_map)
    images, boxes = to_tables(scenes)
    split = split_dataset(images, boxes, params.split.val, params.split.test, params.split.seed).set_index("image_id")["split"]
    parts = {name: [s for s in scenes if split[s.image_id] == name] for name in ("train", "test")}
    (x_train, y_train), (x_test, y_test) = (crops_of(parts[n], args.crop, args.margin) for n in ("train", "test"))
    x_crops, y_crops = folder_crops(resolve_path(args.crops), args.crop, params.export.limits)
    import keras

    base = keras.applications.MobileNet(input_shape=(args.crop, args.crop, 3), alpha=args.alpha, include_top=False,
                                        weights=weights, pooling="avg")
    (f_train, rate), (f_test, _), (f_crops, _) = (features(base, x) for x in (x_train, x_test, x_crops))
    print(f"MobileNet alpha {args.alpha}, {args.crop} px crops: features at {rate:.0f} faces/s; "
          f"scenes train {len(y_train)} / test {len(y_test)} faces, crops {len(y_crops)}")

    head, seconds = train_head(f_train, y_train, classes, params.train.seed, args.epochs)
    print(f"scenes -> scenes: {score(head, f_test, y_test, classes, classes)} (head trained in {seconds:.1f} s)")
    two = ["with_mask", "without_mask"]
    print(f"scenes -> crops: {score(head, f_crops, y_crops, classes, two)}")
    head, seconds = train_head(f_crops, y_crops, two, params.train.seed, args.epochs)
    print(f"crops -> scenes: {score(head, f_test, y_test, two, two)} (head trained in {seconds:.1f} s)")


if __name__ == "__main__":
    main()

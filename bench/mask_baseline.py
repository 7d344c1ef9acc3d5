"""The classic mask-detector recipe's classifier, measured on real faces: how separable are the classes?

    python -m bench.mask_baseline                      # ../shared/data/facemask-scenes and facemask-crops
    python -m bench.mask_baseline --alpha 0.25 --crop 96
    python -m bench.mask_baseline --project .          # the classic recipe as a detector, against ours
    python -m bench.mask_baseline --alpha 0.25 --crop 96 --finetune 10   # encoder trained too, not frozen

Face crops (true boxes, a margin around them) go through a frozen ImageNet MobileNet v1; a small
dense head (as the classic projects train) learns the classes from the pooled features, with
class weights against the imbalance.

With `--project DIR` (a project whose pipeline trained a labelling model): the classic two-stage
recipe on that project's own split. The head learns from the true faces of its train split; at
test time it labels the boxes the project's model finds, with the served settings
(eval/serving_config.json), so both methods share the detector, the split (its fingerprint is
checked) and the scoring (`mask_wearing_report`: mAP@0.5 with detection score x label score,
macro-F1 on found faces). No face-detector weights exist offline (the classic projects used
OpenCV's SSD), so the detector is ours for both; what differs is how a face gets its label.
It also prints the detector's ceiling: the mAP of those boxes with every matched face's true class.
Without it, three measurements, each printed with its cost:
- scenes -> scenes: trained on the train split's faces of facemask-scenes, tested on its test split
  (the pipeline's seeded split, stratified by class), 3 classes;
- crops -> scenes: trained on facemask-crops' folders, tested on the same scene faces (2 classes);
- scenes -> crops: the scenes model on facemask-crops (2 classes; `incorrect` answers count as wrong).
  With `--project`, ours labels each crop alone and centred in a frame twice its side (`--canvas`):
  a crop filling the frame is a face far larger than any it trained on.
True boxes, so this is the classifier's share only: the detector's misses come on top.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.config import Params, ServingConfig, build, compose, read_params, resolve_path
from pipeline.data.formats import (
    IMAGE_SUFFIXES,
    Report,
    fingerprint,
    load_samples,
    read_image_file,
    read_voc_folder,
    to_tables,
)
from pipeline.data.masks import label_faces
from pipeline.data.split import split_dataset
from pipeline.evaluation.evaluate import decode_faces, evaluate
from pipeline.evaluation.metrics import mask_wearing_report, match_pairs, paired_bootstrap
from pipeline.io import read_json
from pipeline.model.inference import predict_probs

SCENES_CLASSES = {"with_mask": "with_mask", "without_mask": "without_mask", "mask_weared_incorrect": "incorrect"}


def face_crops(image: np.ndarray, boxes: np.ndarray, size: int, margin: float) -> list[np.ndarray]:
    """Each box grown by `margin` of its side and clipped to the image, resized to size x size."""
    h, w = image.shape[:2]
    out = []
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64)[:, :4]:
        dx, dy = margin * (x2 - x1), margin * (y2 - y1)
        x1, y1 = int(max(0, x1 - dx)), int(max(0, y1 - dy))
        x2, y2 = int(min(w, max(x2 + dx + 1, x1 + 1))), int(min(h, max(y2 + dy + 1, y1 + 1)))
        out.append(cv2.resize(image[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_AREA))
    return out


def crops_of(samples, size: int, margin: float) -> tuple[np.ndarray, list[str]]:
    """Each labelled face's crop (`face_crops`) and its class; faces without a class are left out."""
    out, labels = [], []
    for s in samples:
        known = [k for k, label in enumerate(s.labels) if label is not None]
        out += face_crops(s.image, s.boxes[known], size, margin)
        labels += [s.labels[k] for k in known]
    return np.stack(out), labels


def folder_files(root: Path) -> list[tuple[Path, str]]:
    """facemask-crops: (file, class) per image, one face each, in a folder named by its class."""
    return [(file, folder.name) for folder in sorted(p for p in root.iterdir() if p.is_dir())
            for file in sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)]


def decode(files: list[tuple[Path, str]], limits) -> tuple[list[np.ndarray], list[str]]:
    return [read_image_file(file, Report(), limits) for file, _ in files], [label for _, label in files]


def resized(images: list[np.ndarray], size: int) -> np.ndarray:
    return np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])


def preprocess(crops: np.ndarray) -> np.ndarray:
    import keras

    return keras.applications.mobilenet.preprocess_input(crops.astype(np.float32))


def balanced_targets(labels: list[str], classes: list[str]) -> tuple[np.ndarray, dict[int, float]]:
    """Class indices and scikit-learn's balanced class weights, as Keras' `fit` takes them."""
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([classes.index(label) for label in labels])
    return y, dict(enumerate(compute_class_weight("balanced", classes=np.arange(len(classes)), y=y)))


def features(base, crops: np.ndarray) -> tuple[np.ndarray, float]:
    """Global-average-pooled features of the frozen encoder, and images/s."""
    start = time.perf_counter()
    out = base.predict(preprocess(crops), batch_size=64, verbose=0)
    return out, len(crops) / (time.perf_counter() - start)


def train_head(x: np.ndarray, labels: list[str], classes: list[str], seed: int, epochs: int):
    """Dense(128) + dropout + softmax on the features, balanced class weights: (model, seconds)."""
    import keras

    keras.utils.set_random_seed(seed)
    y, weights = balanced_targets(labels, classes)
    head = keras.Sequential([keras.Input(x.shape[1:]), keras.layers.Dense(128, activation="relu"),
                             keras.layers.Dropout(0.5), keras.layers.Dense(len(classes), activation="softmax")])
    head.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    start = time.perf_counter()
    head.fit(x, y, batch_size=64, epochs=epochs, class_weight=weights, verbose=0)
    return head, time.perf_counter() - start


def finetune(base, head, crops: np.ndarray, labels: list[str], classes: list[str], seed: int, epochs: int) -> float:
    """Train the encoder and its head together on the crops (mirrored at random; batch norm kept in
    inference mode, as Keras' transfer-learning guide does): what a crop classifier in the served
    model would be, rather than the classic frozen features. Updates both in place; returns seconds."""
    import keras

    keras.utils.set_random_seed(seed)
    y, weights = balanced_targets(labels, classes)
    inputs = keras.Input(crops.shape[1:])
    model = keras.Model(inputs, head(base(keras.layers.RandomFlip("horizontal", seed=seed)(inputs), training=False)))
    base.trainable = True
    model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
    start = time.perf_counter()
    model.fit(preprocess(crops), y, batch_size=32, epochs=epochs, class_weight=weights, verbose=0)
    return time.perf_counter() - start


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


def classify(base, head, crops: list[np.ndarray], classes: list[str]) -> list[tuple[str, float]]:
    """(class, probability) per crop from the frozen encoder and the head."""
    if not crops:
        return []
    probs = head.predict(features(base, np.stack(crops))[0], verbose=0)
    return [(classes[k], float(row[k])) for row, k in zip(probs, probs.argmax(axis=1))]


def compare_on_project(project: Path, args, weights: str) -> None:
    """The classic two-stage recipe against the project's labelling model, on its split and detector."""
    import keras

    from pipeline.model.network import load_model

    seed = read_params(project / "params.yaml")["train"]["seed"]
    config = ServingConfig.from_dict(read_json(project / "eval/serving_config.json"), f"{project}/eval/serving_config.json")
    classes = config.classes
    if not classes:
        raise SystemExit(f"{project}: its model labels no faces (data.labels is empty); train one with labels first")
    table = pd.read_csv(project / "data/split.csv", dtype={"image_id": str})
    split = {n: load_samples(project / "data/extracted", list(table.loc[table["split"] == n, "image_id"]))
             for n in ("train", "test")}
    if fingerprint(split["test"]) != config.test_fingerprint:
        raise SystemExit(f"{project}: the test split is not the one its model was evaluated on (fingerprint differs)")
    test = split["test"]

    start = time.perf_counter()
    model = load_model(project / "models/model.keras")
    probs = predict_probs(model, [s.image for s in test], config.tta_sizes, flip=config.flip_tta)
    ours, preds = evaluate(probs, test, config.decoding)  # what the evaluate stage measured
    detect = time.perf_counter() - start
    boxes = [b for _, b in preds]
    # Ours' AP ranks more peaks than it serves with centres: so does the classic's (the same boxes without centres).
    ours_ranked = [decode_faces(p, config.decoding.ranked) for p in probs]
    ranked = [b for _, b, _ in ours_ranked] if config.decoding.ranked != config.decoding else boxes

    base = keras.applications.MobileNet(input_shape=(args.crop, args.crop, 3), alpha=args.alpha, include_top=False,
                                        weights=weights, pooling="avg")
    x_train, y_train = crops_of(split["train"], args.crop, args.margin)
    head, seconds = train_head(features(base, x_train)[0], y_train, list(classes), seed, args.epochs)
    if args.finetune:
        seconds += finetune(base, head, x_train, y_train, list(classes), seed, args.finetune)
    start = time.perf_counter()
    classic_ranked = [classify(base, head, face_crops(s.image, b, args.crop, args.margin), list(classes)) for s, b in zip(test, ranked)]
    per_face = 1000 * (time.perf_counter() - start) / max(sum(map(len, ranked)), 1)
    n_found = sum(map(len, boxes))
    # The served boxes are the ranked ones at or above the served peak threshold (overlaps are dropped highest first).
    served = [r[:, 4] >= config.centre_threshold if ranked is not boxes else np.ones(len(r), bool) for r in ranked]
    classic = [[label for label, keep in zip(labels, sel) if keep] for labels, sel in zip(classic_ranked, served)]
    assert [len(c) for c in classic] == [len(b) for b in boxes], "served boxes are not the ranked ones above the threshold"

    truth = [s.boxes for s in test], [s.labels for s in test]
    print(f"{project}: {len(test)} test images (fingerprint {config.test_fingerprint}), {n_found} faces found by "
          f"its model ({1000 * detect / len(test):.0f} ms an image in-process); classic head trained on "
          f"{len(y_train)} true train faces in {seconds:.1f} s")
    classic_metrics, confusion = mask_wearing_report(boxes, classic, *truth, classes)
    if ranked is not boxes:  # AP over the ranked boxes, as ours'
        ranked_metrics, _ = mask_wearing_report(ranked, classic_ranked, *truth, classes)
        classic_metrics.update({k: v for k, v in ranked_metrics.items() if k.startswith("ap50") or k == "map50"})
    tuned = f", then both fine-tuned {args.finetune} epochs" if args.finetune else ""
    rows = [("ours: class channels, one pass", ours, "0 (in the one pass)"),
            (f"classic: MobileNet {args.alpha} crops {args.crop} px + dense head{tuned}", {**classic_metrics, "confusion": confusion},
             f"{per_face:.1f} ms a face")]
    aps = " | ".join(f"AP {c}" for c in classes)
    print(f"| labels from | mAP@0.5 | {aps} | macro-F1 | label accuracy | labelling cost |")
    print("| --- " * (5 + len(classes)) + "|")
    for name, m, cost in rows:
        per_class = " | ".join(f"{m.get(f'ap50_{c}', float('nan')):.3f}" for c in classes)
        print(f"| {name} | {m['map50']:.3f} | {per_class} | {m['macro_f1']:.3f} | {m['label_accuracy']:.3f} | {cost} |")
        print(f"  confusion on found faces (rows true {list(classes)}): {np.asarray(m['confusion']).tolist()}")
    ours_labels = [labels for _, _, labels in ours_ranked]
    print(f"the detector's ceiling: mAP@0.5 {true_label_map(ranked, ours_labels, truth, classes):.3f} with the true class "
          f"for every face it matches (ranked by detection score alone): what perfect labels on these boxes would score")
    margin = compare_labels(ranked, ours_labels, classic_ranked, truth, classes, args.resamples, seed)
    print(f"classic - ours on the same test images ({args.resamples} paired bootstrap draws of its {len(test)} images, "
          f"95% interval; a clear margin excludes 0): " + "; ".join(
              f"{k} {d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for k, (d, lo, hi) in margin.items()))

    # Scenes -> crops: each crop is one face, so both label the whole crop (no detection involved).
    files = folder_files(resolve_path(args.crops))
    pick = sorted(np.random.default_rng(seed).choice(len(files), size=min(args.crops_sample, len(files)), replace=False))
    images, truth_crops = decode([files[i] for i in pick], config.limits)  # only the sampled crops are decoded
    classic_crops = [label for label, _ in classify(base, head, list(resized(images, args.crop)), list(classes))]
    answers = {"classic (the crop is its input)": classic_crops}
    for side in args.canvas:  # ours sees a whole photo: the crop as one, or as a face in a larger frame
        placed = [on_canvas(image, side) for image in images]
        ours_crops = []
        for p, (_, box) in zip(predict_probs(model, [c for c, _ in placed], config.tta_sizes, flip=config.flip_tta), placed):
            mask = (p[..., 0] >= config.threshold).astype(np.uint8)
            ours_crops.append(label_faces(p[..., 1:], mask, box, classes)[0][0])
        answers[f"ours, the crop {side:g} of the frame's side"] = ours_crops
    for name, labels in answers.items():
        right = sum(p == t for p, t in zip(labels, truth_crops))
        print(f"scenes -> crops, {name}: accuracy {right / len(labels):.3f} on {len(labels)} crops of {args.crops} "
              f"(seeded sample; an `incorrect` answer counts as wrong)")


def compare_labels(boxes: list[np.ndarray], ours: list[list], classic: list[list], truth: tuple[list, list],
                   classes: tuple[str, ...], resamples: int, seed: int) -> dict[str, tuple[float, float, float]]:
    """Classic minus ours in mAP@0.5 and macro-F1 on the same boxes (those AP ranks: the served ones for a model
    without centres), with the paired bootstrap's interval over the test images (`paired_bootstrap`): with 13
    `incorrect` faces in a test split, a few faces make a large difference."""
    def difference(idx: np.ndarray) -> dict[str, float]:
        def report(labels: list[list]) -> dict:
            return mask_wearing_report(*([x[i] for i in idx] for x in (boxes, labels, *truth)), classes)[0]

        a, b = report(ours), report(classic)
        return {k: b[k] - a[k] for k in ("map50", "macro_f1")}

    return paired_bootstrap(difference, len(boxes), resamples, seed)


def true_label_map(boxes: list[np.ndarray], labels: list[list], truth: tuple[list, list], classes: tuple[str, ...]) -> float:
    """mAP@0.5 of these boxes if every one that matches a labelled face (IoU 0.5) said that face's class; the others
    keep their `labels`. All are ranked by detection score alone (a true class has no score of its own): how much
    of the gap to a perfect mAP is the detector's, whatever labels it is given."""
    oracle = []
    for b, found, true_boxes, true_labels in zip(boxes, labels, *truth, strict=True):
        named = [(label, 1.0) for label, _ in found]
        for i, j in match_pairs(b, true_boxes):
            if true_labels[j] is not None:
                named[i] = (true_labels[j], 1.0)
        oracle.append(named)
    return mask_wearing_report(boxes, oracle, *truth, classes)[0]["map50"]


def on_canvas(image: np.ndarray, side: float) -> tuple[np.ndarray, np.ndarray]:
    """The crop centred in a frame `1 / side` times its size, filled with its mean colour, and its box:
    a face at the scale of a face in a photo, where a whole-frame crop is a scale the segmenter never trains on."""
    h, w = image.shape[:2]
    height, width = round(h / side), round(w / side)
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = image.reshape(-1, 3).mean(axis=0).astype(np.uint8)
    top, left = (height - h) // 2, (width - w) // 2
    frame[top:top + h, left:left + w] = image
    return frame, np.array([[left, top, left + w, top + h]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", default="../shared/data/facemask-scenes")
    parser.add_argument("--crops", default="../shared/data/facemask-crops")
    parser.add_argument("--alpha", type=float, default=0.75, help="encoder width: 0.25 or 0.75 (the weights in ../shared)")
    parser.add_argument("--crop", type=int, default=128, help="crop side in pixels")
    parser.add_argument("--margin", type=float, default=0.15, help="box margin, as a fraction of its side")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--finetune", type=int, default=0, metavar="EPOCHS",
                        help="then train the encoder with the head this many epochs (0: the classic frozen encoder)")
    parser.add_argument("--project", type=Path, help="compare with this project's labelling model on its split")
    parser.add_argument("--resamples", type=int, default=1000, help="with --project: paired bootstrap draws of the test images")
    parser.add_argument("--crops-sample", type=int, default=400, help="with --project: crops labelled by both (seeded)")
    parser.add_argument("--canvas", type=float, nargs="+", default=[1.0, 0.5], metavar="SIDE",
                        help="with --project: ours labels each crop placed in a frame, the crop this fraction of its side "
                             "(1: the crop alone, as the classic sees it; 0.5: a face at a photo's scale)")
    args = parser.parse_args()
    weights = str(resolve_path(f"../shared/weights/mobilenet_{'2_5' if args.alpha == 0.25 else '7_5'}_224_tf_no_top.h5"))
    if args.project:
        return compare_on_project(args.project, args, weights)
    params = build(Params, compose([]), "params")
    labels_map = params.data.labels or SCENES_CLASSES
    classes = sorted(set(labels_map.values()))

    scenes = read_voc_folder(resolve_path(args.scenes), Report(), params.export.limits, labels_map)
    images, boxes = to_tables(scenes)
    split = split_dataset(images, boxes, params.split.val, params.split.test, params.split.seed).set_index("image_id")["split"]
    parts = {name: [s for s in scenes if split[s.image_id] == name] for name in ("train", "test")}
    (x_train, y_train), (x_test, y_test) = (crops_of(parts[n], args.crop, args.margin) for n in ("train", "test"))
    crop_images, y_crops = decode(folder_files(resolve_path(args.crops)), params.export.limits)
    x_crops = resized(crop_images, args.crop)
    import keras

    base = keras.applications.MobileNet(input_shape=(args.crop, args.crop, 3), alpha=args.alpha, include_top=False,
                                        weights=weights, pooling="avg")
    (f_train, rate), (f_test, _), (f_crops, _) = (features(base, x) for x in (x_train, x_test, x_crops))
    print(f"MobileNet alpha {args.alpha}, {args.crop} px crops: features at {rate:.0f} faces/s; "
          f"scenes train {len(y_train)} / test {len(y_test)} faces, crops {len(y_crops)}")

    head, seconds = train_head(f_train, y_train, classes, params.train.seed, args.epochs)
    if args.finetune:  # the encoder changes: the test and crop features are taken again
        seconds += finetune(base, head, x_train, y_train, classes, params.train.seed, args.finetune)
        (f_test, _), (f_crops, _) = (features(base, x) for x in (x_test, x_crops))
    print(f"scenes -> scenes: {score(head, f_test, y_test, classes, classes)} (trained in {seconds:.1f} s)")
    two = ["with_mask", "without_mask"]
    print(f"scenes -> crops: {score(head, f_crops, y_crops, classes, two)}")
    if args.finetune:
        return print("crops -> scenes: not measured with --finetune (the encoder has learned the scene faces)")
    head, seconds = train_head(f_crops, y_crops, two, params.train.seed, args.epochs)
    print(f"crops -> scenes: {score(head, f_test, y_test, two, two)} (head trained in {seconds:.1f} s)")


if __name__ == "__main__":
    main()

"""Cross-validated quality on real faces: every image tested once, never trained on in its fold.

    python -m bench.quality --preset widerface            # 5-fold on ../shared/data/widerface-dev
    python -m bench.quality --preset course --folds 1     # the course baseline, first fold only
    python -m bench.quality --preset widerface -S train.finetune_epochs=20 -S model.input_size=512
    python -m bench.quality --preset widerface --save runs/cv        # keep each fold's model ...
    python -m bench.quality --preset widerface --load runs/cv -S 'evaluate.tta_scales=[1.0,2.0]'  # ... re-score it
    python -m bench.quality --preset fast --extra voc:../shared/data/facemask-scenes   # more training data
    python -m bench.quality --preset fast --extra voc:../shared/data/facemask-scenes --repeat 4   # ... its own images weighed up

Each fold trains on the other folds (15% of them held out as val for early stopping and the
threshold, or trained on too with train.use_val) with the same code as the DVC stages, then
evaluates the fold. `--extra` sources (e.g. facemask-scenes) join every fold's training part,
never its val or test images, so the figures stay comparable with runs without them. Prints every fold and mean +- std of dice, IoU, pooled dice and face
recall/precision by size, with training and inference images/s; `--out` writes the table as CSV
(after each fold, so an interrupted run keeps what it finished: `--start K` runs the rest).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import replace

import pandas as pd

from pipeline.config import Params, SourceConfig, build, compose, resolve_path
from pipeline.data.formats import Report, read_images_npy, read_yolo_folder, to_tables
from pipeline.data.sources import read_sources
from pipeline.data.split import kfold, split_dataset
from pipeline.evaluation.evaluate import evaluate_model
from pipeline.model.network import load_model
from pipeline.model.training import summarize, train_model, training_images

COLUMNS = ["dice", "iou", "pooled_dice", "face_recall", "face_recall_small", "face_recall_medium", "face_recall_large",
           "face_precision", "threshold", "epochs_run", "train_img_s", "infer_img_s", "train_s"]
PLAIN_COLUMNS = ["dice_plain", "pooled_dice_plain", "face_recall_plain", "infer_img_s_plain"]


def run_fold(params: Params, samples, folds: pd.Series, fold: int, seed: int, save: str | None = None,
             load: str | None = None, extra: list | None = None, repeat: int = 1) -> dict:
    by_id = {s.image_id: s for s in samples}
    test = [by_id[i] for i in folds.index[folds == fold]]
    rest = [by_id[i] for i in folds.index[folds != fold]]
    images, boxes = to_tables(rest)
    split = split_dataset(images, boxes, val=0.15, test=0.0, seed=seed)
    val = [by_id[i] for i in split.image_id[split.split == "val"]]
    own = training_images(params.train, [by_id[i] for i in split.image_id[split.split == "train"]], val)
    train = own * repeat + list(extra or [])
    if load:  # a fold model saved by an earlier run (same folds, checked in main): this run's evaluate settings
        path = os.path.join(load, f"fold{fold}.keras")
        if not os.path.isfile(path):
            raise SystemExit(f"--load {load}: {path} does not exist; run with --save {load} first")
        model, history = load_model(path), None
    else:
        model, history = train_model(params.model, params.train, train, val)
    if save:
        model.save(os.path.join(save, f"fold{fold}.keras"))
    start = time.perf_counter()
    metrics, _, _ = evaluate_model(model, val, test, params.evaluate, params.model)
    infer_s = time.perf_counter() - start
    plain_cfg, plain = replace(params.evaluate, flip_tta=False, tta_scales=(1.0,)), {}
    if plain_cfg != params.evaluate:  # the same model without test-time augmentation: its gain and cost
        start = time.perf_counter()
        without, _, _ = evaluate_model(model, val, test, plain_cfg, params.model)
        plain = {"dice_plain": without["dice"], "pooled_dice_plain": without["pooled_dice"],
                 "face_recall_plain": without["face_recall"], "infer_img_s_plain": (len(val) + len(test)) / (time.perf_counter() - start)}
    row = {**metrics, **plain, "fold": fold, "n_test": len(test), "infer_img_s": (len(val) + len(test)) / infer_s}
    if history is None:
        return row
    fit = summarize(history, params.train, train, val)
    return {**row, "n_train": fit["n_train"], "n_val": fit["n_val"], "epochs_run": fit["epochs_run"],
            "train_img_s": fit["train_images_per_s"], "train_s": fit["train_seconds"]}


def read_extra(spec: str, params: Params) -> list:
    """The samples of a `TYPE:PATH` source, ids prefixed `extra-` so they never meet the folds' ids."""
    kind, _, path = spec.partition(":")
    if kind not in ("images_npy", "yolo", "voc") or not path:
        raise SystemExit(f"--extra {spec!r}: expected TYPE:PATH with TYPE images_npy, yolo or voc")
    cfg = replace(params.data, sources=(SourceConfig(kind, path),), labels={})
    samples, _ = read_sources(cfg, Report(), params.export.limits)
    for sample in samples:
        sample.image_id = f"extra-{sample.image_id}"
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="widerface", help="a preset in conf/preset/ (or 'none')")
    parser.add_argument("--data", default="../shared/data/widerface-dev/images.npy",
                        help="a course-layout .npy file or a YOLO folder")
    parser.add_argument("--weights", help="encoder weights (default: the preset's file, else the alpha-0.25 "
                        "ImageNet weights in ../shared)")
    parser.add_argument("--extra", action="append", default=[], metavar="TYPE:PATH",
                        help="another source trained on in every fold, e.g. voc:../shared/data/facemask-scenes")
    parser.add_argument("--repeat", type=int, default=1, help="each fold's own training images this many times per epoch "
                        "(weighs the data under test up against --extra sources)")
    parser.add_argument("--folds", type=int, default=5, help="how many of the k folds to run (1: quick mode)")
    parser.add_argument("--start", type=int, default=0, help="the first fold to run")
    parser.add_argument("-k", type=int, default=5, help="number of folds the data is cut into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-S", dest="overrides", action="append", default=[],
                        help="param override as for dvc exp run, e.g. train.finetune_lr=3e-4")
    parser.add_argument("--out", help="write the per-fold table as CSV")
    saved = parser.add_mutually_exclusive_group()
    saved.add_argument("--save", help="folder to save each fold's model in (foldK.keras, and folds.csv: the folds they used)")
    saved.add_argument("--load", help="evaluate the fold models an earlier --save wrote to this folder instead of "
                        "training: evaluate.* overrides (test-time scales, threshold) are then measured in minutes")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be 1 or more, got {args.repeat}")
    if not 1 <= args.folds <= args.k - args.start:
        parser.error(f"--folds must be between 1 and {args.k - args.start} (-k {args.k}, --start {args.start})")
    logging.basicConfig(level=logging.WARNING)

    preset_weights = compose([f"preset={args.preset}", *args.overrides])["model"]["weights"]
    weights = args.weights or (preset_weights if preset_weights not in ("none", "imagenet")
                               else "../shared/weights/mobilenet_2_5_224_tf_no_top.h5")
    raw = compose([f"preset={args.preset}", f"model.weights={weights}", *args.overrides])
    params = build(Params, raw, f"conf/ with preset={args.preset} and -S {args.overrides}")
    path = resolve_path(args.data)
    samples = (read_images_npy if path.suffix == ".npy" else read_yolo_folder)(path, Report(), params.export.limits)
    extra = [s for spec in args.extra for s in read_extra(spec, params)]
    images, boxes = to_tables(samples)
    folds = kfold(images, boxes, args.k, args.seed)
    if args.save:
        os.makedirs(args.save, exist_ok=True)
        folds.rename("fold").to_csv(os.path.join(args.save, "folds.csv"), index_label="image_id")
    if args.load:  # models scored on other folds would be tested on images they were trained on
        path = os.path.join(args.load, "folds.csv")
        saved_folds = pd.read_csv(path, index_col="image_id")["fold"] if os.path.isfile(path) else None
        if saved_folds is None or not saved_folds.sort_index().equals(folds.sort_index()):
            raise SystemExit(f"--load {args.load}: its folds.csv is missing or differs from this run's folds "
                             f"(data {args.data}, -k {args.k}, --seed {args.seed}); load models saved with the same ones")

    rows = []
    for fold in range(args.start, min(args.start + args.folds, args.k)):
        rows.append(run_fold(params, samples, folds, fold, args.seed, args.save, args.load, extra, args.repeat))
        shown = [c for c in ["fold", *COLUMNS, *PLAIN_COLUMNS] if c in rows[0]]
        print(pd.DataFrame(rows)[shown].round(3).to_string(index=False), flush=True)
        if args.out:  # after every fold: a stopped run keeps the folds it finished (--start resumes)
            pd.DataFrame(rows).to_csv(args.out, index=False)
    table = pd.DataFrame(rows)
    columns = [c for c in COLUMNS + PLAIN_COLUMNS if c in table]
    summary = table[columns].agg(["mean", "std"]).T
    print(f"\npreset={args.preset} overrides={args.overrides} extra={args.extra} ({len(extra)} images) repeat={args.repeat} folds={args.folds}/{args.k} images={len(samples)} "
          f"cpus={os.cpu_count()}")
    print(" | ".join(f"{c} {summary.loc[c, 'mean']:.3f} ± {summary.loc[c, 'std']:.3f}"
                     for c in [*COLUMNS[:8], *PLAIN_COLUMNS[:3]] if c in summary.index))
    cost = (f"models loaded from {args.load}" if args.load else
            f"train {table.train_img_s.mean():.1f} img/s, {table.train_s.mean():.0f} s/fold")
    print(f"{cost}; inference {table.infer_img_s.mean():.1f} img/s"
          + (f" ({table.infer_img_s_plain.mean():.1f} img/s without test-time augmentation)" if "infer_img_s_plain" in table else ""))


if __name__ == "__main__":
    main()

"""Seeded train/val/test split, stratified by face count, face size and mask-wearing class."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

log = logging.getLogger(__name__)


def strata(images: pd.DataFrame, boxes: pd.DataFrame) -> pd.Series:
    """One label per image: face-count bucket x median-face-size bucket, and, where faces carry
    mask-wearing classes, the image's rarest class (so the 3% `incorrect` faces reach every split)."""
    b = boxes.assign(rel=np.sqrt((boxes.x2 - boxes.x1) * (boxes.y2 - boxes.y1)))
    size = b.groupby("image_id")["rel"].median()
    img = images.set_index("image_id")
    rel = (size.reindex(img.index) / np.sqrt(img.width * img.height)).fillna(0)
    count = pd.cut(img.n_faces, [-1, 0, 2, 6, np.inf], labels=["0", "1-2", "3-6", "7+"]).astype(str)
    size_label = np.where(img.n_faces == 0, "none", np.where(rel < 0.1, "small", "large"))
    out = pd.Series(count + "/" + size_label, index=img.index)
    labelled = b[b["label"] != ""] if "label" in b else b.iloc[:0]
    if len(labelled):
        rarity = labelled["label"].map(labelled["label"].value_counts())
        rarest = labelled.loc[rarity.groupby(labelled["image_id"]).idxmin()].set_index("image_id")["label"]
        out = out + "/" + rarest.reindex(img.index).fillna("none")
    return out


def _mergeable(labels: pd.Series, min_count: int) -> pd.Series:
    """Fold strata too rare to split into one 'rare' stratum, so stratification stays possible."""
    counts = labels.value_counts()
    labels = labels.where(~labels.isin(counts[counts < min_count].index), "rare")
    if (labels == "rare").sum() < min_count:  # still too few: join the largest stratum
        labels = labels.replace("rare", labels.value_counts().idxmax())
    return labels


def split_dataset(images: pd.DataFrame, boxes: pd.DataFrame, val: float, test: float, seed: int) -> pd.DataFrame:
    """Table image_id, split ('train' | 'val' | 'test'), stratum."""
    if not (0 < val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"split fractions must be val in (0, 1), test in [0, 1), val + test < 1: val={val}, test={test}")
    labels = strata(images, boxes)
    n = len(labels)
    n_test, n_val = (max(1, round(n * test)) if test else 0), max(1, round(n * val))
    if n - n_test - n_val < 1:
        raise ValueError(f"{n} images are too few for val={val}, test={test}")
    ids = labels.index.to_numpy()
    strat = _mergeable(labels, 3)
    rest, test_ids = ids, ids[:0]
    if n_test:
        rest, test_ids = train_test_split(ids, test_size=n_test, random_state=seed, stratify=_stratify(strat, ids, n_test))
    train_ids, val_ids = train_test_split(rest, test_size=n_val, random_state=seed, stratify=_stratify(strat, rest, n_val))
    split = pd.Series("train", index=labels.index)
    split[val_ids], split[test_ids] = "val", "test"
    return pd.DataFrame({"image_id": labels.index, "split": split.values, "stratum": labels.values})


def _stratify(labels: pd.Series, ids: np.ndarray, n_out: int) -> np.ndarray | None:
    """Stratify labels when every stratum can give to both sides, else None (plain shuffle)."""
    sub = _mergeable(labels[ids], 2)
    counts = sub.value_counts()
    if counts.min() < 2 or len(counts) > min(n_out, len(ids) - n_out):
        log.warning("split: %d images in %d strata are too few to stratify a part of %d; shuffling unstratified", len(ids), len(counts), n_out)
        return None
    return sub.to_numpy()


def kfold(images: pd.DataFrame, boxes: pd.DataFrame, k: int, seed: int) -> pd.Series:
    """Fold number (0..k-1) per image_id, stratified like the split: every image is tested once."""
    labels = _mergeable(strata(images, boxes), k)
    folds = pd.Series(-1, index=labels.index)
    for fold, (_, test) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(labels, labels)):
        folds.iloc[test] = fold
    return folds

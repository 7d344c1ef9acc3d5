"""The benchmarks' own bookkeeping (their figures are printed, never asserted)."""

import pandas as pd
import pytest

from bench.serving import cv_quality


def test_a_presets_quality_is_its_cross_validation_mean(tmp_path):
    path = tmp_path / "cv.csv"
    pd.DataFrame({"fold": [0, 1], "dice": [0.5, 0.7], "face_recall": [0.1, 0.3]}).to_csv(path, index=False)
    quality = cv_quality(str(path))
    assert quality["dice"] == pytest.approx(0.6) and quality["face_recall"] == pytest.approx(0.2)
    assert quality["dice_on"] == "2-fold CV"


def test_a_table_without_dice_is_refused_by_name(tmp_path):
    path = tmp_path / "serving.csv"
    pd.DataFrame({"p50_ms": [50.0]}).to_csv(path, index=False)
    with pytest.raises(SystemExit, match="serving.csv: not a bench.quality table"):
        cv_quality(str(path))


def test_the_label_comparison_is_paired_on_the_same_boxes():
    """Classic minus ours on the same found faces: the same labels differ by nothing on every draw;
    one face labelled better moves macro-F1 and mAP up, and the interval holds the full-set difference."""
    import numpy as np

    from bench.mask_baseline import compare_labels

    classes = ("incorrect", "with_mask", "without_mask")
    boxes = [np.array([[0, 0, 10, 10, 0.9], [20, 0, 30, 10, 0.8]], np.float32) for _ in range(6)]
    truth = ([b[:, :4] for b in boxes], [["incorrect", "with_mask"]] * 3 + [["without_mask", "with_mask"]] * 3)
    ours = [[("with_mask", 0.9), ("with_mask", 0.9)]] + [[(t[0], 0.9), (t[1], 0.9)] for t in truth[1][1:]]
    same = compare_labels(boxes, ours, ours, truth, classes, resamples=50, seed=0)
    assert same == {"map50": (0.0, 0.0, 0.0), "macro_f1": (0.0, 0.0, 0.0)}
    right = [[(t[0], 0.9), (t[1], 0.9)] for t in truth[1]]  # the classic gets the first image's incorrect face
    better = compare_labels(boxes, ours, right, truth, classes, resamples=50, seed=0)
    for d, lo, hi in better.values():
        assert d > 0 and lo <= d <= hi


def test_true_label_map_scores_the_detector_alone():
    """Right labels on every matched box give the detector's AP; a false box still costs its class; no box, no AP."""
    import numpy as np

    from bench.mask_baseline import true_label_map

    classes = ("with_mask", "without_mask")
    truth = ([np.array([[0, 0, 10, 10], [20, 0, 30, 10]], float)], [["with_mask", "without_mask"]])
    found = [np.array([[0, 0, 10, 10, 0.9], [20, 0, 30, 10, 0.8]], np.float32)]
    wrong = [[("without_mask", 0.6), ("with_mask", 0.6)]]
    assert true_label_map(found, wrong, truth, classes) == 1.0
    stray = [np.array([[0, 0, 10, 10, 0.9], [50, 50, 60, 60, 0.95], [20, 0, 30, 10, 0.8]], np.float32)]
    half = true_label_map(stray, [[("with_mask", 0.6), ("with_mask", 0.9), ("with_mask", 0.6)]], truth, classes)
    assert half == 0.75  # with_mask: its one face ranked second after a false box (AP 0.5); without_mask 1.0
    assert true_label_map([np.zeros((0, 5), np.float32)], [[]], truth, classes) == 0.0

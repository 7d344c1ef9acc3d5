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

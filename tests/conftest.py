import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WIDERFACE = SHARED / "data" / "widerface-dev"
WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"


def face(x1, y1, x2, y2):
    """A face entry in the course images.npy layout (corners normalised to 0..1)."""
    return {"label": ["Face"], "notes": "", "points": [{"x": x1, "y": y1}, {"x": x2, "y": y2}],
            "imageWidth": 0, "imageHeight": 0}


def course_array(rows) -> np.ndarray:
    arr = np.empty((len(rows), 2), dtype=object)
    for i, (image, faces) in enumerate(rows):
        arr[i, 0], arr[i, 1] = image, faces
    return arr


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def project(tmp_path_factory):
    """A temporary clone with the tiny pipeline run once by the real `dvc repro` (shared by modules)."""
    from tests.pipeline_fixture import make_clone, sh

    root = make_clone(tmp_path_factory.mktemp("project"))
    sh(root, "dvc", "repro")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "pipeline outputs")
    return root

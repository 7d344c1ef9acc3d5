import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_params

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WIDERFACE = SHARED / "data" / "widerface-dev"
FACEMASK_SCENES = SHARED / "data" / "facemask-scenes"
FACEMASK_CROPS = SHARED / "data" / "facemask-crops"
WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
PARAMS = load_params(ROOT / "params.yaml")  # the committed defaults, for tests to vary with dataclasses.replace
LIMITS = PARAMS.export.limits


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds no pixels: what a decompression bomb shows before decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


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
    """A temporary clone with the tiny pipeline run once by the real `dvc repro` (shared by modules).

    Tests using it carry `xdist_group("project")`: under pytest-xdist (`make test`) they run on one
    worker, in order, so it is built once and each test sees what the earlier ones left there."""
    from tests.pipeline_fixture import make_clone, sh

    root = make_clone(tmp_path_factory.mktemp("project"))
    sh(root, "dvc", "repro")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "pipeline outputs")
    return root


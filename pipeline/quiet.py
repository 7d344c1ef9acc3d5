"""TensorFlow without its start-up chatter (CUDA probes, CPU feature notes), unless asked for.

TensorFlow's C++ code prints these before its log settings apply, so no environment variable
hides them; stderr is closed at the file-descriptor level while it imports. A failed import
still raises its Python exception, shown once stderr is back.
"""

from __future__ import annotations

import os
import sys

VERBOSE_ENV = "FACEMASK_VERBOSE"  # 1: keep TensorFlow's and MLflow's logs


def import_tensorflow(verbose: bool | None = None) -> None:
    """Import TensorFlow (later imports reuse it) with its C++ start-up messages hidden unless verbose."""
    if verbose is None:
        verbose = os.environ.get(VERBOSE_ENV, "") not in ("", "0")
    if verbose or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)

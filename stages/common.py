"""What the stages share: their files (as dvc.yaml names them), how a stage runs, a split's samples."""

import logging
import signal
from collections.abc import Callable

import pandas as pd

from pipeline.data.formats import Sample, load_samples

DATA_DIR, SPLIT = "data/extracted", "data/split.csv"
MODEL, RUN = "models/model.keras", "models/run.json"
SERVING_CONFIG = "eval/serving_config.json"


def split_samples(name: str, lazy: bool = False) -> list[Sample]:
    """A split's samples; with `lazy`, each reads its image from disk only when asked (memory stays flat)."""
    table = pd.read_csv(SPLIT, dtype={"image_id": str})
    return load_samples(DATA_DIR, list(table.loc[table["split"] == name, "image_id"]), lazy)


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage: INFO logs, and SIGTERM (`kill`, a stopped CI job) ends it as Ctrl-C does.

    Python's default for SIGTERM exits without unwinding, which would leave the stage's MLflow
    run RUNNING; unwinding marks it FAILED.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)
    main()


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")

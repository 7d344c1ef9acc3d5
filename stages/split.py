"""split: seeded, stratified train/val/test assignment written as a table."""

import logging

from pipeline.config import assert_params_unchanged, load_params
from pipeline.data.formats import read_table
from pipeline.data.split import split_dataset
from pipeline.io import write_csv
from stages.common import DATA_DIR, SPLIT, run_stage


def main() -> None:
    cfg = load_params().split
    images, boxes = read_table(DATA_DIR)
    table = split_dataset(images, boxes, val=cfg.val, test=cfg.test, seed=cfg.seed)
    assert_params_unchanged()
    write_csv(SPLIT, table)
    logging.info("split: %s", table["split"].value_counts().to_dict())


if __name__ == "__main__":
    run_stage(main)

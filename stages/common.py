"""Helpers the model stages share: which samples belong to a split."""

import pandas as pd

from pipeline.formats import Sample, load_samples

DATA_DIR, SPLIT = "data/extracted", "data/split.csv"
MODEL, RUN = "models/model.keras", "models/run.json"


def split_samples(name: str) -> list[Sample]:
    table = pd.read_csv(SPLIT, dtype={"image_id": str})
    return load_samples(DATA_DIR, list(table.loc[table["split"] == name, "image_id"]))

"""extract: read the configured sources, repair and count quirks, write images, masks and tables."""

import logging
from collections import Counter

from pipeline.config import assert_params_unchanged, load_params
from pipeline.data import formats
from pipeline.data.masks import boxes_to_mask
from pipeline.data.sources import read_sources
from pipeline.io import write_json
from stages.common import DATA_DIR, run_stage

METRICS = "metrics/extract.json"


def main() -> None:
    params = load_params()
    report = formats.Report()
    samples, sources = read_sources(params.data, report, params.export.limits)
    assert_params_unchanged()
    masks = [boxes_to_mask(s.boxes, s.height, s.width) for s in samples]
    formats.write_dataset(samples, DATA_DIR, masks)
    classes = Counter(label for s in samples for label in s.labels)
    summary = {
        "source": params.data.name,
        "n_images": len(samples),
        "n_faces": int(sum(len(s.boxes) for s in samples)),
        "n_negative_images": sum(len(s.boxes) == 0 for s in samples),
        "classes": {label: classes[label] for label in params.data.classes},
        "n_faces_without_class": classes[None],
        "sources": sources,
        "repairs": dict(sorted(report.counts.items())),
        "labels": dict(sorted(report.labels.items())),
        "mask_face_fraction": float(sum(m.sum() for m in masks) / max(1, sum(m.size for m in masks))),
    }
    write_json(METRICS, summary)
    logging.info("extract: %s", summary)


if __name__ == "__main__":
    run_stage(main)

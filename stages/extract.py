"""extract: read the configured sources, repair and count quirks, write images, masks and tables."""

import logging
from collections import Counter

from pipeline.config import assert_params_unchanged, load_params
from pipeline.data import formats
from pipeline.data.masks import boxes_to_mask
from pipeline.data.sources import SourceCounts, iter_sources
from pipeline.io import write_json
from stages.common import DATA_DIR, run_stage

METRICS = "metrics/extract.json"


def main() -> None:
    params = load_params()
    report, sources = formats.Report(), SourceCounts(params.data)
    classes, pixels = Counter(), Counter()

    def masked():  # one image at a time: memory stays flat however large the sources are
        for k, sample in iter_sources(params.data, report, params.export.limits):
            mask = boxes_to_mask(sample.boxes, sample.height, sample.width)
            sources.add(k, sample)
            classes.update(sample.labels)
            pixels.update(images=1, negative=int(len(sample.boxes) == 0), faces=len(sample.boxes),
                          face=int(mask.sum()), all=mask.size)
            yield sample, mask
        assert_params_unchanged()  # before write_dataset puts its output in place

    formats.write_dataset(masked(), DATA_DIR)
    summary = {
        "source": params.data.name,
        "n_images": pixels["images"],
        "n_faces": pixels["faces"],
        "n_negative_images": pixels["negative"],
        "classes": {label: classes[label] for label in params.data.classes},
        "n_faces_without_class": classes[None],
        "sources": sources.summaries(),
        "repairs": dict(sorted(report.counts.items())),
        "labels": dict(sorted(report.labels.items())),
        "mask_face_fraction": float(pixels["face"] / max(1, pixels["all"])),
    }
    write_json(METRICS, summary)
    logging.info("extract: %s", summary)


if __name__ == "__main__":
    run_stage(main)

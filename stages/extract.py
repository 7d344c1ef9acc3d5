"""extract: read the configured source, repair and count quirks, write images, masks and tables."""

import logging

from pipeline import formats, synthetic
from pipeline.config import DataConfig, Limits, assert_params_unchanged, load_params, resolve_path
from pipeline.io import write_json
from pipeline.masks import boxes_to_mask
from stages.common import DATA_DIR, run_stage

METRICS = "metrics/extract.json"


def read_source(cfg: DataConfig, report: formats.Report, limits: Limits) -> list[formats.Sample]:
    if cfg.source == "synthetic":
        s = cfg.synthetic
        return synthetic.generate(s.n_images, s.min_size, s.max_size, s.max_faces, s.seed)
    readers = {"images_npy": formats.read_images_npy, "yolo": formats.read_yolo_folder, "voc": formats.read_voc_folder}
    return readers[cfg.source](resolve_path(cfg.path), report, limits)


def main() -> None:
    params = load_params()
    report = formats.Report()
    samples = read_source(params.data, report, params.export.limits)
    assert_params_unchanged()
    masks = [boxes_to_mask(s.boxes, s.height, s.width) for s in samples]
    formats.write_dataset(samples, DATA_DIR, masks)
    summary = {
        "source": params.data.source,
        "n_images": len(samples),
        "n_faces": int(sum(len(s.boxes) for s in samples)),
        "n_negative_images": sum(len(s.boxes) == 0 for s in samples),
        "repairs": dict(sorted(report.counts.items())),
        "labels": dict(sorted(report.labels.items())),
        "mask_face_fraction": float(sum(m.sum() for m in masks) / max(1, sum(m.size for m in masks))),
    }
    write_json(METRICS, summary)
    logging.info("extract: %s", summary)


if __name__ == "__main__":
    run_stage(main)

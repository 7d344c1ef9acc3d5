"""extract: read the configured source, repair and count quirks, write images, masks and tables."""

import logging

from pipeline import formats, synthetic
from pipeline.config import assert_params_unchanged, load_params, resolve_path
from pipeline.images import Limits
from pipeline.io import write_json
from pipeline.masks import boxes_to_mask
from stages.common import run_stage

OUT_DIR, METRICS = "data/extracted", "metrics/extract.json"


def read_source(cfg: dict, report: formats.Report, limits: Limits) -> list[formats.Sample]:
    source = cfg["source"]
    if source == "synthetic":
        return synthetic.generate(**cfg["synthetic"])
    if not cfg.get("path"):
        raise ValueError(f"params.yaml data.path is required for data.source={source!r}")
    path = resolve_path(cfg["path"])
    if source == "images_npy":
        return formats.read_images_npy(path, report, limits)
    if source == "yolo":
        return formats.read_yolo_folder(path, report, limits)
    raise ValueError(f"params.yaml data.source: unknown {source!r}; choose synthetic, images_npy or yolo")


def main() -> None:
    params = load_params()
    cfg = params["data"]
    report = formats.Report()
    samples = read_source(cfg, report, Limits.from_params(params["export"]["limits"]))
    assert_params_unchanged()
    masks = [boxes_to_mask(s.boxes, s.height, s.width) for s in samples]
    formats.write_dataset(samples, OUT_DIR, masks)
    summary = {
        "source": cfg["source"],
        "n_images": len(samples),
        "n_faces": int(sum(len(s.boxes) for s in samples)),
        "n_negative_images": sum(len(s.boxes) == 0 for s in samples),
        "repairs": dict(sorted(report.counts.items())),
        "mask_face_fraction": float(sum(m.sum() for m in masks) / max(1, sum(m.size for m in masks))),
    }
    write_json(METRICS, summary)
    logging.info("extract: %s", summary)


if __name__ == "__main__":
    run_stage(main)

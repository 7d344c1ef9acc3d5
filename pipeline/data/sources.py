"""The configured data sources, read and joined into one list of samples."""

from __future__ import annotations

from collections import Counter
from functools import partial

from pipeline.config import DataConfig, Limits, SourceConfig, resolve_path
from pipeline.data import formats, synthetic


def read_sources(cfg: DataConfig, report: formats.Report, limits: Limits) -> tuple[list[formats.Sample], list[dict]]:
    """All sources' samples in order, and a summary per source (type, path, images, faces).

    With several sources each image id gets its source's number (`s0-...`, `s1-...`), so two
    folders holding `0001.jpg` stay two images; a single source keeps its ids as they are.
    """
    samples, summaries = [], []
    for k, source in enumerate(cfg.sources):
        part = read_source(source, cfg, report, limits)
        if len(cfg.sources) > 1:
            for sample in part:
                sample.image_id = f"s{k}-{sample.image_id}"
        samples += part
        summaries.append({"type": source.type, "path": source.path, "n_images": len(part),
                          "n_faces": int(sum(len(s.boxes) for s in part)),
                          "classes": dict(sorted(Counter(label for s in part for label in s.labels if label).items()))})
    return samples, summaries


def read_source(source: SourceConfig, cfg: DataConfig, report: formats.Report, limits: Limits) -> list[formats.Sample]:
    if source.type == "synthetic":
        s = cfg.synthetic
        return synthetic.generate(s.n_images, s.min_size, s.max_size, s.max_faces, s.seed)
    readers = {"images_npy": formats.read_images_npy, "yolo": formats.read_yolo_folder,
               "voc": partial(formats.read_voc_folder, classes=cfg.labels)}
    return readers[source.type](resolve_path(source.path), report, limits)

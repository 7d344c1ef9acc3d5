"""The configured data sources, read one image at a time and joined into one stream of samples."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from functools import partial

from pipeline.config import DataConfig, Limits, SourceConfig, resolve_path
from pipeline.data import formats, synthetic


def iter_sources(cfg: DataConfig, report: formats.Report, limits: Limits) -> Iterator[tuple[int, formats.Sample]]:
    """(source number, sample) for all sources in order, one sample in memory at a time.

    With several sources each image id gets its source's number (`s0-...`, `s1-...`), so two
    folders holding `0001.jpg` stay two images; a single source keeps its ids as they are.
    """
    for k, source in enumerate(cfg.sources):
        for sample in read_source(source, cfg, report, limits):
            if len(cfg.sources) > 1:
                sample.image_id = f"s{k}-{sample.image_id}"
            yield k, sample


def source_number(image_id: str, n_sources: int) -> int:
    """Which source an extracted image came from (the `s<k>-` prefix `iter_sources` gives it)."""
    if n_sources == 1:
        return 0
    prefix = image_id.split("-", 1)[0]
    if not (prefix[:1] == "s" and prefix[1:].isdigit() and int(prefix[1:]) < n_sources):
        raise ValueError(f"image id {image_id!r} names none of the {n_sources} sources (expected s0-... to s{n_sources - 1}-...)")
    return int(prefix[1:])


def weigh_samples(samples: list[formats.Sample], cfg: DataConfig) -> list[formats.Sample]:
    """Each training sample as many times per epoch as its source's `repeat` times the largest
    `class_repeat` of its faces' classes: a small source (WIDER's crowds of tiny faces) is not drowned
    by a large one (facemask-scenes' close-ups), and a rare class (3% `incorrect`) is seen in more
    crops and augmentations, where a larger loss weight alone would only scale its few views up."""
    repeats = [s.repeat for s in cfg.sources]
    if repeats == [1] * len(repeats) and not cfg.class_repeat:
        return samples

    def times(s: formats.Sample) -> int:
        by_class = max((cfg.class_repeat.get(label, 1) for label in s.labels if label), default=1)
        return repeats[source_number(s.image_id, len(repeats))] * by_class

    return [s for s in samples for _ in range(times(s))]


class SourceCounts:
    """Per source: type, path, images, faces and faces per class, counted as the samples pass."""

    def __init__(self, cfg: DataConfig):
        self.rows = [{"type": s.type, "path": s.path, "n_images": 0, "n_faces": 0, "classes": Counter()}
                     for s in cfg.sources]

    def add(self, k: int, sample: formats.Sample) -> None:
        row = self.rows[k]
        row["n_images"] += 1
        row["n_faces"] += len(sample.boxes)
        row["classes"].update(label for label in sample.labels if label)

    def summaries(self) -> list[dict]:
        return [{**row, "classes": dict(sorted(row["classes"].items()))} for row in self.rows]


def read_sources(cfg: DataConfig, report: formats.Report, limits: Limits) -> tuple[list[formats.Sample], list[dict]]:
    """All sources' samples in memory (benchmarks, small data), and a summary per source."""
    counts, samples = SourceCounts(cfg), []
    for k, sample in iter_sources(cfg, report, limits):
        counts.add(k, sample)
        samples.append(sample)
    return samples, counts.summaries()


def read_source(source: SourceConfig, cfg: DataConfig, report: formats.Report, limits: Limits) -> Iterable[formats.Sample]:
    if source.type == "synthetic":
        s = cfg.synthetic
        return synthetic.generate(s.n_images, s.min_size, s.max_size, s.max_faces, s.seed)
    readers = {"images_npy": formats.read_images_npy, "yolo": formats.read_yolo_folder,
               "voc": partial(formats.read_voc_folder, classes=cfg.labels),
               "widerface": formats.read_wider_face, "crops": partial(formats.read_crop_folders, classes=cfg.labels)}
    return readers[source.type](resolve_path(source.path), report, limits)

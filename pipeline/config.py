"""The pipeline's settings as typed, validated objects, built once from params.yaml.

`conf/config.yaml` and `conf/preset/*.yaml` hold the settings; `dvc exp run` composes them
into params.yaml (DVC's Hydra composition) and applies `-S` overrides on top, so params.yaml
always holds exactly the values a run uses. Stages read params.yaml with `load_params`, which
refuses unknown or missing keys, wrong types and out-of-range values, naming the key, and
checks every rule between settings here, before any work is done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


# --- sections -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SyntheticConfig:
    n_images: int
    min_size: int
    max_size: int
    max_faces: int
    seed: int


@dataclass(frozen=True)
class SourceConfig:
    type: Literal["synthetic", "images_npy", "yolo", "voc", "widerface", "crops"]
    path: str | None
    repeat: int = 1  # its training images this many times per epoch: a small source weighed up against a large one

    def __post_init__(self):
        _check(self.type == "synthetic" or bool(self.path), "data.sources", f"a {self.type!r} source needs a path")
        _check(self.repeat >= 1, "data.sources", f"repeat must be 1 or more, got {self.repeat} (for {self.path or self.type})")


@dataclass(frozen=True)
class DataConfig:
    sources: tuple[SourceConfig, ...]
    labels: dict[str, str]  # a source's box label (VOC <name>) -> mask-wearing class; empty: faces only
    synthetic: SyntheticConfig
    class_repeat: dict[str, int] = dataclasses.field(default_factory=dict)  # class -> its images' times per epoch

    def __post_init__(self):
        _check(len(self.sources) > 0, "data.sources", "must list at least one source")
        for name, times in self.class_repeat.items():
            _check(name in self.classes, "data.class_repeat",
                   f"{name!r} is none of the classes data.labels makes ({', '.join(self.classes) or 'none: faces only'})")
            _check(times >= 1, "data.class_repeat", f"{name}: must be 1 or more, got {times}")

    @property
    def name(self) -> str:
        """The sources' types, e.g. `yolo+voc`: what a run is trained on, at a glance."""
        return "+".join(s.type for s in self.sources)

    @property
    def classes(self) -> tuple[str, ...]:
        """The mask-wearing classes, in a stable order; empty for a face-only model."""
        return tuple(sorted(set(self.labels.values())))


@dataclass(frozen=True)
class SplitConfig:
    val: float
    test: float
    seed: int

    def __post_init__(self):
        _check(0 <= self.val < 1 and 0 <= self.test < 1 and self.val + self.test < 1, "split",
               f"val {self.val} and test {self.test} must be fractions that leave images to train on")


@dataclass(frozen=True)
class ModelConfig:
    backbone: Literal["mobilenet", "mobilenet_v2"]
    alpha: float
    input_size: int
    weights: str  # imagenet | none | a path to no-top .h5 weights
    decoder: Literal["conv", "bare"]
    decoder_filters: tuple[int, ...]
    bn_momentum: float
    core_scale: float  # the model learns each face's box shrunk to this fraction of its side (see data.masks)
    centres: bool  # also learn each face's centre and size (CenterNet's head): boxes from peaks, not from the mask

    def __post_init__(self):
        _check(0 < self.core_scale <= 1, "model.core_scale", "must be in (0, 1]: 1 learns whole boxes")
        _check(self.input_size % 32 == 0 and self.input_size > 0, "model.input_size", "must be a positive multiple of 32")
        _check(len(self.decoder_filters) == 4, "model.decoder_filters", "must list 4 widths, one per decoder block")
        _check(0 < self.bn_momentum < 1, "model.bn_momentum", "must be between 0 and 1")

    @property
    def pretrained(self) -> bool:
        return self.weights != "none"


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool
    zoom: tuple[float, float]
    brightness: float
    contrast: float

    def __post_init__(self):
        _check(0 < self.zoom[0] <= self.zoom[1], "train.augment.zoom", "must be [low, high] with 0 < low <= high")


@dataclass(frozen=True)
class TrainConfig:
    seed: int
    batch_size: int
    crop_size: int | None
    stream: bool  # read each training image from disk at every step (memory stays flat) instead of holding all
    distribute: Literal["none", "mirrored", "multi_worker"]  # tf.distribute over local devices or TF_CONFIG's machines
    loss: Literal["dice", "bce_dice", "focal_dice", "bce_logdice"]
    warmup_epochs: int
    warmup_lr: float
    warmup_trainable_layers: int | Literal["all"]
    finetune_epochs: int | tuple[int, ...]
    finetune_lr: float
    finetune_trainable_layers: int | Literal["all"]
    lr_schedule: Literal["constant", "cosine"]
    patience: int
    val_every: int
    use_val: bool
    ema_momentum: float
    ensemble: int
    class_weights: Literal["balanced", "sqrt", "none"]
    face_weights: Literal["none", "balanced", "sqrt"]  # each face's loss weight: by its area (none) or all alike
    class_background: float  # weight of the class channels' loss off faces (towards no class): 0 = face pixels only
    augment: AugmentConfig

    def __post_init__(self):
        _check(self.crop_size is None or (self.crop_size > 0 and self.crop_size % 32 == 0), "train.crop_size",
               "must be null or a positive multiple of 32")
        _check(self.val_every >= 1, "train.val_every", "must be >= 1 (validate every N epochs)")
        _check(self.ensemble >= 1, "train.ensemble", "must be >= 1 (the number of models to average)")
        _check(self.distribute != "multi_worker" or self.ema_momentum == 0, "train.ema_momentum",
               "must be 0 with train.distribute: multi_worker (its training loop keeps no weight average)")
        _check(isinstance(self.finetune_epochs, int) or len(self.finetune_epochs) == self.ensemble, "train.finetune_epochs",
               f"lists {len(self.finetune_epochs) if not isinstance(self.finetune_epochs, int) else 1} members' epochs "
               f"but train.ensemble is {self.ensemble}: give one number, or one per member")
        _check(max(self.member_epochs) > 0 or self.warmup_epochs > 0, "train",
               "warmup_epochs and finetune_epochs are both 0: nothing to train")
        _check(0 <= self.ema_momentum < 1, "train.ema_momentum", "must be in [0, 1)")
        _check(self.class_background >= 0, "train.class_background", "must be >= 0 (0: class loss on face pixels only)")
        _check(not self.use_val or self.patience == 0, "train.patience",
               "must be 0 with train.use_val: the val images are trained on, so their dice cannot stop training")

    @property
    def member_epochs(self) -> list[int]:
        """Fine-tuning epochs of each ensemble member."""
        return [self.finetune_epochs] * self.ensemble if isinstance(self.finetune_epochs, int) else list(self.finetune_epochs)


@dataclass(frozen=True)
class EvaluateConfig:
    threshold: float | None
    threshold_grid: tuple[float, float, float]
    threshold_ratio: float
    min_area: int
    separate_faces: bool
    flip_tta: bool
    tta_scales: tuple[float, ...]
    centre_threshold: float | None  # a model with centres: a face is a heatmap peak this high (None: val's best face F1)
    centre_overlap: float  # ... and overlaps no higher peak's box by more than this IoU
    centre_rank_threshold: float  # AP ranks every peak down to this, as detection benchmarks rank all detections
    gallery_size: int

    def __post_init__(self):
        _check(self.threshold is None or 0 <= self.threshold <= 1, "evaluate.threshold", "must be null or in [0, 1]")
        _check(0 <= self.threshold_ratio <= 1, "evaluate.threshold_ratio", "must be between 0 (off) and 1")
        _check(self.centre_threshold is None or 0 < self.centre_threshold <= 1, "evaluate.centre_threshold",
               "must be null or in (0, 1]")
        _check(0 < self.centre_overlap <= 1, "evaluate.centre_overlap", "must be in (0, 1]: 1 keeps overlapping boxes")
        _check(0 < self.centre_rank_threshold <= 1, "evaluate.centre_rank_threshold", "must be in (0, 1]")
        _check(self.min_area >= 0, "evaluate.min_area", "must be >= 0")
        _check(len(self.tta_scales) > 0 and min(self.tta_scales) > 0, "evaluate.tta_scales",
               "must be a non-empty list of positive factors")


@dataclass(frozen=True)
class Limits:
    """What the served model accepts; the sides apply to training images too."""

    min_side: int  # pixels; smaller images have no room for a face
    max_side: int  # pixels
    max_bytes: int  # encoded bytes of one image
    max_images: int  # images in one request
    max_pixels: int  # decoded pixels (width x height) of all images in one request

    def __post_init__(self):
        for f in dataclasses.fields(self):
            _check(getattr(self, f.name) >= 1, f"export.limits.{f.name}", "must be a positive integer")
        _check(self.min_side <= self.max_side, "export.limits.min_side", f"{self.min_side} is over max_side {self.max_side}")

    def size_problem(self, width: int, height: int) -> str | None:
        """Why an image of this size is refused, or None."""
        if max(width, height) > self.max_side:
            return f"image {width}x{height} is larger than the limit {self.max_side}x{self.max_side} (max_side)"
        if min(width, height) < self.min_side:
            return f"image {width}x{height} is smaller than the minimum side of {self.min_side} pixels (min_side)"
        return None


@dataclass(frozen=True)
class ExportConfig:
    model_name: str
    engine: Literal["onnx", "keras"]  # what the served model runs; ONNX is always written and checked
    threads: int  # ONNX Runtime's threads per request (0: its default, one per physical core)
    parity_tolerance: float  # largest test-dice difference allowed between the ONNX and the Keras model
    parity_images: int  # test images both engines predict, for the largest probability difference
    limits: Limits

    def __post_init__(self):
        _check(self.threads >= 0, "export.threads", "must be >= 0 (0: one per core)")
        _check(0 <= self.parity_tolerance < 1, "export.parity_tolerance", "must be in [0, 1)")
        _check(self.parity_images >= 1, "export.parity_images", "must be >= 1")


@dataclass(frozen=True)
class MlflowConfig:
    experiment: str


@dataclass(frozen=True)
class Params:
    """All of params.yaml. Rules between sections are checked here, before any work is done."""

    preset: str
    data: DataConfig
    split: SplitConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    export: ExportConfig
    mlflow: MlflowConfig

    def __post_init__(self):
        _check(not self.model.centres or tuple(self.evaluate.tta_scales) == (1.0,), "evaluate.tta_scales",
               "must be [1.0] with model.centres: the sizes it learns are fractions of model.input_size")
        _check(not self.train.use_val or self.evaluate.threshold is not None, "evaluate.threshold",
               "must be set with train.use_val: the val images are trained on, so they cannot choose it")

    def to_dict(self) -> dict[str, Any]:
        """Plain values, lists for tuples: what params.yaml holds (for logging)."""
        return _plain(dataclasses.asdict(self))

    @property
    def caveat(self) -> str:
        """What a user of a model trained with these params must know, or "" (a real model)."""
        if all(s.type != "synthetic" for s in self.data.sources):
            return ""
        weights = "ImageNet weights" if self.model.pretrained else "random weights"
        return f"synthetic demo: trained on generated scenes from {weights}, not a face model"


@dataclass(frozen=True)
class Decoding:
    """How a probability map becomes faces (`find_faces`' settings): what evaluate measures with and a
    served model answers with, so the two cannot drift apart."""

    threshold: float
    min_area: int = 0
    separate: bool = False
    ratio: float = 0.0
    classes: tuple[str, ...] = ()
    core_scale: float = 1.0
    centres: tuple[float, float] | None = None  # a model with centres: (peak threshold, overlap limit)
    rank_threshold: float | None = None  # ... AP@0.5 and mAP rank every peak down to this

    @property
    def ranked(self) -> Decoding:
        """The decoding AP@0.5 and mAP rank with: peaks down to `rank_threshold` where that is lower."""
        if self.centres is None or self.rank_threshold is None or self.rank_threshold >= self.centres[0]:
            return self
        return dataclasses.replace(self, centres=(self.rank_threshold, self.centres[1]))


@dataclass(frozen=True)
class ServingConfig:
    """What the served model does besides the network; written by evaluate, read by export and the pyfunc."""

    input_size: int
    tta_sizes: tuple[int, ...]
    flip_tta: bool
    separate_faces: bool
    threshold: float
    threshold_ratio: float
    min_area: int
    test_fingerprint: str  # the evaluation these settings were measured with
    test_dice: float
    limits: Limits
    caveat: str  # returned with every prediction when not "" (the synthetic demo says so)
    classes: tuple[str, ...] = ()  # the mask-wearing classes the model labels faces with; () for a face-only model
    test_map50: float | None = None  # mAP@0.5 on the test split, for a model with classes
    engine: Literal["keras", "onnx"] = "keras"  # set by export (evaluate measures the Keras model; export checks parity)
    threads: int = 0  # ONNX Runtime's intra-op threads (0: its default)
    core_scale: float = 1.0  # the model's face cores are boxes shrunk to this: found cores are grown back by its inverse
    centres: bool = False  # the model has CenterNet's channels after the classes: boxes are their peaks and sizes
    centre_threshold: float = 0.5  # ... a heatmap peak this high or higher
    centre_overlap: float = 1.0  # ... overlapping no higher peak's box by more than this IoU
    centre_rank_threshold: float = 0.02  # test AP ranks every peak down to this (evaluate.centre_rank_threshold)

    @property
    def decoding(self) -> Decoding:
        """The post-processing settings, as `find_faces` takes them."""
        return Decoding(threshold=self.threshold, min_area=self.min_area, separate=self.separate_faces,
                        ratio=self.threshold_ratio, classes=self.classes, core_scale=self.core_scale,
                        centres=(self.centre_threshold, self.centre_overlap) if self.centres else None,
                        rank_threshold=self.centre_rank_threshold)

    @property
    def primary_metric(self) -> str:
        """The version tag promotion compares: mAP@0.5 for a labelling model, else test dice."""
        return "test_map50" if self.classes else "test_dice"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, where: str = "serving config") -> ServingConfig:
        return build(cls, values, where)


# --- building and reading -----------------------------------------------------------------------

def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def build(cls, values: Any, where: str):
    """`cls` from a dict of plain values: unknown and missing keys and wrong types are ConfigErrors naming the key."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    missing = [n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING]
    if unknown:
        raise ConfigError(f"{where}: unknown key{'s' * (len(unknown) > 1)} {', '.join(unknown)} (a typo?); "
                          f"known: {', '.join(fields)}")
    if missing:
        raise ConfigError(f"{where}: missing key{'s' * (len(missing) > 1)} {', '.join(missing)}")
    hints = get_type_hints(cls)
    return cls(**{name: _convert(values[name], hints[name], f"{where}.{name}") for name in fields if name in values})


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin in (Union, types.UnionType):
        for option in get_args(hint):
            try:
                return _convert(value, option, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} is not {_describe(hint)}")
    if origin is Literal:
        if value in get_args(hint):
            return value
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, get_args(hint)))}")
    if origin is dict:
        key_type, value_type = get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {value!r} is not {_describe(hint)}")
        return {_convert(k, key_type, f"{where} key"): _convert(v, value_type, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:
        args = get_args(hint)
        if not isinstance(value, (list, tuple)) or (args[-1] is not Ellipsis and len(value) != len(args)):
            raise ConfigError(f"{where}: {value!r} is not {_describe(hint)}")
        kinds = [args[0]] * len(value) if args[-1] is Ellipsis else args
        return tuple(_convert(v, k, f"{where}[{i}]") for i, (v, k) in enumerate(zip(value, kinds)))
    ok = {type(None): value is None, bool: isinstance(value, bool), str: isinstance(value, str),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool)}[hint]
    if not ok:
        raise ConfigError(f"{where}: {value!r} is not {_describe(hint)}")
    return float(value) if hint is float else value


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(h) for h in get_args(hint))
    if origin is Literal:
        return " or ".join(map(repr, get_args(hint)))
    if origin is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    if origin is tuple:
        args = get_args(hint)
        return f"a list of {_describe(args[0])}s" if args[-1] is Ellipsis else f"a list of {len(args)} numbers"
    return {type(None): "null", bool: "true or false", str: "a string", int: "an integer", float: "a number"}[hint]


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{PARAMS_FILE} {key}: {message}")


_READ: dict[str, str] = {}  # params file -> digest of the bytes this process read


class ParamsChanged(RuntimeError):
    """params.yaml changed while a stage ran: DVC would record values other than those that ran."""


def read_params(path: str | os.PathLike = PARAMS_FILE) -> dict[str, Any]:
    """params.yaml as plain values, exactly as DVC records them; its digest is kept for `assert_params_unchanged`."""
    data = Path(path).read_bytes()
    _READ[str(path)] = hashlib.sha256(data).hexdigest()
    return yaml.safe_load(data) or {}


def load_params(path: str | os.PathLike = PARAMS_FILE) -> Params:
    """Typed, validated params.yaml (from the current workspace, which DVC sets to the stage's copy)."""
    return build(Params, read_params(path), str(path))


def assert_params_unchanged(path: str | os.PathLike = PARAMS_FILE) -> None:
    """Fail unless params.yaml still holds what `read_params` read.

    DVC writes a stage's params into dvc.lock from the file as it is when the stage ends. A second
    `dvc exp run` started in the same workspace writes its `-S` values into params.yaml before DVC's
    lock refuses it, so the first run would record the second's params. Stages call this before
    they record anything (and training after every epoch), so such a run fails instead of lying.
    """
    if hashlib.sha256(Path(path).read_bytes()).hexdigest() != _READ[str(path)]:
        raise ParamsChanged(
            f"{path} changed while this stage ran, so DVC would record other params than the ones that ran "
            f"(another `dvc exp run` in this workspace?). Stopped before recording anything. Run experiments "
            f"side by side with `dvc exp run --queue ...` and `dvc exp run --run-all --jobs N`, or with `--temp`."
        )


def compose(overrides: list[str] = (), conf_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The params `dvc exp run -S <overrides>` would write, composed by DVC's own Hydra code."""
    from dvc.utils.hydra import compose_and_dump

    conf_dir = Path(conf_dir or project_root() / "conf").resolve()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / PARAMS_FILE
        compose_and_dump(out, str(conf_dir), None, "config", str(conf_dir.parent), list(overrides))
        return yaml.safe_load(out.read_text())


# --- paths --------------------------------------------------------------------------------------

def project_root() -> Path:
    """The repository root, also when DVC runs an experiment in a temporary copy.

    `dvc exp run --queue/--temp` executes stages in `<root>/.dvc/tmp/exps/<tmp>/`; its runs must
    still land in the root's MLflow store and resolve relative data paths against the root.
    """
    here = Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return here


def resolve_path(value: str | os.PathLike) -> Path:
    """Absolute path for a user-given path; relative ones are taken from the project root."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else project_root() / path


def flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    """`{'a': {'b': 1}}` -> `{'a.b': 1}`, for logging params to MLflow as DVC shows them."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out

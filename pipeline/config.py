"""Parameters and project paths shared by every stage."""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = "params.yaml"
PRESET_SECTIONS = ("model", "train", "evaluate")  # what a preset may set: the stages that list it in dvc.yaml


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


def deep_merge(base: dict, override: dict) -> dict:
    """`base` with `override` laid over it, nested dicts merged key by key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def effective_params(raw: dict) -> dict:
    """Base params with the chosen preset laid over them.

    A preset (`preset: <name>`, defined under `presets:`) changes only the keys it lists; to change
    one of those for a run, override it inside the preset (`-S presets.<name>.train.epochs=5`).
    """
    name = raw.get("preset")
    presets = raw.get("presets") or {}
    base = {k: v for k, v in raw.items() if k not in ("preset", "presets")}
    if not name:
        return base
    if name not in presets:
        raise ValueError(f"{PARAMS_FILE}: preset {name!r} is not defined; defined: {sorted(presets)}")
    extra = set(presets[name]) - set(PRESET_SECTIONS)
    if extra:
        raise ValueError(f"{PARAMS_FILE}: preset {name!r} sets {sorted(extra)}; presets may only set {PRESET_SECTIONS}")
    return deep_merge(base, presets[name])


_READ: dict[str, str] = {}  # params file -> digest of the bytes this process read


class ParamsChanged(RuntimeError):
    """params.yaml changed while a stage ran: DVC would record values other than those that ran."""


def load_params(path: str | os.PathLike = PARAMS_FILE) -> dict[str, Any]:
    """Read params.yaml (from the current workspace, which DVC sets to the stage's copy).

    The digest of what was read is kept for `assert_params_unchanged`.
    """
    data = Path(path).read_bytes()
    _READ[str(path)] = hashlib.sha256(data).hexdigest()
    return effective_params(yaml.safe_load(data) or {})


def assert_params_unchanged(path: str | os.PathLike = PARAMS_FILE) -> None:
    """Fail unless params.yaml still holds what `load_params` read.

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


def flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    """`{'a': {'b': 1}}` -> `{'a.b': 1}`, for logging params to MLflow."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out

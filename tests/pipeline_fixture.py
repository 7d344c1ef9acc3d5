"""A temporary clone of the project running the real DVC pipeline on a tiny config."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT

TINY = {
    "data": {"synthetic": {"n_images": 48, "min_size": 64, "max_size": 96, "max_faces": 3, "seed": 1}},
    "model": {"input_size": 64, "decoder_filters": [16, 16, 8, 8]},
    "train": {"warmup_epochs": 1, "finetune_epochs": 12, "finetune_lr": 0.004, "batch_size": 8, "patience": 0, "lr_schedule": "cosine"},
    "evaluate": {"gallery_size": 2, "flip_tta": True, "tta_scales": [1.0, 1.5], "separate_faces": True,  # served as evaluated
                 "threshold_ratio": 0.5},
}


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    bin_dir = str(Path(sys.executable).parent)
    out.update(PATH=f"{bin_dir}:{out.get('PATH', '')}", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               DVC_NO_ANALYTICS="1")
    return out


def sh(cwd: Path, *cmd: str, timeout: int = 600, extra_env: dict | None = None) -> str:
    result = subprocess.run(cmd, cwd=cwd, env={**env(), **(extra_env or {})}, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout + result.stderr


def make_clone(dest: Path, overrides: dict = TINY) -> Path:
    """Copy the working tree's project files (no data, models, stores), lay `overrides` over
    conf/config.yaml, compose params.yaml from it as `dvc exp run` does, and commit."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in files:
        if name.startswith(("metrics/", "plots/")) or name == "dvc.lock" or not (ROOT / name).is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    from dvc.utils.hydra import compose_and_dump

    conf = yaml.safe_load((dest / "conf" / "config.yaml").read_text())
    (dest / "conf" / "config.yaml").write_text(yaml.safe_dump(deep_merge(conf, overrides), sort_keys=False))
    compose_and_dump(dest / "params.yaml", str(dest / "conf"), None, "config", str(dest), [])
    sh(dest, "git", "init", "-q", "-b", "main")
    sh(dest, "git", "config", "user.name", "facemask test")  # DVC's experiment commits need an identity
    sh(dest, "git", "config", "user.email", "test@facemask.local")
    sh(dest, "git", "add", "-A")
    sh(dest, "git", "commit", "-qm", "tiny pipeline")
    return dest


def synthetic_voc(root: Path, n_images: int, seed: int, names: tuple[str, ...] = ("masked", "bare")) -> Path:
    """Generated scenes written as a Pascal VOC folder, each face named from `names` in turn."""
    import cv2

    from pipeline.data.synthetic import generate

    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for i, sample in enumerate(generate(n_images, 64, 96, 3, seed)):
        objects = "".join(f"<object><name>{names[(i + k) % len(names)]}</name><bndbox><xmin>{int(b[0])}</xmin>"
                          f"<ymin>{int(b[1])}</ymin><xmax>{int(b[2])}</xmax><ymax>{int(b[3])}</ymax></bndbox></object>"
                          for k, b in enumerate(sample.boxes))
        (root / "Annotations" / f"scene{i}.xml").write_text(
            f"<annotation><filename>scene{i}.jpg</filename>{objects}</annotation>")
        cv2.imwrite(str(root / "JPEGImages" / f"scene{i}.jpg"), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
    return root


def deep_merge(base: dict, override: dict) -> dict:
    """`base` with `override` laid over it, nested dicts merged key by key."""
    out = dict(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def client(root: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")

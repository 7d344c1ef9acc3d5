"""`facemask predict`: send photos to a served model (or a local one), print boxes, draw overlays."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import requests
from mlflow.exceptions import MlflowException
from tqdm import tqdm

from pipeline.formats import IMAGE_SUFFIXES
from pipeline.masks import overlay
from pipeline.serving import decode_image


def find_images(paths: list[str]) -> list[Path]:
    """Image files named, or found (sorted) in named folders."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return files


def request_body(images_b64: list[str], threshold: float | None) -> dict:
    body: dict = {"dataframe_split": {"columns": ["image"], "data": [[b] for b in images_b64]}}
    if threshold is not None:
        body["params"] = {"threshold": threshold}
    return body


def predict_http(url: str, images_b64: list[str], threshold: float | None, timeout: float = 120) -> pd.DataFrame:
    response = requests.post(f"{url.rstrip('/')}/invocations", json=request_body(images_b64, threshold), timeout=timeout)
    if response.status_code != 200:
        try:
            message = response.json().get("message", response.text)
        except ValueError:
            message = response.text
        raise RuntimeError(f"server answered {response.status_code}: {message}")
    return pd.DataFrame(response.json()["predictions"])


def decode_mask(mask_b64: str) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(mask_b64), np.uint8), cv2.IMREAD_GRAYSCALE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="facemask", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="predict face masks and boxes for images or folders")
    p.add_argument("paths", nargs="+", help="image files (JPEG/PNG) or folders of them")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running `mlflow models serve`, e.g. http://127.0.0.1:5001")
    target.add_argument("--model", help="run locally instead: a model URI, e.g. models:/face-segmenter@champion")
    p.add_argument("--out", help="overlay PNG (one image) or folder for overlays (several)")
    p.add_argument("--threshold", type=float, help="mask threshold (default: the model's; with its threshold_ratio, the base of each image's threshold)")
    p.add_argument("--batch-size", type=int, default=8, help="images per request (default 8; the server's limit is "
                   "export.limits.max_images)")
    args = parser.parse_args(argv)

    try:
        files = find_images(args.paths)
        out = Path(args.out) if args.out else None
        single = out is not None and len(files) == 1 and out.suffix.lower() == ".png"
        targets = [out] if single else overlay_paths(files, out) if out is not None else [None] * len(files)
        if out is not None and not single:
            out.mkdir(parents=True, exist_ok=True)
        predict = predictor(args)
        for start in tqdm(range(0, len(files), args.batch_size), disable=len(files) <= args.batch_size, file=sys.stderr,
                          unit="batch"):
            batch = files[start : start + args.batch_size]
            encoded = [base64.b64encode(f.read_bytes()).decode("ascii") for f in batch]
            result = predict(encoded)
            for file, target, b64, row in zip(batch, targets[start:], encoded, result.itertuples()):
                boxes = json.loads(row.boxes)
                line = {"image": str(file), "n_faces": int(row.n_faces), "boxes": boxes}
                if target is not None:
                    image = decode_image(b64)  # as the server decoded it (EXIF orientation included)
                    drawn = overlay(image, decode_mask(row.mask) > 0, np.array(boxes, np.float32).reshape(-1, 5))
                    write_image(target, cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                    line["overlay"] = str(target)
                print(json.dumps(line), flush=True)
    except (OSError, RuntimeError, ValueError, requests.RequestException, MlflowException) as err:
        print(f"facemask: error: {err}", file=sys.stderr)
        return 1
    return 0


def predictor(args):
    """A function from base64 images to the model's output table: over HTTP, or in this process."""
    if args.url:
        return lambda b64: predict_http(args.url, b64, args.threshold)
    import mlflow

    from pipeline.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    model = mlflow.pyfunc.load_model(args.model)
    params = {"threshold": args.threshold} if args.threshold is not None else None
    return lambda b64: model.predict(pd.DataFrame({"image": b64}), params=params)


def overlay_paths(files: list[Path], out: Path) -> list[Path]:
    """`out/<stem>.png` per input; a stem already taken (a/x.jpg, then b/x.png) gets `<stem>-2.png`, ..."""
    names: list[str] = []
    for file in files:
        name, n = f"{file.stem}.png", 1
        while name in names:
            n += 1
            name = f"{file.stem}-{n}.png"
        names.append(name)
    return [out / name for name in names]


def write_image(path: Path, image: np.ndarray) -> None:
    """cv2.imwrite reports failure only by its return value: make it an error naming the file."""
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path} (is the folder writable, and the name a .png?)")


if __name__ == "__main__":
    sys.exit(main())

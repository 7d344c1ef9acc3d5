"""`facemask predict`: send photos to a served model (or a local one), print boxes, draw overlays."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import requests
from tqdm import tqdm

from pipeline.drawing import overlay
from pipeline.formats import IMAGE_SUFFIXES
from pipeline.images import open_image, to_rgb
from pipeline.quiet import import_tensorflow


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
    p.add_argument("-v", "--verbose", action="store_true", help="show TensorFlow's and MLflow's logs too")
    args = parser.parse_args(argv)
    if not args.verbose:
        quiet()

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
            result["caveat"] = result.get("caveat", "")  # models registered before it have no such column
            if start == 0 and result["caveat"].iloc[0]:
                print(f"facemask: note: the model says it is a {result['caveat'].iloc[0]}", file=sys.stderr)
            for file, target, row in zip(batch, targets[start:], result.itertuples()):
                boxes = json.loads(row.boxes)
                line = {"image": str(file), "n_faces": int(row.n_faces), "boxes": boxes}
                if row.caveat:
                    line["caveat"] = row.caveat
                if target is not None:
                    image = to_rgb(open_image(file.read_bytes(), None))  # as the server decoded it (EXIF orientation too)
                    drawn = overlay(image, decode_mask(row.mask) > 0, np.array(boxes, np.float32).reshape(-1, 5), row.caveat)
                    write_image(target, cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                    line["overlay"] = str(target)
                print(json.dumps(line), flush=True)
    except (OSError, RuntimeError, ValueError, requests.RequestException) as err:
        print(f"facemask: error: {err}", file=sys.stderr)
        return 1
    return 0


def quiet() -> None:
    """No MLflow download bars or info logs (TensorFlow's are hidden as it loads): the output is the results."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.ERROR)


def predictor(args):
    """A function from base64 images to the model's output table: over HTTP, or in this process."""
    if args.url:
        return lambda b64: predict_http(args.url, b64, args.threshold)
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.tracking import default_uri, tracking_uri

    uri = tracking_uri()
    if uri == default_uri() and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise RuntimeError(f"no MLflow store here: {uri.removeprefix('sqlite:///')} does not exist. Run facemask from the "
                           f"project folder (where `make run` made mlflow.db), or set MLFLOW_TRACKING_URI to the store")
    print(f"facemask: model {args.model} from the MLflow store {uri}", file=sys.stderr)
    import_tensorflow(args.verbose)
    mlflow.set_tracking_uri(uri)
    try:
        with warnings.catch_warnings(record=not args.verbose):  # MLflow's advice on type hints, at every load
            model = mlflow.pyfunc.load_model(args.model)
    except MlflowException as err:
        raise RuntimeError(f"cannot load {args.model} from the MLflow store {uri}: {err.message}. Train and export one "
                           f"(`make run`), or name another (`models:/<name>/<version>`)") from None
    params = {"threshold": args.threshold} if args.threshold is not None else None

    def predict(b64: list[str]) -> pd.DataFrame:
        try:
            return model.predict(pd.DataFrame({"image": b64}), params=params)
        except MlflowException as err:  # the model's own 400s: bad images or params
            raise ValueError(err.message) from None

    return predict


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

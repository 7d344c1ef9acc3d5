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
    p.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)

    files = find_images(args.paths)
    if args.model:
        import mlflow

        from pipeline.tracking import tracking_uri

        mlflow.set_tracking_uri(tracking_uri())
        model = mlflow.pyfunc.load_model(args.model)
        params = {"threshold": args.threshold} if args.threshold is not None else None
        predict = lambda b64: model.predict(pd.DataFrame({"image": b64}), params=params)  # noqa: E731
    else:
        predict = lambda b64: predict_http(args.url, b64, args.threshold)  # noqa: E731
    out = Path(args.out) if args.out else None
    single = out is not None and len(files) == 1 and out.suffix.lower() == ".png"
    if out is not None and not single:
        out.mkdir(parents=True, exist_ok=True)
    for start in tqdm(range(0, len(files), args.batch_size), disable=len(files) <= args.batch_size, file=sys.stderr,
                      unit="batch"):
        batch = files[start : start + args.batch_size]
        encoded = [base64.b64encode(f.read_bytes()).decode("ascii") for f in batch]
        result = predict(encoded)
        for file, b64, row in zip(batch, encoded, result.itertuples()):
            boxes = json.loads(row.boxes)
            print(json.dumps({"image": str(file), "n_faces": int(row.n_faces), "boxes": boxes}))
            if out is not None:
                image = decode_image(b64)  # as the server decoded it (EXIF orientation included)
                drawn = overlay(image, decode_mask(row.mask) > 0, np.array(boxes, np.float32).reshape(-1, 5))
                cv2.imwrite(str(out if single else out / f"{file.stem}.png"), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
    return 0


if __name__ == "__main__":
    sys.exit(main())

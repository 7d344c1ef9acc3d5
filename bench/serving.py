"""Serving speed: HTTP (`mlflow models serve`) against in-process `pyfunc.predict`, same images.

    python -m bench.serving [--model models:/face-segmenter@champion] [--url http://127.0.0.1:5001]

Without --url it starts the server itself on a free port. Prints p50/p95 latency for one
640x480 JPEG and images/s for batches of 1, 8 and 32, and the HTTP overhead.
"""

from __future__ import annotations

import argparse
import time

import mlflow
import numpy as np
import pandas as pd
import requests

from pipeline.client import request_body
from pipeline.serving import encode_image
from bench.server import scoring_server
from pipeline.synthetic import generate
from pipeline.tracking import tracking_uri


def photos(n: int) -> list[str]:
    """640x480 JPEGs of synthetic scenes (sizes drawn then resized to exactly 640x480)."""
    import cv2

    return [encode_image(cv2.resize(s.image, (640, 480)), ".jpg") for s in generate(n, 240, 480, 6, seed=123)]


def timed(fn, repeats: int) -> np.ndarray:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return np.array(out)


def measure(call, images: list[str], repeats: int) -> dict[str, float]:
    single = timed(lambda: call(images[:1]), repeats)
    out = {"p50_ms": 1000 * np.percentile(single, 50), "p95_ms": 1000 * np.percentile(single, 95)}
    for batch in (1, 8, 32):
        seconds = timed(lambda: call(images[:batch]), max(3, repeats // batch))
        out[f"batch{batch}_img_s"] = batch / np.median(seconds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/face-segmenter@champion")
    parser.add_argument("--url", help="a running server; default: start one")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    images = photos(32)
    mlflow.set_tracking_uri(tracking_uri())
    model = mlflow.pyfunc.load_model(args.model)
    config = model.unwrap_python_model().config
    local = measure(lambda b: model.predict(pd.DataFrame({"image": b})), images, args.repeats)

    session = requests.Session()  # keep-alive, as a real client would

    def http(url):
        def call(batch):
            response = session.post(f"{url}/invocations", json=request_body(batch, None), timeout=120)
            response.raise_for_status()
        return call

    if args.url:
        remote = measure(http(args.url), images, args.repeats)
    else:
        with scoring_server(args.model, tracking_uri()) as server:
            remote = measure(http(server.url), images, args.repeats)
    table = pd.DataFrame({"in-process": local, "http": remote})
    table["http overhead %"] = [
        100 * (remote[k] / local[k] - 1) if k.endswith("_ms") else 100 * (local[k] / remote[k] - 1) for k in table.index
    ]
    print(f"model {args.model}: input {list(config.tta_sizes)} px, flip TTA {config.flip_tta}; "
          f"one 640x480 JPEG per request for latency")
    print(table.round(1).to_string())


if __name__ == "__main__":
    main()

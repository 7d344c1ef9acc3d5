"""Load: many keep-alive clients against `mlflow models serve`, with hostile requests mixed in.

    python -m bench.load [--model models:/face-segmenter@champion] [--requests 400] [--clients 16] [--rounds 1]

Starts the server on a free 127.0.0.1 port, then sends `--requests` requests of one 640x480
JPEG from `--clients` threads, each with its own keep-alive session. Every `--hostile-every`-th
request is instead 16 all-zero 4096x4096 PNGs (about 50 KB each, 268 million pixels together),
which the request limits must refuse with a 400 before decoding. Prints latency percentiles,
failures and the server's resident memory (now and peak) before and after.
"""

from __future__ import annotations

import argparse
import base64
import time
from concurrent.futures import ThreadPoolExecutor
from threading import local

import cv2
import numpy as np
import pandas as pd
import requests

from bench.serving import photos
from ops.servers import scoring_server
from pipeline.serving.client import request_body
from pipeline.tracking import tracking_uri


def hostile_body() -> dict:
    ok, png = cv2.imencode(".png", np.zeros((4096, 4096, 3), np.uint8))
    return request_body([base64.b64encode(png.tobytes()).decode("ascii")] * 16, None)


def run_load(url: str, bodies: list[tuple[str, dict]], clients: int) -> pd.DataFrame:
    """(kind, status, seconds) per request, sent by `clients` threads with a session each."""
    sessions = local()

    def send(item: tuple[str, dict]) -> dict:
        kind, body = item
        if not hasattr(sessions, "s"):
            sessions.s = requests.Session()
        start = time.perf_counter()
        try:
            status = sessions.s.post(f"{url}/invocations", json=body, timeout=120).status_code
        except requests.RequestException:
            status = 0
        return {"kind": kind, "status": status, "seconds": time.perf_counter() - start}

    with ThreadPoolExecutor(clients) as pool:
        return pd.DataFrame(list(pool.map(send, bodies)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/face-segmenter@champion")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1,
                        help="send the requests this many times, the server's memory read after each (does it level off?)")
    parser.add_argument("--hostile-every", type=int, default=20, help="every Nth request is the 16 x 4096^2 PNG one (0: none)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be 1 or more")
    good, hostile = request_body(photos(1), None), hostile_body()
    expected = {"photo": 200, "hostile": 400}
    bodies = [("hostile", hostile) if args.hostile_every and (i + 1) % args.hostile_every == 0 else ("photo", good)
              for i in range(args.requests)]
    mib = lambda n: f"{n / 2**20:.0f} MiB"  # noqa: E731
    tables = []
    with scoring_server(args.model, tracking_uri()) as server:
        before = server.memory()
        for k in range(args.rounds):
            start = time.perf_counter()
            tables.append(run_load(server.url, bodies, args.clients))
            wall = time.perf_counter() - start
            after = server.memory()
            print(f"model {args.model}, round {k + 1}: {args.requests} requests from {args.clients} keep-alive clients in "
                  f"{wall:.1f} s ({args.requests / wall:.1f} requests/s); server RSS {mib(after['rss'])}, peak {mib(after['peak_rss'])}")
    table = pd.concat(tables)
    rows = []
    for kind, group in table.groupby("kind"):
        ms = 1000 * group["seconds"]
        rows.append({"request": kind, "n": len(group), "expected": expected[kind],
                     "unexpected status": int((group["status"] != expected[kind]).sum()),
                     "p50_ms": ms.median(), "p95_ms": ms.quantile(0.95), "p99_ms": ms.quantile(0.99)})
    print(pd.DataFrame(rows).round(1).to_string(index=False))
    print(f"server memory: RSS {mib(before['rss'])} before, {mib(after['rss'])} after; "
          f"peak {mib(before['peak_rss'])} before, {mib(after['peak_rss'])} after")


if __name__ == "__main__":
    main()

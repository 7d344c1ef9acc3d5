"""Serving speed against quality: each engine and input size in-process, and the served model over HTTP.

    python -m bench.serving                                     # the champion, Keras and ONNX at its own size
    python -m bench.serving --model models:/face-segmenter/3 --model models:/face-segmenter/5 --sizes 384 512
    python -m bench.serving --preset widerface --preset fast --no-http   # architectures only: latency, no dice
    python -m bench.serving --preset fast -S '++data.labels={with_mask:with_mask,without_mask:without_mask}'  # + labels
    python -m bench.serving --model models:/face-segmenter@champion --plot frontier.png --out serving.csv
    python -m bench.serving --preset course --preset fast --cv course=docs/cv/course.csv --cv fast=docs/cv/fast.csv \
        --no-http --plot frontier.png                          # one point per preset and engine: 5-fold dice

Latency is one 640x480 JPEG through the whole served path (decode, every pass, postprocess),
p50/p95, 2 cores as the machine has them; images/s in batches of 8. Dice and face recall are
measured on the workspace's test split when it is the one the model was evaluated on (same
fingerprint), else left empty. `--preset` builds a preset's network with random weights: its
latency is real; its quality is the 5-fold dice of `--cv PRESET=CSV` (a `bench.quality --out`
table). The registered models are then served by `mlflow models serve` (started here on a free
port, or `--url`) and timed over HTTP with keep-alive.
`--plot` draws dice against p50 (the quality/latency frontier) and logs it into each model's run.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Iterator

import mlflow
import numpy as np
import pandas as pd
import requests

from ops.servers import scoring_server
from pipeline.config import ServingConfig
from pipeline.data.synthetic import generate
from pipeline.serving.client import request_body
from pipeline.serving.pyfunc import FaceSegmenter, encode_image
from pipeline.tracking import tracking_uri


def photos(n: int) -> list[str]:
    """640x480 JPEGs of synthetic scenes (sizes drawn then resized to exactly 640x480)."""
    import cv2

    return [encode_image(cv2.resize(s.image, (640, 480)), ".jpg") for s in generate(n, 240, 480, 6, seed=123)]


def timed(fn: Callable[[], object], repeats: int) -> np.ndarray:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return np.array(out)


def measure(call: Callable[[list[str]], object], images: list[str], repeats: int) -> dict[str, float]:
    single = 1000 * timed(lambda: call(images[:1]), repeats)
    batch = timed(lambda: call(images[:8]), max(3, repeats // 8))
    return {"p50_ms": np.percentile(single, 50), "p95_ms": np.percentile(single, 95), "batch8_img_s": 8 / np.median(batch)}


def resized(config: ServingConfig, size: int, engine: str) -> ServingConfig:
    """The served settings at another input side: every test-time pass scaled alike (multiples of 32)."""
    scale = size / config.input_size
    return dataclasses.replace(config, input_size=size, engine=engine,
                               tta_sizes=tuple(max(32, int(round(s * scale / 32)) * 32) for s in config.tta_sizes))


def variants(served: FaceSegmenter, engines: list[str], sizes: list[int]) -> Iterator[FaceSegmenter]:
    """The served model with each engine and input side; engines its version does not ship are skipped."""
    from pipeline.model.network import load_model
    from pipeline.serving.onnx_model import OnnxModel

    artifacts = getattr(served, "artifacts", {})
    loaders = {"keras": lambda: load_model(artifacts["keras_model"]),
               "onnx": lambda: OnnxModel(artifacts["onnx_model"], served.config.threads)}
    for engine in engines:
        if f"{engine}_model" not in artifacts:
            print(f"note: this version ships no {engine} model (registered before it existed): skipped")
            continue
        model = loaders[engine]()
        for size in sizes or [served.config.input_size]:
            variant = FaceSegmenter()
            variant.model, variant.config = model, resized(served.config, size, engine)
            variant.warm_up()
            yield variant


def preset_model(preset: str, engine: str, overrides: list[str]) -> FaceSegmenter:
    """A preset's network and served settings with random weights: its latency, not its quality.
    With mask-wearing classes (`-S ++data.labels=...`), the labelling head and labelling too."""
    import tempfile

    from pipeline.config import Params, build, compose
    from pipeline.evaluation.evaluate import serving_config
    from pipeline.model.network import average_models, build_unet
    from pipeline.serving.onnx_model import export_onnx

    params = build(Params, compose([f"preset={preset}", "model.weights=none", *overrides]), f"preset {preset} {overrides}")
    m = params.model
    network = average_models([build_unet(m.backbone, m.alpha, None, m.decoder, m.decoder_filters, name=f"member{k}",
                                         n_classes=len(params.data.classes)) for k in range(params.train.ensemble)])
    config = dataclasses.replace(serving_config(params), caveat="", engine=engine, threads=params.export.threads)
    segmenter = FaceSegmenter()
    if engine == "onnx":
        path = tempfile.mkdtemp() + "/model.onnx"
        network = export_onnx(network, path, config)
    segmenter.model, segmenter.config = network, config
    segmenter.warm_up()
    return segmenter


def quality(segmenter: FaceSegmenter) -> dict[str, float]:
    """Dice and face recall on the workspace's test split, if it is the split the model was evaluated on."""
    from pipeline.data.formats import fingerprint
    from pipeline.evaluation.evaluate import evaluate
    from pipeline.model.inference import predict_probs
    from stages.common import split_samples

    try:
        test = split_samples("test")
    except (OSError, ValueError, KeyError):
        return {}
    config = segmenter.config
    if not test or fingerprint(test) != config.test_fingerprint:
        return {}
    probs = predict_probs(segmenter.model, [s.image for s in test], config.tta_sizes, flip=config.flip_tta)
    metrics, _ = evaluate(probs, test, config.decoding)
    labels = {"map50": metrics["map50"]} if config.classes else {}
    return {"dice": metrics["dice"], "face_recall": metrics["face_recall"], "dice_on": "test split", **labels}


def cv_quality(path: str) -> dict[str, float | str]:
    """A preset's quality from its cross-validation table: the mean over folds, as bench.quality prints it."""
    table = pd.read_csv(path)
    if "dice" not in table or table.empty:
        raise SystemExit(f"--cv {path}: not a bench.quality table (no dice column, or no folds)")
    return {"dice": table["dice"].mean(), "face_recall": table["face_recall"].mean() if "face_recall" in table else np.nan,
            "dice_on": f"{len(table)}-fold CV"}


def in_process(segmenter: FaceSegmenter) -> Callable[[list[str]], object]:
    return lambda batch: segmenter.predict(None, pd.DataFrame({"image": batch}))


def over_http(url: str) -> Callable[[list[str]], object]:
    session = requests.Session()  # keep-alive, as a real client would

    def call(batch):
        response = session.post(f"{url}/invocations", json=request_body(batch, None), timeout=120)
        response.raise_for_status()

    return call


def row(name: str, config: ServingConfig, where: str, speed: dict, scores: dict) -> dict:
    passes = len(config.tta_sizes) * (2 if config.flip_tta else 1)
    return {"model": name, "engine": config.engine, "input_px": config.input_size, "classes": len(config.classes),
            "pass_px": "+".join(map(str, config.tta_sizes)), "tta_passes": passes, "where": where, **speed, **scores}


def frontier(table: pd.DataFrame, path: str) -> None:
    """Dice against p50 latency, one point per model or preset, engine and size (in-process rows with a dice)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "dice" not in table:
        raise SystemExit(f"--plot {path}: no row has a dice (a --model evaluated on this workspace's test split, or --cv)")
    points = table[table["where"] == "in-process"].dropna(subset=["dice"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for (name, engine), group in points.groupby(["model", "engine"]):
        if len(group) == 1:  # one size: the legend names it
            label = f"{name} ({engine}, {group['pass_px'].iloc[0]} px; {group['dice_on'].iloc[0]})"
        else:  # several sizes: each point names its own
            label = f"{name} ({engine}; {group['dice_on'].iloc[0]})"
            for _, r in group.iterrows():
                ax.annotate(f"{r.input_px}px", (r.p50_ms, r.dice), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.plot(group["p50_ms"], group["dice"], "o-", label=label)
    ax.axvline(100, color="grey", ls=":", label="100 ms budget")
    ax.set_xscale("log")  # one pass and eight passes on one axis
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("p50 latency, one 640x480 JPEG, in-process (ms)")
    ax.set_ylabel("dice")
    ax.set_title("Quality against latency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="a registered model URI (repeatable); "
                        "default: models:/face-segmenter@champion unless --preset is given")
    parser.add_argument("--preset", action="append", default=[], help="a preset's network, random weights (repeatable)")
    parser.add_argument("--cv", action="append", default=[], metavar="PRESET=CSV",
                        help="a --preset's quality: its bench.quality table (5-fold dice on real faces)")
    parser.add_argument("-S", dest="overrides", action="append", default=[],
                        help="a param override for the --preset networks, e.g. 'model.input_size=384'")
    parser.add_argument("--engines", nargs="+", default=["keras", "onnx"], choices=["keras", "onnx"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[], help="input sides to try (default: each model's own)")
    parser.add_argument("--url", help="a running server for the (single) --model; default: start one per model")
    parser.add_argument("--no-http", action="store_true", help="in-process only")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", help="write the table as CSV")
    parser.add_argument("--plot", help="write the dice/latency frontier as PNG and log it into each model's run")
    args = parser.parse_args()
    models = args.model or ([] if args.preset else ["models:/face-segmenter@champion"])
    if bad := [spec for spec in args.cv if "=" not in spec]:
        parser.error(f"--cv takes PRESET=CSV, got {bad}")
    cv = dict(spec.split("=", 1) for spec in args.cv)
    if unknown := set(cv) - set(args.preset):
        parser.error(f"--cv for {sorted(unknown)}, which is not a --preset")
    images, rows = photos(8), []
    mlflow.set_tracking_uri(tracking_uri())
    for preset in args.preset:
        name = f"preset {preset}" + (" " + " ".join(args.overrides) if args.overrides else "")
        scores = cv_quality(cv[preset]) if preset in cv else {}  # the same network's 5-fold figures for every engine
        for engine in args.engines:
            segmenter = preset_model(preset, engine, args.overrides)
            rows.append(row(name, segmenter.config, "in-process", measure(in_process(segmenter), images, args.repeats), scores))
            print(pd.DataFrame(rows[-1:]).round(2).to_string(index=False), flush=True)
    for uri in models:
        served = mlflow.pyfunc.load_model(uri).unwrap_python_model()
        for variant in variants(served, args.engines, args.sizes):
            rows.append(row(uri, variant.config, "in-process", measure(in_process(variant), images, args.repeats),
                            quality(variant)))
            print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False), flush=True)
        if args.no_http:
            continue
        if args.url:
            speed = measure(over_http(args.url), images, args.repeats)
        else:
            with scoring_server(uri, tracking_uri()) as server:
                speed = measure(over_http(server.url), images, args.repeats)
        rows.append(row(uri, served.config, "http", speed, {}))
    table = pd.DataFrame(rows)
    print(f"\none 640x480 JPEG per request for p50/p95; batches of 8 for images/s\n{table.round(3).to_string(index=False)}")
    if args.out:
        table.to_csv(args.out, index=False)
    if args.plot:
        frontier(table, args.plot)
        for uri in models:
            run_id = mlflow.models.get_model_info(uri).run_id
            mlflow.MlflowClient().log_artifact(run_id, args.plot, "bench")
        print(f"wrote {args.plot}" + (f" and logged it into the runs of {', '.join(models)}" if models else ""))


if __name__ == "__main__":
    main()

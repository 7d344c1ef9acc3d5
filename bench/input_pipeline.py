"""Is the input pipeline ever the bottleneck, and does memory stay flat as the data grows?

    python -m bench.input_pipeline                          # the demo's data x1 and x10, the default params
    python -m bench.input_pipeline --preset fast --scale 1 10 --steps 30
    python -m bench.input_pipeline --preset fast --data data/extracted     # an extracted real data set, as it is

Writes the synthetic demo data (`data.synthetic`, `--scale` times its images) as an extracted
dataset in a temporary folder, then, each in a fresh process so peak memory is its own:
- `stream`: the training dataset of `train.stream: true` (images read from disk per step): its images/s
  alone (no model) and the process's peak memory;
- `memory`: the same with every image held in memory (`train.stream: false`);
- where the model's step time goes, on one batch of crops already in memory: `forward` (prediction
  alone), `warmup` (a training step with the encoder frozen but its last `train.warmup_trainable_layers`
  layers) and `finetune` (a step with `train.finetune_trainable_layers` trainable, as fine-tuning runs).
The input is never the bottleneck when `stream` images/s exceeds `finetune` images/s (on 2 cores both
share the CPU: training streamed runs at about the slower of the two).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from pipeline.config import Params, build, compose


MODEL_MODES = ("forward", "warmup", "finetune")


def params_of(preset: str, overrides: list[str]) -> Params:
    return build(Params, compose([f"preset={preset}", "model.weights=none", *overrides]), f"preset {preset}")


def write_data(params: Params, scale: int, folder: Path) -> int:
    from pipeline.data.formats import write_dataset
    from pipeline.data.masks import boxes_to_mask
    from pipeline.data.synthetic import generate

    s = params.data.synthetic
    samples = generate(s.n_images * scale, s.min_size, s.max_size, s.max_faces, s.seed)
    write_dataset(((x, boxes_to_mask(x.boxes, x.height, x.width)) for x in samples), folder)
    return len(samples)


def measure(mode: str, preset: str, overrides: list[str], folder: str, steps: int) -> dict:
    """One measurement, in this process: images/s over `steps` batches after one warm-up batch, peak RSS."""
    import keras
    import numpy as np

    from pipeline.data.dataset import examples, make_dataset, to_arrays
    from pipeline.data.formats import load_samples
    from pipeline.model.network import build_unet, set_trainable
    from pipeline.model.training import training_loss

    params = params_of(preset, overrides)
    cfg, size, classes = params.train, params.model.input_size, params.data.classes
    samples = load_samples(folder, lazy=mode == "stream")
    if mode in MODEL_MODES:
        m = params.model
        model = build_unet(m.backbone, m.alpha, None, m.decoder, m.decoder_filters, m.bn_momentum, n_classes=len(classes), centres=m.centres)
        set_trainable(model, cfg.warmup_trainable_layers if mode == "warmup" else cfg.finetune_trainable_layers)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=training_loss(cfg, samples, classes, m.centres))
        x, y = to_arrays(samples[: cfg.batch_size], cfg.crop_size or size, classes, m.core_scale, cfg.face_weights, m.centres)
        x = x.astype(np.float32)
        step = (lambda: model.predict_on_batch(x)) if mode == "forward" else (lambda: model.train_on_batch(x, y))
        step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
    else:
        data = examples(samples, size, classes, mode == "stream", params.model.core_scale, cfg.face_weights, params.model.centres)
        ds = iter(make_dataset(data, cfg.batch_size, cfg.augment, cfg.seed, cfg.crop_size)[0])
        next(ds)
        start = time.perf_counter()
        for _ in range(steps):
            next(ds)
    seconds = time.perf_counter() - start
    return {"images_per_s": steps * cfg.batch_size / seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="none")
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="a param override")
    parser.add_argument("--scale", nargs="+", type=int, default=[1, 10], help="multiples of the demo's image count")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--data", type=Path, help="an extracted data set (the extract stage's output) instead")
    parser.add_argument("--measure", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], args.preset, args.overrides, args.measure[1], args.steps)))
        return
    params, rows = params_of(args.preset, args.overrides), []
    for scale in [None] if args.data else args.scale:
        with tempfile.TemporaryDirectory() as tmp:
            folder = args.data or Path(tmp) / "data"
            n = len(pd.read_csv(folder / "images.csv")) if args.data else write_data(params, scale, folder)
            for mode in ("stream", "memory", *MODEL_MODES):
                if mode in MODEL_MODES and scale not in (None, args.scale[0]):
                    continue  # the step rate does not depend on the data's size
                cmd = [sys.executable, "-m", "bench.input_pipeline", "--preset", args.preset, "--steps", str(args.steps),
                       *sum((["-S", o] for o in args.overrides), []), "--measure", mode, str(folder)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(f"{mode} on {n} images failed:\n{out.stderr[-3000:]}")
                rows.append({"images": n, "mode": mode, **json.loads(out.stdout.strip().splitlines()[-1])})
                print(pd.DataFrame(rows[-1:]).round(1).to_string(index=False), flush=True)
    print(f"\npreset {args.preset}, {params.model.input_size} px, batch {params.train.batch_size}, crop "
          f"{params.train.crop_size}:")
    print(pd.DataFrame(rows).round(1).to_string(index=False))


if __name__ == "__main__":
    main()

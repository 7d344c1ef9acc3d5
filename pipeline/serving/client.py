"""`facemask predict` and `facemask video`: send photos or video frames to a served model (or a local
one), print faces as JSON lines, draw overlays."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import requests
from tqdm import tqdm

from pipeline.data.formats import IMAGE_SUFFIXES
from pipeline.data.images import open_image, to_rgb
from pipeline.quiet import import_tensorflow
from pipeline.serving.drawing import count_labels, overlay


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
    add_target(p)
    p.add_argument("--out", help="overlay PNG (one image) or folder for overlays (several)")
    p.add_argument("--threshold", type=float, help="mask threshold (default: the model's; with its threshold_ratio, the base of each image's threshold)")
    p.add_argument("--batch-size", type=int, default=8, help="images per request (default 8; the server's limit is "
                   "export.limits.max_images)")
    v = sub.add_parser("video", help="annotate a video file or a camera's frames")
    v.add_argument("input", help="a video file, or a camera index (0, 1, ...)")
    add_target(v)
    v.add_argument("--out", help="annotated video (.mp4 or .avi), same size and frame rate as the input")
    v.add_argument("--stride", type=int, default=1, help="predict every Nth frame; the frames between show the last "
                   "prediction (default 1: every frame)")
    v.add_argument("--max-frames", type=int, help="stop after this many frames (a camera runs until Ctrl-C otherwise)")
    v.add_argument("--json", action="store_true", help="print one JSON line per predicted frame")
    v.add_argument("--threshold", type=float, help="mask threshold (default: the model's)")
    args = parser.parse_args(argv)
    if not args.verbose:
        quiet()
    try:
        return predict_files(args) if args.command == "predict" else annotate_video(args)
    except (OSError, RuntimeError, ValueError, requests.RequestException) as err:
        print(f"facemask: error: {err}", file=sys.stderr)
        return 1


def add_target(parser: argparse.ArgumentParser) -> None:
    """Where predictions come from (a server or a local model), and how talkative to be."""
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running `mlflow models serve`, e.g. http://127.0.0.1:5001")
    target.add_argument("--model", help="run locally instead: a model URI, e.g. models:/face-segmenter@champion")
    target.add_argument("--onnx", help="run an exported ONNX file locally (export/model.onnx): no MLflow store or server")
    parser.add_argument("-v", "--verbose", action="store_true", help="show TensorFlow's and MLflow's logs too")


def predict_files(args) -> int:
    """`facemask predict`: a JSON line per image, overlays with --out, face counts per label at the end."""
    files = find_images(args.paths)
    every: list[dict] = []
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
            line = {"image": str(file), **answer(row)}
            every += line["faces"]
            if target is not None:
                image = to_rgb(open_image(file.read_bytes(), None))  # as the server decoded it (EXIF orientation too)
                drawn = overlay(image, decode_mask(row.mask) > 0, line["faces"], row.caveat)
                write_image(target, cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                line["overlay"] = str(target)
            print(json.dumps(line), flush=True)
    print(f"facemask: {len(files)} images, {summary(every)}", file=sys.stderr)
    return 0


def annotate_video(args) -> int:
    """`facemask video`: predict every `--stride`th frame, draw the latest prediction on every frame,
    write the annotated video (all or nothing: it is renamed into place at the end), report frames/s."""
    if args.stride < 1:
        raise ValueError(f"--stride must be at least 1, got {args.stride}")
    capture = open_video(args.input)
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    if args.max_frames is not None:
        total = min(total or args.max_frames, args.max_frames)
    out = Path(args.out) if args.out else None
    partial = out.with_name(f".{out.stem}.partial{out.suffix}") if out else None
    predict, writer, latest, every = predictor(args), None, None, []
    frames, start = 0, time.perf_counter()
    try:
        with tqdm(total=total, unit="frame", file=sys.stderr) as bar:
            while args.max_frames is None or frames < args.max_frames:
                ok, frame = capture.read()
                if not ok:
                    break
                if frames % args.stride == 0:
                    ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
                    row = next(predict([base64.b64encode(jpeg.tobytes()).decode("ascii")]).itertuples())
                    line = {"frame": frames, "time_s": round(frames / fps, 3), **answer(row)}
                    latest = (decode_mask(row.mask) > 0, line["faces"], line.get("caveat", ""))
                    every += line["faces"]
                    if args.json:
                        print(json.dumps(line), flush=True)
                if partial is not None:
                    writer = writer or open_writer(partial, fps, frame.shape[1], frame.shape[0])
                    drawn = overlay(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), *latest)
                    writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                frames += 1
                bar.update()
    except BaseException:
        if partial is not None:
            partial.unlink(missing_ok=True)
        raise
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if frames == 0:
        raise ValueError(f"{args.input}: no frames could be read")
    seconds = time.perf_counter() - start
    if partial is not None:
        partial.replace(out)
    predicted = len(range(0, frames, args.stride))
    print(f"facemask: {frames} frames ({predicted} predicted) in {seconds:.1f} s, {frames / seconds:.1f} frames/s; "
          f"{summary(every)} in the predicted frames" + (f"; wrote {out}" if out else ""), file=sys.stderr)
    return 0


def open_video(source: str) -> cv2.VideoCapture:
    """A video file, or a camera for a bare index such as `0`."""
    if source.isdigit():
        capture, what = cv2.VideoCapture(int(source)), f"camera {source}"
    elif Path(source).is_file():
        capture, what = cv2.VideoCapture(source), source
    else:
        raise FileNotFoundError(f"{source}: no such video file (or camera index)")
    if not capture.isOpened():
        raise OSError(f"cannot open {what}" + (" (is a camera attached?)" if source.isdigit() else " as a video"))
    return capture


def open_writer(path: Path, fps: float, width: int, height: int) -> cv2.VideoWriter:
    codecs = {".mp4": "mp4v", ".avi": "MJPG"}
    if path.suffix.lower() not in codecs:
        raise ValueError(f"{path}: the annotated video must be .mp4 or .avi")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codecs[path.suffix.lower()]), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"cannot write {path} (is the folder writable?)")
    return writer


def answer(row) -> dict:
    """A JSON line's prediction fields from one output row (`faces` built from `boxes` for models
    registered before the column existed)."""
    boxes = json.loads(row.boxes)
    faces = json.loads(row.faces) if isinstance(getattr(row, "faces", None), str) else [
        {"box": b[:4], "score": b[4], "label": None, "label_score": None} for b in boxes]
    line = {"n_faces": int(row.n_faces), "boxes": boxes, "faces": faces}
    if row.caveat:
        line["caveat"] = row.caveat
    return line


def summary(faces: list[dict]) -> str:
    """"12 faces (with_mask 8, without_mask 4)": the counts per label, when the model gives labels."""
    counts = count_labels(faces)
    labelled = ", ".join(f"{label} {n}" for label, n in counts.items() if label is not None)
    return f"{len(faces)} faces" + (f" ({labelled})" if labelled else "")


def quiet() -> None:
    """No MLflow download bars or info logs (TensorFlow's are hidden as it loads): the output is the results."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.ERROR)


def predictor(args):
    """A function from base64 images to the model's output table: over HTTP, or in this process."""
    if args.url:
        return lambda b64: predict_http(args.url, b64, args.threshold)
    params = {"threshold": args.threshold} if args.threshold is not None else None
    if args.onnx:
        if not Path(args.onnx).is_file():
            raise FileNotFoundError(f"{args.onnx}: no such ONNX file (the export stage writes export/model.onnx)")
        with warnings.catch_warnings(record=not args.verbose):  # MLflow's advice on type hints, as the class loads
            from pipeline.serving.pyfunc import FaceSegmenter

            return in_process(FaceSegmenter.from_onnx(args.onnx).predict, params)
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
    return in_process(lambda _, frame, params: model.predict(frame, params=params), params)


def in_process(predict, params: dict | None):
    """Base64 images -> output table through a model in this process; its 400s become ValueErrors."""
    from mlflow.exceptions import MlflowException

    def call(b64: list[str]) -> pd.DataFrame:
        try:
            return predict(None, pd.DataFrame({"image": b64}), params)
        except MlflowException as err:  # the model's own 400s: bad images or params
            raise ValueError(err.message) from None

    return call


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

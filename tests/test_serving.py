"""The registered champion served by a real `mlflow models serve` process on 127.0.0.1."""

import base64
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pandas as pd
import pytest
import requests

from ops.servers import scoring_server
from pipeline.data.synthetic import generate
from pipeline.serving.client import decode_mask, request_body
from pipeline.serving.pyfunc import encode_image
from tests.conftest import WIDERFACE
from tests.pipeline_fixture import env

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("project")]  # serves the shared clone's model

MODEL = "models:/face-segmenter@champion"


@pytest.fixture(scope="module")
def served(project, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "serve.log"
    with scoring_server(MODEL, f"sqlite:///{project / 'mlflow.db'}", log_path=log) as server:
        yield server


@pytest.fixture(scope="module")
def server(served):
    return served.url


@pytest.fixture(scope="module")
def local_model(project):
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return mlflow.pyfunc.load_model(MODEL)


def post(url, body):
    return requests.post(f"{url}/invocations", json=body, timeout=120)


def good_images():
    """Synthetic scenes as JPEG and PNG, an RGBA PNG and a grayscale JPEG, plus real photos if present."""
    scenes = generate(4, 80, 160, 3, seed=99)
    images = [(s.image, ".jpg") for s in scenes[:2]] + [(s.image, ".png") for s in scenes[2:]]
    rgba = np.dstack([scenes[0].image, np.full(scenes[0].image.shape[:2], 255, np.uint8)])
    out = [(encode_image(im, ext), im.shape[:2], s.boxes) for (im, ext), s in zip(images, scenes)]
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    out.append((base64.b64encode(png.tobytes()).decode(), rgba.shape[:2], scenes[0].boxes))
    gray = cv2.cvtColor(scenes[1].image, cv2.COLOR_RGB2GRAY)
    out.append((encode_image(gray, ".jpg"), gray.shape, scenes[1].boxes))
    if WIDERFACE.exists():
        for f in sorted((WIDERFACE / "images").iterdir())[:2]:
            out.append((base64.b64encode(f.read_bytes()).decode(), (416, 416), None))
    return out


def test_served_masks_and_boxes_match_the_contract_and_in_process_predict(server, local_model):
    images = good_images()
    response = post(server, request_body([b for b, _, _ in images], None))
    assert response.status_code == 200, response.text
    served = pd.DataFrame(response.json()["predictions"])
    assert len(served) == len(images)
    local = local_model.predict(pd.DataFrame({"image": [b for b, _, _ in images]}))
    for (b64, (h, w), _), row, ref in zip(images, served.itertuples(), local.itertuples()):
        assert row.caveat.startswith("synthetic demo: trained on generated scenes")  # the demo says what it is
        mask = decode_mask(row.mask)
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        boxes = json.loads(row.boxes)
        assert row.n_faces == len(boxes)
        for x1, y1, x2, y2, score in boxes:
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h and 0 <= score <= 1
            assert mask[y1:y2, x1:x2].any()
        faces = json.loads(row.faces)  # one object per face, in the order of boxes; no labels from this model
        assert [f["box"] + [f["score"]] for f in faces] == boxes
        assert all(f["label"] is None and f["label_score"] is None for f in faces)
        np.testing.assert_array_equal(mask, decode_mask(ref.mask))  # HTTP adds nothing, loses nothing
        assert row.boxes == ref.boxes and row.faces == ref.faces


def test_boxes_fall_on_faces(server):
    """The tiny model is weak, but its mask must sit on the faces far more than chance would. Pooled over 32
    scenes (one request's most): over 12, one CPU's rounding put the tiny model at 1.49x chance, 1.8x over 32."""
    scenes = generate(32, 64, 96, 3, seed=5)
    response = post(server, request_body([encode_image(s.image) for s in scenes], None))
    assert response.status_code == 200
    inside = total = 0
    coverage = []
    from pipeline.data.masks import boxes_to_mask

    for s, row in zip(scenes, response.json()["predictions"]):
        truth = boxes_to_mask(s.boxes, s.height, s.width).astype(bool)
        mask = decode_mask(row["mask"]) > 0
        inside, total = inside + (mask & truth).sum(), total + mask.sum()
        coverage.append(truth.mean())
    assert total > 0 and inside / total > 1.5 * np.mean(coverage)


def test_threshold_param_changes_the_mask(server, local_model):
    defaults = {p.name: p.default for p in local_model.metadata.get_params_schema().params}
    assert defaults["threshold_ratio"] == 0.5  # evaluate.threshold_ratio of the fixture, carried to the served model
    b64 = encode_image(generate(1, 96, 96, 3, seed=3)[0].image)

    def face_pixels(params: dict) -> int:
        response = post(server, {**request_body([b64], None), "params": params})
        assert response.status_code == 200, response.text
        return int((decode_mask(response.json()["predictions"][0]["mask"]) > 0).sum())

    low, high = face_pixels({"threshold": 0.01, "threshold_ratio": 0}), face_pixels({"threshold": 0.99, "threshold_ratio": 0})
    assert low > high
    # threshold_ratio 1: the image's threshold is the mean probability above 0.01, cutting the mask
    assert 0 < face_pixels({"threshold": 0.01, "threshold_ratio": 1.0}) < low


def _bad_inputs():
    good = encode_image(generate(1, 64, 64, 1, seed=1)[0].image, ".jpg")
    jpeg = base64.b64decode(good)
    huge = encode_image(np.zeros((8, 4100, 3), np.uint8))
    one_px = encode_image(np.zeros((1, 1, 3), np.uint8))
    frame = lambda values: {"dataframe_split": {"columns": ["image"], "data": [[v] for v in values]}}  # noqa: E731
    return {
        "missing image column": ({"dataframe_split": {"columns": ["photo"], "data": [[good]]}}, "image"),
        "not base64": (frame([good, "@@not base64@@"]), "image 1: not valid base64"),
        "not an image": (frame([base64.b64encode(b"hello world, no pixels here").decode()]), "image 0: bytes are not a JPEG or PNG"),
        "truncated jpeg": (frame([base64.b64encode(jpeg[: len(jpeg) // 2]).decode()]), "image 0: JPEG data is truncated"),
        "empty image": (frame([""]), "image 0: expected a non-empty base64 string"),
        "one pixel": (frame([one_px]), "image 0: image 1x1 is smaller than the minimum side"),
        "too large": (frame([huge]), "image 0: image 4100x8 is larger than the limit 4096x4096"),
        "wrong param type": ({**frame([good]), "params": {"threshold": "high"}}, "threshold"),
        "threshold out of range": ({**frame([good]), "params": {"threshold": 3}}, "param 'threshold' must be between 0 and 1"),
        "threshold ratio out of range": ({**frame([good]), "params": {"threshold_ratio": 2}},
                                         "param 'threshold_ratio' must be between 0 (off) and 1"),
        "empty batch": (frame([]), "empty batch"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_input_is_a_clear_400_and_the_server_keeps_serving(server, case):
    body, message = _bad_inputs()[case]
    response = post(server, body)
    assert response.status_code == 400, (response.status_code, response.text[:500])
    assert message in response.json()["message"]
    assert "Traceback" not in response.json()["message"]
    assert requests.get(f"{server}/ping", timeout=5).status_code == 200


def test_one_bad_image_rejects_the_batch_naming_every_bad_index(server):
    good = encode_image(generate(1, 64, 64, 1, seed=1)[0].image)
    body = request_body([good, "%%%", good, base64.b64encode(b"xx").decode()], None)
    response = post(server, body)
    assert response.status_code == 400
    message = response.json()["message"]
    assert "2 of 4 images are invalid" in message and "image 1:" in message and "image 3:" in message


def test_200_requests_from_8_concurrent_clients(server):
    body = request_body([encode_image(s.image, ".jpg") for s in generate(2, 96, 128, 3, seed=8)], None)
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: post(server, body).status_code, range(200)))
    assert codes == [200] * 200


def test_client_cli_over_http_writes_overlays(server, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, s in enumerate(generate(3, 80, 120, 2, seed=4)):
        cv2.imwrite(str(folder / f"p{i}.jpg"), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
    out = subprocess.run([sys.executable, "-m", "pipeline.serving.client", "predict", str(folder), "--url", server,
                          "--out", str(tmp_path / "overlays")], capture_output=True, text=True, env=env(), timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["image"].rsplit("/", 1)[1] for line in lines] == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert all(line["n_faces"] == len(line["boxes"]) and line["caveat"].startswith("synthetic demo") for line in lines)
    assert all([f["box"] + [f["score"]] for f in line["faces"]] == line["boxes"] for line in lines)
    assert "the model says it is a synthetic demo" in out.stderr and "cuda" not in out.stderr.lower()
    for i in range(3):
        drawn = cv2.imread(str(tmp_path / "overlays" / f"p{i}.png"))
        assert drawn.shape == cv2.imread(str(folder / f"p{i}.jpg")).shape


def test_client_cli_runs_the_model_locally_without_a_server(project, tmp_path):
    photo = tmp_path / "photo.png"
    scene = generate(1, 100, 100, 2, seed=6)[0]
    cv2.imwrite(str(photo), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    out = subprocess.run([sys.executable, "-m", "pipeline.serving.client", "predict", str(photo), "--model", MODEL, "--threshold", "0.3",
                          "--out", str(tmp_path / "overlay.png")], capture_output=True, text=True, timeout=300,
                         env={**env(), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"})
    assert out.returncode == 0, out.stderr[-3000:]
    line = json.loads(out.stdout)
    assert line["image"] == str(photo) and line["n_faces"] == len(line["boxes"])
    assert cv2.imread(str(tmp_path / "overlay.png")).shape == (100, 100, 3)
    assert f"from the MLflow store sqlite:///{project / 'mlflow.db'}" in out.stderr
    assert "Warning" not in out.stderr and "cuda" not in out.stderr.lower() and "absl" not in out.stderr  # quiet by default


def test_the_served_model_runs_onnx_and_the_exported_file_alone_answers_the_same(project, server, tmp_path):
    from pipeline.serving.onnx_model import OnnxModel

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    assert isinstance(mlflow.pyfunc.load_model(MODEL).unwrap_python_model().model, OnnxModel)
    # The served version's own file: earlier tests in this group register other versions, and which one is champion
    # then depends on their test dice (floats that differ between CPUs), not on which was exported last.
    onnx_file = Path(mlflow.artifacts.download_artifacts(MODEL)) / "artifacts" / "model.onnx"
    photo = tmp_path / "photo.jpg"
    cv2.imwrite(str(photo), cv2.cvtColor(generate(1, 120, 160, 3, seed=8)[0].image, cv2.COLOR_RGB2BGR))
    out = subprocess.run([sys.executable, "-m", "pipeline.serving.client", "predict", str(photo), "--onnx",
                          str(onnx_file), "--out", str(tmp_path / "overlay.png")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env())  # no MLflow store here
    assert out.returncode == 0, out.stderr[-3000:]
    line = json.loads(out.stdout)
    served = post(server, request_body([base64.b64encode(photo.read_bytes()).decode()], None)).json()["predictions"][0]
    assert line["boxes"] == json.loads(served["boxes"]) and line["faces"] == json.loads(served["faces"])
    assert cv2.imread(str(tmp_path / "overlay.png")).shape[:2] == cv2.imread(str(photo)).shape[:2]
    assert "Warning" not in out.stderr and not (tmp_path / "mlflow.db").exists()
    missing = subprocess.run([sys.executable, "-m", "pipeline.serving.client", "predict", str(photo), "--onnx", "nope.onnx"],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env())
    assert missing.returncode == 1 and "nope.onnx: no such ONNX file" in missing.stderr


def test_client_outside_the_project_says_where_it_looked_and_creates_no_store(tmp_path):
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.zeros((32, 32, 3), np.uint8))
    out = subprocess.run([sys.executable, "-m", "pipeline.serving.client", "predict", str(photo), "--model", MODEL], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env=env())
    assert out.returncode == 1 and f"no MLflow store here: {tmp_path / 'mlflow.db'} does not exist" in out.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_mlflow_models_predict_with_the_logged_serving_input_example(project, tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    example = mlflow.artifacts.download_artifacts(f"{MODEL}/serving_input_example.json", dst_path=str(tmp_path))
    out = subprocess.run([str(__import__("pathlib").Path(sys.executable).with_name("mlflow")), "models", "predict", "-m", MODEL,
                          "-i", example, "-t", "json", "--env-manager", "local", "-o", str(tmp_path / "out.json")],
                         capture_output=True, text=True, env={**env(), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"},
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    predictions = json.loads((tmp_path / "out.json").read_text())["predictions"]
    assert len(predictions) == 1 and set(predictions[0]) == {"mask", "boxes", "n_faces", "caveat", "faces"}
    signature = mlflow.models.get_model_info(MODEL).signature
    assert [c.name for c in signature.outputs.inputs] == ["mask", "boxes", "n_faces", "caveat", "faces"]


def test_a_request_over_the_pixel_limit_is_refused_before_decoding(served):
    """16 all-zero 4096x4096 PNGs: 1 MB on the wire, 800 MB as pixels; refused from their headers."""
    ok, png = cv2.imencode(".png", np.zeros((4096, 4096, 3), np.uint8))
    body = request_body([base64.b64encode(png.tobytes()).decode()] * 16, None)
    before = served.memory()
    response = post(served.url, body)
    after = served.memory()
    assert response.status_code == 400, response.text[:300]
    assert "268435456 pixels, over the limit of 40000000 (max_pixels)" in response.json()["message"]
    assert after["peak_rss"] - before["peak_rss"] < 64 * 2**20  # no image was decoded (one is 48 MiB as RGB)
    assert after["rss"] < 2 * 2**30, after


def test_too_many_images_are_refused(server):
    body = request_body([encode_image(np.zeros((8, 8, 3), np.uint8))] * 33, None)
    response = post(server, body)
    assert response.status_code == 400
    assert "33 images in one request is over the limit of 32 (max_images)" in response.json()["message"]


@pytest.mark.parametrize("data, headers, message", [
    (b"", {}, "no Content-Type header"),
    (b"[" * 100_000 + b"]" * 100_000, {"Content-Type": "application/json"}, "nested too deeply"),
])
def test_malformed_bodies_are_a_400_not_a_500(server, data, headers, message):
    response = requests.post(f"{server}/invocations", data=data, headers=headers, timeout=60)
    assert response.status_code == 400, (response.status_code, response.text[:300])
    assert message in response.json()["message"]
    assert requests.get(f"{server}/ping", timeout=5).status_code == 200


def test_client_names_clashing_overlays_apart_and_fails_loudly_when_it_cannot_write(server, tmp_path):
    for folder, ext in (("a", ".jpg"), ("b", ".png")):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / f"x{ext}"), generate(1, 64, 64, 1, seed=2)[0].image)
    run = lambda *args: subprocess.run([sys.executable, "-m", "pipeline.serving.client", "predict", *args, "--url", server],  # noqa: E731
                                       capture_output=True, text=True, env=env(), timeout=300)
    out = run(str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "x.png"), "--out", str(tmp_path / "o"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert [json.loads(line)["overlay"] for line in out.stdout.splitlines()] == [str(tmp_path / "o" / "x.png"),
                                                                                 str(tmp_path / "o" / "x-2.png")]
    assert cv2.imread(str(tmp_path / "o" / "x.png")) is not None and cv2.imread(str(tmp_path / "o" / "x-2.png")) is not None
    missing = tmp_path / "no" / "such" / "folder" / "overlay.png"
    out = run(str(tmp_path / "a" / "x.jpg"), "--out", str(missing))
    assert out.returncode == 1 and f"facemask: error: could not write {missing}" in out.stderr
    out = run(str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "x.png"), "--out", str(tmp_path / "a" / "x.jpg" / "o"))
    assert out.returncode == 1 and "facemask: error:" in out.stderr and "Traceback" not in out.stderr


def write_video(path, frames: list[np.ndarray], fps: float = 5.0) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames[0].shape[1], frames[0].shape[0]))
    for frame in frames:
        writer.write(frame)
    writer.release()


def read_video(path) -> tuple[list[np.ndarray], float]:
    capture, frames = cv2.VideoCapture(str(path)), []
    while (frame := capture.read())[0]:
        frames.append(frame[1])
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return frames, fps


def test_video_cli_annotates_every_frame_and_predicts_every_nth(server, tmp_path):
    """A short video made from real image files: the annotated copy has every frame at the input's size
    and rate, faces drawn where the JSON lines say; --stride 2 predicts frames 0, 2, 4, 6."""
    stills = []
    for i, s in enumerate(generate(7, 96, 96, 3, seed=11)):
        cv2.imwrite(str(tmp_path / f"f{i}.jpg"), cv2.cvtColor(cv2.resize(s.image, (128, 96)), cv2.COLOR_RGB2BGR))
        stills.append(cv2.imread(str(tmp_path / f"f{i}.jpg")))
    write_video(tmp_path / "in.mp4", stills)
    source, fps = read_video(tmp_path / "in.mp4")
    assert len(source) == 7
    out = subprocess.run([sys.executable, "-m", "pipeline.serving.client", "video", str(tmp_path / "in.mp4"), "--url", server,
                          "--out", str(tmp_path / "annotated.mp4"), "--stride", "2", "--json"],
                         capture_output=True, text=True, env=env(), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["frame"] for line in lines] == [0, 2, 4, 6]
    assert all(line["n_faces"] == len(line["faces"]) == len(line["boxes"]) for line in lines)
    assert "7 frames (4 predicted)" in out.stderr and "frames/s" in out.stderr
    annotated, out_fps = read_video(tmp_path / "annotated.mp4")
    assert len(annotated) == 7 and out_fps == pytest.approx(fps)
    assert all(a.shape == (96, 128, 3) for a in annotated)
    assert not list(tmp_path.glob(".*partial*"))
    drawn = [(line["frame"], face["box"]) for line in lines for face in line["faces"]]
    assert drawn, "the tiny model found no face in any frame: nothing to check the drawing on"
    for frame, (x1, y1, x2, y2) in drawn:  # the tinted mask and the box change the face, not just the codec's noise
        change = np.abs(annotated[frame].astype(int) - source[frame].astype(int))[y1:y2, x1:x2].mean()
        assert change > 10, (frame, change)


def test_video_cli_says_what_it_cannot_open(server, tmp_path):
    for source, message in [("7", "cannot open camera 7"), (str(tmp_path / "none.mp4"), "no such video file")]:
        out = subprocess.run([sys.executable, "-m", "pipeline.serving.client", "video", source, "--url", server,
                              "--out", str(tmp_path / "x.mp4")], capture_output=True, text=True, env=env(), timeout=120)
        assert out.returncode == 1 and message in out.stderr, out.stderr[-2000:]
        assert not (tmp_path / "x.mp4").exists()
    (tmp_path / "not-a-video.mp4").write_bytes(b"\x00" * 100)
    out = subprocess.run([sys.executable, "-m", "pipeline.serving.client", "video", str(tmp_path / "not-a-video.mp4"), "--url", server],
                         capture_output=True, text=True, env=env(), timeout=120)
    assert out.returncode == 1 and "not-a-video.mp4" in out.stderr, out.stderr[-2000:]

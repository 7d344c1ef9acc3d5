import re

import cv2
import numpy as np
import pytest

from pipeline.data import formats
from pipeline.data.formats import FormatError, Report, load_samples, write_dataset
from pipeline.data.masks import boxes_to_mask
from tests.conftest import FACEMASK_CROPS, FACEMASK_SCENES, LIMITS, WIDERFACE, course_array, face, png_header


def read_images_npy(path, report):
    return formats.read_images_npy(path, report, LIMITS)


def read_yolo_folder(path, report):
    return formats.read_yolo_folder(path, report, LIMITS)


def save(tmp_path, rows):
    path = tmp_path / "images.npy"
    np.save(path, course_array(rows), allow_pickle=True)
    return path


def test_course_layout_quirks_are_repaired_and_counted(tmp_path):
    rgb = np.full((20, 40, 3), 100, np.uint8)
    rgba = np.dstack([np.full((10, 10, 3), 7, np.uint8), np.full((10, 10), 255, np.uint8)])
    gray = np.arange(100, dtype=np.uint8).reshape(10, 10)
    path = save(tmp_path, [
        (rgb, [face(0.5, 0.5, 0.25, 0.25),          # corners swapped
               face(-0.1, 0.0, 0.5, 1.2),           # past the image: clipped
               face(0.3, 0.3, 0.3, 0.6)]),          # zero width: dropped
        (rgba, [face(0.1, 0.1, 0.5, 0.5)]),
        (gray, []),                                  # a negative: valid
    ])
    report = Report()
    samples = read_images_npy(path, report)
    assert [s.image.shape for s in samples] == [(20, 40, 3), (10, 10, 3), (10, 10, 3)]
    np.testing.assert_allclose(samples[0].boxes, [[10, 5, 20, 10], [0, 0, 20, 20]])
    np.testing.assert_array_equal(samples[1].image, 7)           # alpha dropped, colour kept
    np.testing.assert_array_equal(samples[2].image[..., 1], gray)  # gray copied, not blanked
    assert samples[2].boxes.shape == (0, 4)
    assert report.counts == {"corner_order_fixed": 1, "box_clipped": 1, "zero_area_box_dropped": 1,
                             "rgba_to_rgb": 1, "grayscale_to_rgb": 1}


@pytest.mark.parametrize("rows, message", [
    ("not-object", "expected an object array of shape (N, 2)"),
    ([(np.zeros((8, 8, 3), np.uint8), [{"label": ["Face"]}])], "row 0 field 1 (faces) item 0: missing 'points'"),
    ([(np.zeros((8, 8, 3), np.uint8), [face(0, 0, 1, 1)]), (np.zeros((8, 8, 3), np.uint8), [{"points": [{"x": 0}]}])],
     "row 1 field 1 (faces) item 0 'points'"),
    ([(np.zeros((8, 8, 5), np.uint8), [])], "row 0 field 0 (image): image shape (8, 8, 5)"),
    ([(np.zeros((8, 8, 3), np.float32), [])], "row 0 field 0 (image): image dtype is float32"),
    ([(np.zeros((8, 8, 3), np.uint8), []), (np.zeros((1, 1, 3), np.uint8), [])],
     "row 1 field 0 (image): image 1x1 is smaller than the minimum side of 8 pixels"),
])
def test_malformed_course_file_names_row_and_field(tmp_path, rows, message):
    path = tmp_path / "images.npy"
    if rows == "not-object":
        np.save(path, np.zeros((3, 4)))
    else:
        np.save(path, course_array(rows), allow_pickle=True)
    with pytest.raises(FormatError) as err:
        read_images_npy(path, Report())
    assert str(path) in str(err.value) and message in str(err.value)


class Payload:
    """Unpickling this runs `command`; `faces` is what the call returns when it is harmless."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


class FaceListPayload(Payload):
    def __reduce__(self):  # runs the command, then returns a valid face list: the stage would exit 0
        return (eval, (f"__import__('os').system({self.command!r}) and [] or [{face(0.1, 0.1, 0.5, 0.5)!r}]",))


@pytest.mark.parametrize("payload", [Payload, FaceListPayload])
def test_a_course_file_that_would_run_code_is_refused_and_nothing_runs(tmp_path, payload):
    marker = tmp_path / "pwned"
    path = save(tmp_path, [(np.zeros((8, 8, 3), np.uint8), payload(f"touch {marker}"))])
    with pytest.raises(FormatError) as err:
        read_images_npy(path, Report())
    assert str(path) in str(err.value) and "refused" in str(err.value)
    assert ("posix.system" in str(err.value)) if payload is Payload else ("builtins.eval" in str(err.value))
    assert not marker.exists()


def test_plain_numpy_values_in_a_course_file_still_load(tmp_path):
    """Numbers saved as numpy scalars, a big-endian float image (refused as a dtype, not as unsafe), nested arrays."""
    faces = [{"points": [{"x": np.float64(0.25), "y": np.float32(0.25)}, {"x": 0.75, "y": np.float64(0.75)}],
              "label": np.array(["Face"]), "size": np.array([8, 8], ">i4")}]
    path = save(tmp_path, [(np.full((8, 8, 3), 9, np.uint8), faces)])
    (sample,) = read_images_npy(path, Report())
    np.testing.assert_allclose(sample.boxes, [[2, 2, 6, 6]])
    np.testing.assert_array_equal(sample.image, 9)


@pytest.mark.parametrize("content, message", [
    (cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes(), "cannot be read as a .npy file: not a .npy file"),
    ("truncate", "cannot be read as a .npy file: the pickled object data is truncated or damaged"),
])
def test_unreadable_course_file_names_the_file(tmp_path, content, message):
    path = save(tmp_path, [(np.zeros((8, 8, 3), np.uint8), [face(0.1, 0.1, 0.5, 0.5)])])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40] if content == "truncate" else content)
    with pytest.raises(FormatError) as err:
        read_images_npy(path, Report())
    assert str(err.value).startswith(f"{path}: {message}")


def test_wrong_row_shape(tmp_path):
    arr = np.empty((2, 3), dtype=object)
    path = tmp_path / "x.npy"
    np.save(path, arr, allow_pickle=True)
    with pytest.raises(FormatError, match=r"shape \(2, 3\)"):
        read_images_npy(path, Report())


def test_yolo_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((50, 100, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "images" / "b.jpg"), np.zeros((10, 10), np.uint8))
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.4 -1 -1\n\n0 0.99 0.5 0.1 0.1\n")
    (tmp_path / "labels" / "gone.txt").write_text("0 0.5 0.5 0.2 0.4\n")  # its image is missing
    report = Report()
    a, b = read_yolo_folder(tmp_path, report)
    np.testing.assert_allclose(a.boxes, [[40, 15, 60, 35], [94, 22.5, 100, 27.5]], atol=1e-4)
    assert b.boxes.shape == (0, 4) and b.image.shape == (10, 10, 3)
    assert report.counts == {"box_clipped": 1, "missing_label_file_as_negative": 1, "grayscale_to_rgb": 1,
                             "orphan_label_file": 1}


def test_yolo_errors_name_the_file(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "images" / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(FormatError, match="bad.jpg: not a readable image file"):
        read_yolo_folder(tmp_path, Report())
    cv2.imwrite(str(tmp_path / "images" / "bad.jpg"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "labels" / "bad.txt").write_text("0 0.5 0.5 0.1 0.1\n0 0.5 oops 0.1\n")
    with pytest.raises(FormatError, match=r"bad.txt line 2: expected 'class cx cy w h'"):
        read_yolo_folder(tmp_path, Report())
    (tmp_path / "labels" / "bad.txt").write_text("0 0.5 0.5 0.1 0.1\n\n0 0.5 nan 0.1 0.1\n")
    with pytest.raises(FormatError, match=r"bad.txt line 3: box values are not finite: '0.5 nan 0.1 0.1'"):
        read_yolo_folder(tmp_path, Report())
    (tmp_path / "labels" / "bad.txt").write_bytes(b"\x00\xff\xfe\x89PNG binary")
    with pytest.raises(FormatError, match=r"bad.txt: not a text file"):
        read_yolo_folder(tmp_path, Report())


@pytest.mark.parametrize("data, message", [
    (png_header(40000, 40000), "image is too large to decode"),
    (png_header(5000, 100), "image 5000x100 is larger than the limit 4096x4096"),
    (cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes(), "image 1x1 is smaller than the minimum side of 8"),
])
def test_yolo_images_obey_the_served_size_limits_before_decoding(tmp_path, data, message):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "big.png").write_bytes(data)
    with pytest.raises(FormatError, match=f"big.png: {message}"):
        read_yolo_folder(tmp_path, Report())


def test_dataset_round_trip(tmp_path):
    path = save(tmp_path, [(np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8), [face(0.1, 0.2, 0.5, 0.6)]),
                           (np.zeros((8, 8, 3), np.uint8), [])])
    samples = read_images_npy(path, Report())
    write_dataset(((s, boxes_to_mask(s.boxes, s.height, s.width)) for s in samples), tmp_path / "out")
    loaded = load_samples(tmp_path / "out")
    assert [s.image_id for s in loaded] == ["row00000", "row00001"]
    np.testing.assert_array_equal(loaded[0].image, samples[0].image)
    np.testing.assert_allclose(loaded[0].boxes, samples[0].boxes, atol=1e-4)
    mask = cv2.imread(str(tmp_path / "out" / "masks" / "row00000.png"), cv2.IMREAD_GRAYSCALE)
    assert mask.sum() == 255 * boxes_to_mask(samples[0].boxes, 12, 16).sum() > 0


@pytest.mark.skipif(not WIDERFACE.exists(), reason="../shared/data/widerface-dev not present (it is in CI)")
def test_real_course_file_and_yolo_folder_agree():
    report = Report()
    npy = read_images_npy(WIDERFACE / "images.npy", report)
    assert len(npy) == 125 and all(s.image.shape[2] == 3 for s in npy)
    assert report.counts["rgba_to_rgb"] == 3 and report.counts["grayscale_to_rgb"] == 1
    assert npy[60].image.std() > 10  # the grayscale row is a real picture, not blank
    yolo = read_yolo_folder(WIDERFACE, Report())
    assert sum(len(s.boxes) for s in yolo) == sum(len(s.boxes) for s in npy)
    assert abs(sum(len(s.boxes) for s in npy) - 2651) <= 5  # a few zero-area boxes may be dropped


def voc_xml(filename: str, objects: list[tuple[str, tuple]], debris: str = "") -> str:
    body = "".join(f"<object><name>{name}</name><pose>Unspecified</pose><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox>{debris}</object>" for name, b in objects)
    return f"<annotation><folder>JPEGImages</folder><filename>{filename}</filename>{body}</annotation>"


def voc_folder(root, annotations: dict[str, str], images: dict[str, tuple[int, int]]):
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for name, text in annotations.items():
        (root / "Annotations" / name).write_text(text)
    for name, (h, w) in images.items():
        cv2.imwrite(str(root / "JPEGImages" / name), np.zeros((h, w, 3), np.uint8))
    return root


def test_voc_folder_reads_face_boxes_counts_labels_debris_and_unannotated_images(tmp_path):
    root = voc_folder(tmp_path, {
        "a.xml": voc_xml("a.jpg", [("with_mask", (10, 5, 30, 25)), ("without_mask", (40, 10, 70, 60))],
                         debris="file:/Users/someone/annotations/a.xml"),
        "b.xml": voc_xml("b.png", [("mask_weared_incorrect", (0, 0, 90, 50))]),  # past the right edge: clipped
    }, {"a.jpg": (64, 80), "b.png": (40, 60), "c.jpg": (20, 20)})
    report = Report()
    a, b = formats.read_voc_folder(root, report, LIMITS)
    np.testing.assert_allclose(a.boxes, [[10, 5, 30, 25], [40, 10, 70, 60]])
    np.testing.assert_allclose(b.boxes, [[0, 0, 60, 40]])
    assert report.labels == {"with_mask": 1, "without_mask": 1, "mask_weared_incorrect": 1}
    assert report.counts == {"stray_text_in_annotation": 2, "box_clipped": 1, "image_without_annotation": 1}
    assert a.labels == [None, None] and b.labels == [None]  # no data.labels: faces only


CLASSES = {"with_mask": "with_mask", "without_mask": "without_mask", "mask_weared_incorrect": "incorrect"}


def test_voc_labels_become_classes_through_the_mapping_and_survive_box_repairs(tmp_path):
    root = voc_folder(tmp_path, {
        "a.xml": voc_xml("a.jpg", [("with_mask", (10, 5, 30, 25)), ("without_mask", (90, 10, 95, 60)),  # outside: dropped
                                   ("mask_weared_incorrect", (40, 10, 70, 60))]),
    }, {"a.jpg": (64, 80)})
    report = Report()
    (a,) = formats.read_voc_folder(root, report, LIMITS, CLASSES)
    np.testing.assert_allclose(a.boxes, [[10, 5, 30, 25], [40, 10, 70, 60]])
    assert a.labels == ["with_mask", "incorrect"] and report.counts["zero_area_box_dropped"] == 1
    write_dataset([(a, boxes_to_mask(a.boxes, a.height, a.width))], tmp_path / "out")
    (loaded,) = load_samples(tmp_path / "out")
    assert loaded.labels == ["with_mask", "incorrect"]
    assert formats.fingerprint([loaded]) != formats.fingerprint([formats.Sample("a", a.image, a.boxes)])


def test_a_label_missing_from_the_mapping_names_file_and_object(tmp_path):
    root = voc_folder(tmp_path, {"a.xml": voc_xml("a.jpg", [("with_mask", (1, 1, 9, 9)), ("mask", (2, 2, 8, 8))])},
                      {"a.jpg": (20, 20)})
    with pytest.raises(FormatError, match=re.escape("a.xml <object> 1 <name>: 'mask' is not in data.labels")):
        formats.read_voc_folder(root, Report(), LIMITS, CLASSES)


def test_several_sources_are_read_in_order_with_ids_kept_apart(tmp_path):
    """A labelled VOC folder and an unlabelled course file: their faces are trained on together,
    only the VOC faces carry classes, and equal file names stay two images."""
    from pipeline.config import DataConfig, SourceConfig
    from pipeline.data.sources import read_sources

    voc = voc_folder(tmp_path / "voc", {"row00000.xml": voc_xml("x.jpg", [("without_mask", (1, 1, 9, 9))])}, {"x.jpg": (20, 20)})
    npy = save(tmp_path, [(np.zeros((12, 16, 3), np.uint8), [face(0.1, 0.2, 0.5, 0.6)])])
    cfg = DataConfig(sources=(SourceConfig("voc", str(voc)), SourceConfig("images_npy", str(npy))), labels=CLASSES,
                     synthetic=None)
    (tmp_path / "crops" / "with_mask").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "crops" / "with_mask" / "a.jpg"), np.zeros((24, 20, 3), np.uint8))
    cfg = DataConfig(sources=(*cfg.sources, SourceConfig("crops", str(tmp_path / "crops"))), labels=CLASSES, synthetic=None)
    samples, summary = read_sources(cfg, Report(), LIMITS)
    assert [s.image_id for s in samples] == ["s0-row00000", "s1-row00000", "s2-with_mask-a"]
    assert [s.labels for s in samples] == [["without_mask"], [None], ["with_mask"]]
    assert summary == [{"type": "voc", "path": str(voc), "n_images": 1, "n_faces": 1, "classes": {"without_mask": 1}},
                       {"type": "images_npy", "path": str(npy), "n_images": 1, "n_faces": 1, "classes": {}},
                       {"type": "crops", "path": str(tmp_path / "crops"), "n_images": 1, "n_faces": 1,
                        "classes": {"with_mask": 1}}]
    assert cfg.name == "voc+images_npy+crops" and cfg.classes == ("incorrect", "with_mask", "without_mask")
    single, _ = read_sources(DataConfig(sources=cfg.sources[1:2], labels={}, synthetic=None), Report(), LIMITS)
    assert [s.image_id for s in single] == ["row00000"]  # one source keeps its ids


@pytest.mark.parametrize("text, message", [
    (voc_xml("a.jpg", [("face", ("x", 1, 2, 3))]), "a.xml <object> 0 <bndbox>: expected numbers"),
    (voc_xml("a.jpg", [("face", ("nan", 1, 2, 3))]), "a.xml <object> 0 <bndbox>: not finite"),
    (voc_xml("missing.jpg", []), "a.xml <filename>: "),
    ("<annotation><filename>a.jpg", "a.xml: not well-formed XML"),
    ('<!DOCTYPE a [<!ENTITY x "xx">]><annotation><filename>a.jpg</filename></annotation>', "a.xml: refused, declares XML"),
])
def test_voc_errors_name_the_file_and_object(tmp_path, text, message):
    root = voc_folder(tmp_path, {"a.xml": text}, {"a.jpg": (20, 20)})
    with pytest.raises(FormatError, match=re.escape(message)):
        formats.read_voc_folder(root, Report(), LIMITS)


@pytest.mark.skipif(not FACEMASK_SCENES.exists(), reason="../shared/data/facemask-scenes not present (it is in CI)")
def test_real_voc_folder():
    report = Report()
    samples = formats.read_voc_folder(FACEMASK_SCENES, report, LIMITS)
    assert len(samples) == 853 and sum(len(s.boxes) for s in samples) == 4072
    assert report.labels == {"with_mask": 3232, "without_mask": 717, "mask_weared_incorrect": 123}
    assert report.counts["stray_text_in_annotation"] == 1  # maksssksksss0.xml's debris line


def test_crop_folders_are_one_whole_image_face_each_labelled_by_its_folder(tmp_path):
    for folder, sizes in {"masked": [(40, 30), (20, 20)], "bare": [(50, 60)]}.items():
        (tmp_path / folder).mkdir()
        for i, (h, w) in enumerate(sizes):
            cv2.imwrite(str(tmp_path / folder / f"{i}.jpg"), np.full((h, w, 3), 90, np.uint8))
    (tmp_path / "bare" / "notes.txt").write_text("not an image")
    report = Report()
    samples = list(formats.read_crop_folders(tmp_path, report, LIMITS, {"masked": "with_mask", "bare": "without_mask"}))
    assert [s.image_id for s in samples] == ["bare-0", "masked-0", "masked-1"]
    assert [s.labels for s in samples] == [["without_mask"], ["with_mask"], ["with_mask"]]
    np.testing.assert_array_equal(samples[0].boxes, [[0, 0, 60, 50]])  # the whole image, x2 = width
    assert report.labels == {"masked": 2, "bare": 1} and report.counts["not_an_image"] == 1
    assert all(s.labels == [None] for s in formats.read_crop_folders(tmp_path, Report(), LIMITS))  # no data.labels
    with pytest.raises(FormatError, match=re.escape(f"{tmp_path / 'masked'}: folder name 'masked' is not in data.labels")):
        list(formats.read_crop_folders(tmp_path, Report(), LIMITS, {"bare": "without_mask"}))
    with pytest.raises(FormatError, match="no class subfolders"):
        list(formats.read_crop_folders(tmp_path / "bare", Report(), LIMITS))
    cv2.imwrite(str(tmp_path / "bare" / "0.png"), np.zeros((8, 8, 3), np.uint8))  # 0.jpg is there: one id for two
    with pytest.raises(FormatError, match=re.escape(f"{tmp_path / 'bare' / '0.jpg'}: another image in")):
        list(formats.read_crop_folders(tmp_path, Report(), LIMITS))


@pytest.mark.skipif(not FACEMASK_CROPS.exists(), reason="../shared/data/facemask-crops not present (it is in CI)")
def test_real_crop_folders():
    report = Report()
    samples = list(formats.read_crop_folders(FACEMASK_CROPS, report, LIMITS, {"with_mask": "with_mask", "without_mask": "without_mask"}))
    assert len(samples) == 4094 and report.labels == {"with_mask": 2164, "without_mask": 1930}
    assert all(s.boxes.tolist() == [[0, 0, s.width, s.height]] for s in samples)


def wider_tree(root, entries: list[tuple[str, tuple[int, int], list[str]]], extra_images=(), subset="train") -> str:
    """The official WIDER FACE layout: the label file holds, per image, its path, face count and face lines
    (with a line of zeros after a count of 0, as the real files do); images under WIDER_<subset>/images/."""
    lines = []
    for name, (h, w), faces in entries:
        lines += [name, str(len(faces))] + (faces or ["0 0 0 0 0 0 0 0 0 0 "])
        (root / f"WIDER_{subset}" / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / f"WIDER_{subset}" / "images" / name), np.full((h, w, 3), 90, np.uint8))
    for name in extra_images:
        cv2.imwrite(str(root / f"WIDER_{subset}" / "images" / name), np.zeros((8, 8, 3), np.uint8))
    (root / "wider_face_split").mkdir(exist_ok=True)
    (root / "wider_face_split" / f"wider_face_{subset}_bbx_gt.txt").write_text("\n".join(lines) + "\n")
    return str(root)


def test_wider_face_layout_reads_boxes_skips_the_zero_face_placeholder_and_counts_flags(tmp_path):
    root = wider_tree(tmp_path, [
        ("0--Parade/0_Parade_marchingband_1_849.jpg", (60, 80), ["10 5 20 30 0 0 0 0 0 0 ", "50 40 40 30 2 0 0 1 2 0 "]),
        ("0--Parade/0_Parade_Parade_0_452.jpg", (40, 40), []),  # zero faces, then "0 0 0 0 ..."
        ("1--Handshaking/1_Handshaking_1_3.jpg", (50, 50), ["0 0 0 0 0 0 0 1 0 0 ", "5 5 10 10 1 0 0 0 1 0 "]),
    ], extra_images=["0--Parade/unlisted.jpg"])
    report = Report()
    samples = list(formats.read_wider_face(root, report, LIMITS))
    assert [s.image_id for s in samples] == ["0_Parade_marchingband_1_849", "0_Parade_Parade_0_452", "1_Handshaking_1_3"]
    np.testing.assert_allclose(samples[0].boxes, [[10, 5, 30, 35], [50, 40, 80, 60]])  # x y w h; the 2nd clipped to 80x60
    assert samples[1].boxes.shape == (0, 4) and samples[1].image.shape == (40, 40, 3)
    np.testing.assert_allclose(samples[2].boxes, [[5, 5, 15, 15]])
    assert report.counts == {"widerface_image_without_faces": 1, "widerface_invalid_face_kept": 2,
                             "widerface_heavy_blur_face": 1, "widerface_heavy_occlusion_face": 1, "box_clipped": 1,
                             "zero_area_box_dropped": 1, "image_without_annotation": 1}


def test_wider_face_is_a_source_and_its_val_file_reads_the_val_subset(tmp_path):
    from pipeline.config import DataConfig, SourceConfig
    from pipeline.data.sources import read_sources

    wider_tree(tmp_path, [("0--Parade/a.jpg", (30, 30), ["1 1 9 9 0 0 0 0 0 0"])], subset="val")
    val = tmp_path / "wider_face_split" / "wider_face_val_bbx_gt.txt"
    cfg = DataConfig(sources=(SourceConfig("widerface", str(val)),), labels={}, synthetic=None)
    samples, summary = read_sources(cfg, Report(), LIMITS)
    assert [s.image_id for s in samples] == ["a"] and summary[0]["n_faces"] == 1
    with pytest.raises(FormatError, match="expected wider_face_split/wider_face_train_bbx_gt.txt and WIDER_train/images/"):
        list(formats.read_wider_face(tmp_path, Report(), LIMITS))  # the root means the train subset
    with pytest.raises(FormatError, match="expected the root folder or a wider_face_<subset>_bbx_gt.txt file"):
        list(formats.read_wider_face(tmp_path / "WIDER_val" / "images" / "0--Parade" / "a.jpg", Report(), LIMITS))


@pytest.mark.parametrize("text, message", [
    ("0--Parade/a.jpg\nx\n", "line 2: expected the face count of 0--Parade/a.jpg"),
    ("0--Parade/a.jpg\n2\n1 1 5 5 0 0 0 0 0 0\n", "0--Parade/a.jpg lists 2 faces, the file ends after 1"),
    ("0--Parade/a.jpg\n1\n1 1 five 5 0 0 0 0 0 0\n", "line 3: expected 'x y w h blur"),
    ("0--Parade/a.jpg\n0\n3 3 5 5 0 0 0 0 0 0\n", "line 3: 0--Parade/a.jpg has 0 faces but a face line follows"),
    ("1\n0--Parade/a.jpg\n", "line 1: expected an image path"),
    ("0--Parade/missing.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n", "missing.jpg does not exist"),
    ("0--Parade/a.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n0--Parade/a.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n", "0--Parade/a.jpg is listed twice"),
])
def test_wider_face_errors_name_the_file_and_line(tmp_path, text, message):
    wider_tree(tmp_path, [("0--Parade/a.jpg", (20, 20), [])])
    (tmp_path / "wider_face_split" / "wider_face_train_bbx_gt.txt").write_text(text)
    with pytest.raises(FormatError, match=re.escape(message)):
        list(formats.read_wider_face(tmp_path, Report(), LIMITS))


def test_write_dataset_refuses_a_repeated_image_id_and_leaves_nothing_behind(tmp_path):
    a = formats.Sample("a", np.zeros((8, 8, 3), np.uint8), np.zeros((0, 4), np.float32))
    with pytest.raises(FormatError, match="image id 'a' appears twice"):
        write_dataset(((s, np.zeros((8, 8), np.uint8)) for s in [a, a]), tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []

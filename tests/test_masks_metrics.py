import numpy as np
import pytest

from pipeline.data.masks import boxes_to_mask, find_faces, image_threshold, postprocess, scale_boxes
from pipeline.evaluation.metrics import (
    average_precision,
    box_iou,
    evaluate_masks,
    mask_dice,
    mask_iou,
    mask_wearing_report,
    match_boxes,
    paired_bootstrap,
    size_bucket,
)


def test_boxes_to_mask_fills_pixel_centres():
    mask = boxes_to_mask(np.array([[1, 1, 3, 4], [5.2, 0.1, 5.6, 0.4]]), 5, 7)
    expected = np.zeros((5, 7), np.uint8)
    expected[1:4, 1:3] = 1
    expected[0, 5] = 1  # a sub-pixel face still marks one pixel
    np.testing.assert_array_equal(mask, expected)


def test_postprocess_components_boxes_scores_and_specks():
    prob = np.zeros((10, 12), np.float32)
    prob[1:4, 1:5] = 0.8   # 12 px face
    prob[6:9, 7:11] = 0.6  # 12 px face
    prob[8, 1] = 0.9       # 1 px speck
    mask, boxes = postprocess(prob, 0.5, min_area=2)
    np.testing.assert_allclose(boxes, [[1, 1, 5, 4, 0.8], [7, 6, 11, 9, 0.6]], atol=1e-6)
    assert mask.sum() == 24 and mask[8, 1] == 0
    mask, boxes = postprocess(prob, 0.7, min_area=0)
    assert len(boxes) == 2 and mask.sum() == 13


def test_threshold_ratio_lowers_the_threshold_of_a_faint_image_only():
    faint = np.zeros((10, 10), np.float32)
    faint[2:8, 2:8] = 0.35  # the edge of a face the model is unsure of
    faint[4:6, 4:6] = 0.6   # its centre: the only pixels at or above 0.45
    clear = np.where(faint > 0, 0.95, 0.0).astype(np.float32)
    assert postprocess(faint, 0.45)[0].sum() == 4
    assert image_threshold(faint, 0.45, 0.5) == pytest.approx(0.3)  # 0.5 x the mean 0.6 above 0.45
    assert postprocess(faint, 0.45, ratio=0.5)[0].sum() == 36
    assert image_threshold(clear, 0.45, 0.5) == pytest.approx(0.475)
    np.testing.assert_array_equal(postprocess(clear, 0.45, ratio=0.5)[0], postprocess(clear, 0.45)[0])
    assert postprocess(np.full((4, 4), 0.2, np.float32), 0.45, ratio=0.5)[0].sum() == 0  # nothing above: no face
    with pytest.raises(ValueError, match="between 0 \\(off\\) and 1, got 1.5"):
        image_threshold(faint, 0.45, 1.5)


def test_split_cuts_touching_faces_at_their_peaks_and_keeps_the_mask():
    yy, xx = np.mgrid[0:20, 0:40]
    face = lambda cx: np.exp(-((xx - cx) ** 2 + (yy - 10) ** 2) / 30.0)  # noqa: E731
    prob = np.maximum(face(12), face(26)).astype(np.float32)  # two faces, one component at 0.15
    mask, merged = postprocess(prob, 0.15, min_area=4)
    split_mask, split = postprocess(prob, 0.15, min_area=4, separate=True)
    np.testing.assert_array_equal(split_mask, mask)
    assert len(merged) == 1 and len(split) == 2
    left, right = sorted(split.tolist())
    assert left[0] == merged[0][0] and right[2] == merged[0][2]  # the outer edges stay
    assert left[2] <= 20 and right[0] >= 18  # the cut is between the peaks at x = 12 and 26
    assert len(postprocess(face(12).astype(np.float32), 0.3, 4, separate=True)[1]) == 1  # one face stays one
    assert len(postprocess(np.zeros((5, 5), np.float32), 0.3, 4, separate=True)[1]) == 0


def test_dice_iou_by_hand():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True      # 4 px
    b[:2, :3] = True      # 6 px, overlap 4
    assert mask_dice(a, b) == pytest.approx(0.8) and mask_iou(a, b) == pytest.approx(4 / 6)
    assert mask_dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0 and mask_dice(a, np.zeros((4, 4))) == 0.0


def test_box_iou_and_matching():
    true = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    pred = np.array([[0, 0, 10, 5, 0.9], [21, 21, 31, 31, 0.8], [50, 50, 60, 60, 0.7]])
    np.testing.assert_allclose(box_iou(pred, true)[:2], [[0.5, 0], [0, 81 / 119]])
    true_hit, pred_hit = match_boxes(pred, true, 0.5)
    assert true_hit.tolist() == [True, True] and pred_hit.tolist() == [True, True, False]
    assert size_bucket(np.array([[0, 0, 2, 2], [0, 0, 10, 10], [0, 0, 60, 60]]), 100, 100).tolist() == ["small", "medium", "large"]


def test_evaluate_masks_pooled_and_face_level():
    t1 = boxes_to_mask(np.array([[0, 0, 10, 10]]), 100, 100)
    p1 = boxes_to_mask(np.array([[0, 0, 10, 5]]), 100, 100)
    t2 = np.zeros((100, 100), np.uint8)
    p2 = boxes_to_mask(np.array([[50, 50, 60, 60]]), 100, 100)
    m = evaluate_masks([p1, p2], [np.array([[0, 0, 10, 5, 1.0]]), np.array([[50, 50, 60, 60, 1.0]])], [t1, t2],
                       [np.array([[0, 0, 10, 10]]), np.zeros((0, 4))])
    assert m["dice"] == pytest.approx((100 / 150 + 0) / 2)
    assert m["pooled_dice"] == pytest.approx(2 * 50 / (2 * 50 + 100 + 50))
    assert m["pixel_precision"] == pytest.approx(50 / 150) and m["pixel_recall"] == pytest.approx(0.5)
    assert m["face_recall"] == 1.0 and m["face_precision"] == 0.5 and m["n_faces"] == 1
    assert m["face_recall_medium"] == 1.0 and m["n_faces_small"] == 0



def test_average_precision_by_hand():
    """VOC all-point AP: a hit, a miss elsewhere, a duplicate (false positive), a hit; one face never found.
    Recall reaches 1/3 at precision 1, then 2/3 at precision 1/2: AP = 1/3 + 1/3 * 1/2."""
    truth = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), np.array([[0, 0, 10, 10]], np.float32)]
    a = np.array([[0, 0, 10, 10, 0.9], [0, 0, 10, 10, 0.7]], np.float32)
    b = np.array([[50, 50, 60, 60, 0.8], [0, 0, 10, 10, 0.6]], np.float32)
    assert average_precision([a, b], truth) == pytest.approx(0.5)
    perfect = [np.c_[t, np.full(len(t), 0.5)] for t in truth]
    assert average_precision(perfect, truth) == pytest.approx(1.0)
    assert average_precision([np.zeros((0, 5)), np.zeros((0, 5))], truth) == 0.0
    assert average_precision([b[:1], np.zeros((0, 5))], [np.zeros((0, 4)), np.zeros((0, 4))]) == 0.0  # nothing to find
    unknown = np.array([[0, 0, 10, 10]], np.float32)  # a face whose class is not known, found first
    ranked = [np.array([[0, 0, 10, 10, 0.9], [20, 20, 30, 30, 0.8]], np.float32)]
    assert average_precision(ranked, [truth[0][1:]]) == pytest.approx(0.5)
    assert average_precision(ranked, [truth[0][1:]], ignore=[unknown]) == pytest.approx(1.0)  # neither hit nor miss


def test_mask_wearing_report_by_hand():
    """Found faces with a known class fill the confusion matrix; a face without a class counts nowhere;
    per-class AP ranks by detection score x label score."""
    classes = ("incorrect", "with_mask", "without_mask")
    true_boxes = [np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], np.float32), np.array([[0, 0, 10, 10]], np.float32)]
    true_labels = [["with_mask", "without_mask", None], ["incorrect"]]
    pred_boxes = [np.array([[0, 0, 10, 10, 0.9], [20, 0, 30, 10, 0.8], [40, 0, 50, 10, 0.7], [60, 0, 70, 10, 0.5]], np.float32),
                  np.zeros((0, 5), np.float32)]
    pred_labels = [[("with_mask", 0.8), ("with_mask", 0.6), ("without_mask", 0.9), ("without_mask", 0.5)], []]
    report, confusion = mask_wearing_report(pred_boxes, pred_labels, true_boxes, true_labels, classes)
    np.testing.assert_array_equal(confusion, [[0, 0, 0], [0, 1, 0], [0, 1, 0]])  # rows true, columns predicted
    assert report["precision_with_mask"] == 0.5 and report["recall_with_mask"] == 1.0
    assert report["f1_with_mask"] == pytest.approx(2 / 3) and report["f1_without_mask"] == 0.0
    assert report["f1_incorrect"] == 0.0  # its one face was never found: no evidence either way
    assert report["macro_f1"] == pytest.approx((2 / 3 + 0) / 2) and report["label_accuracy"] == 0.5  # classes that occur
    assert report["ap50_with_mask"] == pytest.approx(1.0)  # its one true face ranked first; the mislabelled one after
    assert report["ap50_without_mask"] == 0.0 and report["ap50_incorrect"] == 0.0
    assert report["map50"] == pytest.approx(1 / 3)
    nothing, confusion = mask_wearing_report([np.zeros((0, 5))], [[]], true_boxes[:1], true_labels[:1], classes)
    assert nothing["macro_f1"] == 0.0 and nothing["map50"] == 0.0 and confusion.sum() == 0  # no face found
    assert "ap50_incorrect" not in nothing  # no test face of that class: no AP for it


def test_paired_bootstrap_interval_of_a_difference():
    """Both methods are scored on the same resampled items: a constant difference has no spread, a
    difference that is one item's luck has an interval reaching 0, and the draws are seeded."""
    a = np.linspace(0.2, 0.9, 40)

    def mean_difference(b):
        return lambda idx: {"d": float(b[idx].mean() - a[idx].mean())}

    d, lo, hi = paired_bootstrap(mean_difference(a + 0.1), 40, n_resamples=200)["d"]
    assert (d, lo, hi) == pytest.approx((0.1, 0.1, 0.1))  # paired: the items' own spread cancels
    lucky = a.copy()
    lucky[7] += 4.0  # one item decides the difference
    d, lo, hi = paired_bootstrap(mean_difference(lucky), 40, n_resamples=200)["d"]
    assert d == pytest.approx(0.1) and lo == 0.0 and lo < d < hi
    assert paired_bootstrap(mean_difference(lucky), 40, n_resamples=200, seed=3) == \
        paired_bootstrap(mean_difference(lucky), 40, n_resamples=200, seed=3)


def test_each_face_takes_the_class_most_probable_over_its_face_pixels():
    from pipeline.data.masks import label_faces

    probs = np.zeros((10, 20, 2), np.float32)
    probs[..., 0] = 1.0  # background pixels say class 0 everywhere ...
    probs[2:6, 2:6] = [0.2, 0.8]  # ... the first face's pixels say class 1
    mask = np.zeros((10, 20), np.uint8)
    mask[2:6, 2:6] = 1
    mask[2:6, 12:16] = 1
    boxes = np.array([[0, 0, 8, 8, 0.9], [10, 0, 18, 8, 0.7]], np.float32)
    (a, pa), (b, pb) = label_faces(probs, mask, boxes, ("with_mask", "without_mask"))
    assert (a, b) == ("without_mask", "with_mask") and pa == pytest.approx(0.8) and pb == pytest.approx(1.0)


def test_scale_boxes_keeps_centres_and_extra_columns_and_clips():
    boxes = np.array([[10, 20, 30, 60, 0.9]], np.float32)
    np.testing.assert_allclose(scale_boxes(boxes, 0.5), [[15, 30, 25, 50, 0.9]])
    np.testing.assert_allclose(scale_boxes(boxes, 2.0, 70, 35), [[0, 0, 35, 70, 0.9]])
    assert scale_boxes(np.zeros((0, 4)), 0.5).shape == (0, 4)


def test_found_cores_are_labelled_on_their_pixels_then_grown_back():
    prob = np.zeros((40, 40, 3), np.float32)
    prob[..., 2] = 1.0  # outside the faces the class channels say "b": it must not count
    prob[13:19, 2:8] = [0.9, 1.0, 0.0]   # the 0.6 core of the face [0, 11, 10, 21], class "a"
    prob[13:19, 12:18] = [0.8, 0.0, 1.0]  # the core of its neighbour [10, 11, 20, 21], class "b"
    mask, boxes, labels = find_faces(prob, 0.5, classes=("a", "b"), core_scale=0.6)
    np.testing.assert_allclose(boxes[:, :4], [[0, 11, 10, 21], [10, 11, 20, 21]], atol=1e-4)
    np.testing.assert_allclose(boxes[:, 4], [0.9, 0.8], atol=1e-6)
    assert [label for label, _ in labels] == ["a", "b"]
    np.testing.assert_array_equal(mask, boxes_to_mask(boxes[:, :4], 40, 40))  # the mask is the grown boxes
    same_mask, same_boxes, _ = find_faces(prob, 0.5, classes=("a", "b"))
    assert same_mask.sum() == 2 * 36 and same_boxes[0, 2] == 8  # core_scale 1: the map as it is


def test_centre_boxes_give_touching_faces_a_box_each_from_their_peaks_and_sizes():
    """model.centres: two faces whose masks merge still give two boxes, each sized by its own log size;
    a plateau of equal maxima is one face; peaks under the centre threshold are none; labels per box;
    a second peak inside a face gives a box that the overlap limit drops."""
    from pipeline.data.formats import Sample
    from pipeline.data.masks import centre_boxes
    from pipeline.evaluation.evaluate import choose_centre_threshold

    heat, sizes = np.zeros((40, 80), np.float32), np.zeros((40, 80, 2), np.float32)
    for cx, w, v in ((20, 20, 0.9), (40, 16, 0.6)):  # centres at pixels (20, 20) and (40, 20), 20 and 16 px wide
        yy, xx = np.mgrid[:40, :80]
        heat = np.maximum(heat, v * np.exp(-((xx - cx) ** 2 + (yy - 20) ** 2) / 8.0))
        sizes[15:25, cx - 5:cx + 5] = np.log([w / 80, 20 / 40])
    heat[5, 60:62] = 0.5  # a plateau of two equal maxima
    sizes[5, 60:62] = np.log([4 / 80, 4 / 40])
    boxes = centre_boxes(heat, sizes, 0.3)
    np.testing.assert_allclose(boxes[:, 4], [0.9, 0.6, 0.5])
    np.testing.assert_allclose(boxes[0, :4], [10.5, 10.5, 30.5, 30.5])
    np.testing.assert_allclose(boxes[1, :4], [32.5, 10.5, 48.5, 30.5])
    assert boxes[2, 2] - boxes[2, 0] == pytest.approx(4) and len(centre_boxes(heat, sizes, 0.95)) == 0
    prob = np.concatenate([np.zeros((40, 80, 1), np.float32), np.full((40, 80, 2), 0.5, np.float32),
                           heat[..., None], sizes], axis=-1)
    prob[10:31, 10:49, 0] = prob[5, 60:62, 0] = 1  # the two faces' masks merged, and the small one
    prob[..., 2] += 0.1
    prob[..., 1] -= 0.1
    mask, found, labels = find_faces(prob, 0.5, classes=("a", "b"), centres=(0.3, 1.0))
    assert len(find_faces(prob, 0.5, classes=("a", "b"))[1]) == 2  # the mask alone: the two faces are one component
    np.testing.assert_allclose(found, boxes)
    assert [label for label, _ in labels] == ["b", "b", "b"] and labels[0][1] == pytest.approx(0.6)
    val = Sample("v", np.zeros((40, 80, 3), np.uint8), boxes[:2, :4].copy(), [None, None])  # the plateau is no face
    # face F1 at 0.3: 0.8 (the plateau's box is false), 0.55: 1, 0.7: 2/3 (the first face alone); ties: the lowest
    assert choose_centre_threshold([prob], [val], np.array([0.3, 0.55, 0.58, 0.7]), 1.0, n_classes=2) == 0.55
    heat[20, 24] = 0.8  # a second peak of the first face, its box shifted 4 px: IoU 0.67 with the first's
    sizes[20, 24] = sizes[20, 20]
    assert len(centre_boxes(heat, sizes, 0.3)) == 4 and len(centre_boxes(heat, sizes, 0.3, overlap=0.7)) == 4
    np.testing.assert_allclose(centre_boxes(heat, sizes, 0.3, overlap=0.6), boxes)

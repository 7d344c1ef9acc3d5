"""Model inputs and the training dataset: augmentation, crops, targets; the data split."""

import numpy as np
import pandas as pd
import pytest

from pipeline.config import AugmentConfig
from pipeline.data.dataset import Examples, examples, make_dataset, to_arrays
from pipeline.data.formats import Sample
from pipeline.data.split import split_dataset


def test_augmented_dataset_is_seeded_and_keeps_masks_aligned():
    import tensorflow as tf

    x = np.zeros((4, 32, 32, 3), np.uint8)
    y = np.zeros((4, 32, 32, 1), np.float32)
    x[:, 4:12, 2:10] = 255  # the "face" is the bright patch
    y[:, 4:12, 2:10] = 1
    cfg = AugmentConfig(flip=True, zoom=(0.8, 1.6), brightness=0.0, contrast=0.0)
    data = Examples(lambda i: (tf.gather(x, i), tf.gather(y, i)), 4, 32)
    a = [b for b, _ in zip(make_dataset(data, 2, cfg, seed=3, crop_size=24)[0], range(4))]
    b = [b for b, _ in zip(make_dataset(data, 2, cfg, seed=3, crop_size=24)[0], range(4))]
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.shape == (2, 24, 24, 3) and ya.shape == (2, 24, 24, 1)
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())
        bright = xa.numpy()[..., 0] > 127
        face = ya.numpy()[..., 0] > 0.5
        assert (bright == face).mean() > 0.97  # image and mask moved together
    assert len({float(batch[1].numpy().sum()) for batch in a}) > 1  # crops differ


def test_streamed_examples_read_one_file_per_image_and_train_on_the_same_batches(tmp_path):
    """train.stream: the split's images stay on disk and each is read when its index comes up;
    the batches are exactly those of the split held in memory."""
    from pipeline.data.formats import StoredSample, load_samples, write_dataset
    from pipeline.data.masks import boxes_to_mask
    from pipeline.data.synthetic import generate

    samples = generate(6, 40, 72, 2, seed=4)
    for s in samples[:3]:
        s.labels = ["with_mask"] * len(s.boxes)
    write_dataset(((s, boxes_to_mask(s.boxes, s.height, s.width)) for s in samples), tmp_path / "data")
    stored = load_samples(tmp_path / "data", lazy=True)
    assert all(isinstance(s, StoredSample) and not hasattr(s, "_image") for s in stored)
    assert [(s.width, s.height) for s in stored] == [(s.width, s.height) for s in samples]
    classes = ("with_mask", "without_mask")
    cfg = AugmentConfig(flip=True, zoom=(0.8, 1.6), brightness=0.1, contrast=0.2)
    streamed = make_dataset(examples(stored, 32, classes, stream=True), 4, cfg, seed=1, crop_size=None)[0]
    held = make_dataset(examples(samples, 32, classes), 4, cfg, seed=1, crop_size=None)[0]
    for (xs, ys), (xh, yh), _ in zip(streamed, held, range(3)):
        assert xs.shape == (4, 32, 32, 3) and ys.shape == (4, 32, 32, 3)
        np.testing.assert_allclose(xs.numpy(), xh.numpy(), atol=1e-4)
        np.testing.assert_allclose(ys.numpy(), yh.numpy(), atol=1e-6)


def test_crops_are_the_draws_of_tensorflows_own_flip_and_crop():
    """The window is cut before the float copy and the flip (half the input pipeline's cost), yet each
    crop is exactly what stateless_random_flip_left_right + stateless_random_crop of the image give."""
    import tensorflow as tf

    from pipeline.data.dataset import _augment

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    mask = rng.random((40, 48, 1)).astype(np.float32)
    flips = 0
    for k in range(12):
        seed = tf.constant([k, 7], tf.int64)
        x, y = _augment(tf.constant(image), tf.constant(mask), seed, AugmentConfig(True, (0.7, 2.5), 0.0, 0.0), 24)
        seeds = tf.random.experimental.stateless_split(seed, 6)
        both = tf.image.stateless_random_flip_left_right(tf.concat([image.astype(np.float32), mask], -1), seeds[0])
        crop = tf.cast(tf.clip_by_value(tf.round(24 / tf.random.stateless_uniform([], seeds[1], 0.7, 2.5 + 1e-6)), 8.0, 40.0), tf.int32)
        reference = tf.image.resize(tf.image.stateless_random_crop(both, tf.stack([crop, crop, 4]), seeds[2]), [24, 24])
        np.testing.assert_array_equal(np.concatenate([x.numpy(), y.numpy()], -1), reference.numpy())
        flips += bool(tf.random.stateless_uniform([], seeds[0], 0, 1.0) < 0.5)
    assert 0 < flips < 12  # both branches were compared


def test_to_arrays_keeps_tiny_faces_as_fractional_targets():
    s = Sample("a", np.zeros((400, 400, 3), np.uint8), np.array([[10, 10, 12, 12]], np.float32))
    _, y = to_arrays([s], 32)
    assert y.shape == (1, 32, 32, 1) and 0 < y.sum() < 1


def test_split_is_seeded_stratified_and_disjoint(rng):
    n = 120
    images = pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "width": 100, "height": 100,
                           "n_faces": rng.integers(0, 9, n)})
    boxes = pd.DataFrame([{"image_id": r.image_id, "x1": 0, "y1": 0, "x2": s, "y2": s}
                          for r in images.itertuples() for s in rng.integers(3, 40, r.n_faces)])
    a = split_dataset(images, boxes, 0.15, 0.15, seed=1)
    assert a.equals(split_dataset(images, boxes, 0.15, 0.15, seed=1))
    assert not a.equals(split_dataset(images, boxes, 0.15, 0.15, seed=2))
    assert a["split"].value_counts().to_dict() == {"train": 84, "val": 18, "test": 18}
    faces = images.set_index("image_id").n_faces
    by_split = a.assign(f=a.image_id.map(faces)).groupby("split").f.mean()
    assert by_split.max() - by_split.min() < 1.5  # face counts balanced across splits
    assert split_dataset(images, boxes.assign(label=""), 0.15, 0.15, seed=1).equals(a)  # faces without classes: as before


def test_split_spreads_a_rare_class_over_every_split(rng):
    """Mask-wearing classes stratify too: 12 of 120 images hold the rare class; each split gets its share."""
    n = 120
    images = pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "width": 100, "height": 100, "n_faces": 2})
    labels = ["incorrect" if i % 10 == 0 else "with_mask" for i in range(n)]
    boxes = pd.DataFrame([{"image_id": f"i{i}", "x1": 0, "y1": 0, "x2": 20, "y2": 20, "label": label}
                          for i, rare in enumerate(labels) for label in (rare, "with_mask")])
    split = split_dataset(images, boxes, 0.15, 0.15, seed=3)
    rare = split[split.image_id.isin([f"i{i}" for i in range(0, n, 10)])]
    assert rare["split"].value_counts().to_dict() == {"train": 8, "val": 2, "test": 2}


def test_targets_carry_a_channel_per_class_for_faces_that_have_one():
    from pipeline.data.dataset import to_arrays
    from pipeline.data.formats import Sample

    sample = Sample("a", np.zeros((32, 32, 3), np.uint8), np.array([[0, 0, 16, 16], [16, 16, 32, 32]], np.float32),
                    ["with_mask", None])
    _, y = to_arrays([sample], 32, ("incorrect", "with_mask", "without_mask"))
    assert y.shape == (1, 32, 32, 4)
    assert y[0, ..., 0].sum() == 2 * 16 * 16  # both faces are faces
    assert y[0, ..., 2].sum() == 16 * 16 and y[0, :16, :16, 2].all()  # only the labelled one has a class
    assert y[0, ..., 1].sum() == 0 and y[0, ..., 3].sum() == 0
    assert to_arrays([sample], 32)[1].shape == (1, 32, 32, 1)  # a face-only model: the mask alone


def test_core_targets_are_the_boxes_shrunk_about_their_centres():
    from pipeline.data.dataset import to_arrays
    from pipeline.data.formats import Sample

    # Two touching 10 px faces: whole-box targets merge them, 0.6 cores leave a 4 px gap.
    sample = Sample("a", np.zeros((32, 32, 3), np.uint8), np.array([[0, 10, 10, 20], [10, 10, 20, 20]], np.float32),
                    ["with_mask", "without_mask"])
    _, whole = to_arrays([sample], 32, ("with_mask", "without_mask"))
    _, core = to_arrays([sample], 32, ("with_mask", "without_mask"), core_scale=0.6)
    assert whole[0, 15, :, 0].sum() == 20 and whole[0, 15, 9:11, 0].all()
    np.testing.assert_array_equal(np.flatnonzero(core[0, 15, :, 0]), [2, 3, 4, 5, 6, 7, 12, 13, 14, 15, 16, 17])
    assert core[0, ..., 1].sum() == core[0, ..., 2].sum() == 6 * 6  # each class channel holds its own core


def test_face_weights_give_every_face_of_an_image_the_same_total_weight():
    """train.face_weights: balanced weighs a 4 x 4 face's pixels 16 / 4 = 4x those of a 16 x 16 one ... both faces
    then weigh (16 + 256) / 2 = 136 in all, the background 1; sqrt takes the square roots; the weight channel
    comes last and survives augmentation (bilinear: no value outside the weights' own range)."""
    sample = Sample("a", np.zeros((64, 64, 3), np.uint8), np.array([[0, 0, 16, 16], [40, 40, 44, 44]], np.float32),
                    ["with_mask", None])
    _, y = to_arrays([sample], 32, ("with_mask",), face_weights="balanced")  # model pixels: 8 x 8 and 2 x 2
    assert y.shape == (1, 32, 32, 3)
    weight = y[0, ..., 2]
    assert weight[:8, :8] == pytest.approx(np.full((8, 8), 34 / 64)) and weight[20:22, 20:22] == pytest.approx(np.full((2, 2), 34 / 4))
    assert weight[:8, :8].sum() == pytest.approx(weight[20:22, 20:22].sum()) and weight[12, 12] == 1
    sqrt = to_arrays([sample], 32, face_weights="sqrt")[1][0, ..., 1]
    assert sqrt[0, 0] == pytest.approx(np.sqrt(34 / 64)) and sqrt[20, 20] == pytest.approx(np.sqrt(34 / 4))
    assert np.array_equal(y[..., :2], to_arrays([sample], 32, ("with_mask",))[1])  # the targets are unchanged
    # A box inside another keeps its own (larger) weight; a face under one model pixel weighs as one pixel.
    nested = Sample("b", np.zeros((32, 32, 3), np.uint8), np.array([[0, 0, 16, 16], [4, 4, 8, 8], [30, 30, 30.5, 30.5]]), [None] * 3)
    w = to_arrays([nested], 32, face_weights="balanced")[1][0, ..., 1]
    mean = (256 + 16 + 1) / 3
    assert w[5, 5] == pytest.approx(mean / 16) and w[0, 0] == pytest.approx(mean / 256) and w[30, 30] == pytest.approx(mean)
    data = examples([sample], 32, ("with_mask",), face_weights="balanced")
    batch = next(iter(make_dataset(data, 1, AugmentConfig(flip=True, zoom=(1.0, 1.5), brightness=0, contrast=0), seed=0)[0]))
    assert batch[1].shape == (1, 32, 32, 3) and float(batch[1][..., 2].numpy().max()) > 1
    assert float(batch[1][..., 2].numpy().min()) >= 34 / 64 - 1e-6


def test_centre_targets_peak_at_each_face_and_hold_its_log_size_over_its_core():
    """model.centres: heatmap 1 at a face's centre pixel, sizes over its core as log fractions of the image, a
    smaller face keeping its own where they overlap; a zoomed crop shifts the sizes by log(side / crop)."""
    from pipeline.data.dataset import target_channels

    sample = Sample("a", np.zeros((64, 128, 3), np.uint8),
                    np.array([[8, 8, 40, 40], [30, 30, 34, 38], [100, 40, 124, 56]], np.float32), [None, "with_mask", None])
    _, y = to_arrays([sample], 64, ("with_mask",), core_scale=0.8, centres=True, face_weights="sqrt")
    assert y.shape == (1, 64, 64, target_channels(1, True, "sqrt").total) == (1, 64, 64, 6)
    heat, log_w, log_h = y[0, ..., 2], y[0, ..., 3], y[0, ..., 4]
    # model pixels: x halves, y stays; each face's peak is the pixel that holds its centre: (12, 24), (56, 48)
    assert heat[24, 12] == heat[48, 56] == heat.max() == 1 and heat[0, 63] == 0
    assert heat[24, 13] == pytest.approx(np.exp(-1 / (2 * (16 / 12) ** 2)), rel=1e-5)  # sigma: a twelfth of 16 px
    assert np.sum(heat == 1) == 3
    assert np.exp(log_w[24, 12]) == pytest.approx(32 / 128) and np.exp(log_h[24, 12]) == pytest.approx(32 / 64)
    assert np.exp(log_w[34, 16]) == pytest.approx(4 / 128) and np.exp(log_h[34, 16]) == pytest.approx(8 / 64)  # overlap
    assert log_w[60, 60] == 0 and y[0, ..., 5].min() > 0  # no size outside faces; the weights come last
    data = examples([sample], 64, ("with_mask",), core_scale=0.8, centres=True)
    assert data.log_sizes == (3, 4)
    batch = next(iter(make_dataset(data, 1, AugmentConfig(flip=False, zoom=(2.0, 2.0), brightness=0, contrast=0), 0, 64)[0]))
    sizes = batch[1].numpy()[0, ..., 3:5]
    inside = (batch[1].numpy()[0, ..., 0] >= 0.5) & ~np.isclose(sizes, np.log(2.0)).all(-1)  # an edge pixel: no size
    assert inside.any()
    found = np.unique(np.round(sizes[inside] - np.log(2.0), 4), axis=0)  # a 32 px crop of the 64 px map, zoomed x2
    expected = np.round(np.log([[32 / 128, 32 / 64], [4 / 128, 8 / 64], [24 / 128, 16 / 64]]), 4)
    assert all(any(np.allclose(f, e, atol=1e-3) for e in expected) for f in found)
    # Training crops (train.crop_size) unzoomed: a face keeps its pixels, so its target keeps its value; the
    # model, served the whole image at model.input_size, reads it as a fraction of the image.
    batch = next(iter(make_dataset(data, 1, AugmentConfig(flip=False, zoom=(1.0, 1.0), brightness=0, contrast=0), 0, 32)[0]))
    sizes = batch[1].numpy()[0, ..., 3:5]
    inside = (batch[1].numpy()[0, ..., 0] >= 0.5) & (sizes != 0).all(-1)  # a core's edge pixel may hold no size
    assert inside.any() and all(any(np.allclose(f, e, atol=1e-3) for e in expected)
                                for f in np.unique(np.round(sizes[inside], 4), axis=0))


def test_a_sources_repeat_lists_its_images_that_often_and_holds_each_once():
    """`data.sources[k].repeat` weighs a small source up against a large one in every epoch: its
    images come that many times, each still held once in memory, giving the very same examples."""
    from pipeline.config import ConfigError, DataConfig, SourceConfig
    from pipeline.data.sources import weigh_samples
    from pipeline.data.synthetic import generate

    samples = generate(5, 40, 72, 2, seed=4)
    for k, s in enumerate(samples):
        s.image_id = f"s{int(k >= 2)}-{k}"
    cfg = DataConfig(sources=(SourceConfig("voc", "scenes"), SourceConfig("yolo", "wider", repeat=3)), labels={}, synthetic=None)
    train = weigh_samples(samples, cfg)
    assert [s.image_id for s in train] == ["s0-0", "s0-1"] + [f"s1-{k}" for k in (2, 3, 4) for _ in range(3)]
    data = examples(train, 32)
    assert data.n == 11
    for i, s in enumerate(train):
        x, y = data.load(i)
        want_x, want_y = to_arrays([s], 32)
        np.testing.assert_array_equal(x.numpy(), want_x[0])
        np.testing.assert_array_equal(y.numpy(), want_y[0])
    single = DataConfig(sources=(SourceConfig("yolo", "wider", repeat=2),), labels={}, synthetic=None)
    assert len(weigh_samples(samples, single)) == 10
    assert weigh_samples(samples, DataConfig(sources=cfg.sources[:1], labels={}, synthetic=None)) is samples
    samples[0].image_id = "s2-0"
    with pytest.raises(ValueError, match="'s2-0' names none of the 2 sources"):
        weigh_samples(samples, cfg)
    with pytest.raises(ConfigError, match="data.sources: repeat must be 1 or more, got 0"):
        SourceConfig("yolo", "wider", repeat=0)


def test_class_repeat_lists_images_holding_a_rare_class_that_often_times_their_sources_repeat():
    """`data.class_repeat` shows the images holding a rare class's faces more often per epoch (their
    largest class's count, times the source's repeat); images of other classes or without labels once."""
    from pipeline.config import ConfigError, DataConfig, SourceConfig
    from pipeline.data.sources import weigh_samples
    from pipeline.data.synthetic import generate

    samples = generate(4, 40, 72, 1, seed=4)
    for s, image_id, labels in zip(samples, ["s0-a", "s0-b", "s0-c", "s1-d"],
                                   [["with_mask", "incorrect"], ["with_mask"], ["without_mask"], [None]]):
        s.image_id, s.labels, s.boxes = image_id, labels, [(1, 1, 9, 9)] * len(labels)
    labels = {"with_mask": "with_mask", "without_mask": "without_mask", "mask_weared_incorrect": "incorrect"}
    cfg = DataConfig(sources=(SourceConfig("voc", "scenes"), SourceConfig("yolo", "wider", repeat=2)), labels=labels,
                     synthetic=None, class_repeat={"incorrect": 3, "without_mask": 2})
    assert [s.image_id for s in weigh_samples(samples, cfg)] == ["s0-a"] * 3 + ["s0-b"] + ["s0-c"] * 2 + ["s1-d"] * 2
    with pytest.raises(ConfigError, match=r"data.class_repeat: 'incorect' is none of the classes data.labels makes "
                                          r"\(incorrect, with_mask, without_mask\)"):
        DataConfig(sources=cfg.sources, labels=labels, synthetic=None, class_repeat={"incorect": 3})
    with pytest.raises(ConfigError, match="data.class_repeat: incorrect: must be 1 or more, got 0"):
        DataConfig(sources=cfg.sources, labels=labels, synthetic=None, class_repeat={"incorrect": 0})
    with pytest.raises(ConfigError, match="none: faces only"):
        DataConfig(sources=cfg.sources, labels={}, synthetic=None, class_repeat={"incorrect": 2})


def test_val_images_trained_on_are_repeated_as_their_sources_train_images():
    """With `train.use_val` the val split joins an epoch before the repeats: a val image of a source
    with `repeat: 2` comes twice, as that source's train images do (not once, after them)."""
    from dataclasses import replace

    from pipeline.config import DataConfig, SourceConfig
    from pipeline.data.synthetic import generate
    from pipeline.model.training import training_images
    from tests.conftest import PARAMS

    train, val = generate(3, 40, 72, 1, seed=4), generate(2, 40, 72, 1, seed=5)
    for s, image_id in zip(train + val, ["s0-a", "s1-b", "s1-c", "s0-d", "s1-e"]):
        s.image_id = image_id
    data = DataConfig(sources=(SourceConfig("voc", "scenes"), SourceConfig("yolo", "wider", repeat=2)), labels={},
                      synthetic=None)
    ids = [s.image_id for s in training_images(replace(PARAMS.train, use_val=True, patience=0), train, val, data)]
    assert ids == ["s0-a"] + ["s1-b"] * 2 + ["s1-c"] * 2 + ["s0-d"] + ["s1-e"] * 2
    assert [s.image_id for s in training_images(replace(PARAMS.train, use_val=False), train, val, data)] == ids[:5]

"""The ONNX export: same maps as Keras on any size and batch, its serving settings inside, parity enforced."""

import dataclasses

import numpy as np
import pytest

from pipeline.config import ServingConfig
from pipeline.data.formats import fingerprint
from pipeline.data.synthetic import generate
from pipeline.evaluation.evaluate import evaluate
from pipeline.model.inference import predict_probs
from pipeline.model.network import build_unet
from pipeline.serving.onnx_model import OnnxModel, ParityError, export_onnx, parity
from tests.conftest import LIMITS

CONFIG = ServingConfig(input_size=64, tta_sizes=(64, 96), flip_tta=True, separate_faces=False, threshold=0.5,
                       threshold_ratio=0.0, min_area=2, test_fingerprint="abc", test_dice=0.5, limits=LIMITS, caveat="",
                       classes=("incorrect", "with_mask", "without_mask"), engine="onnx")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(0)
    model = build_unet("mobilenet", 0.25, None, "conv", (16, 16, 8, 8), n_classes=3)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model, path, CONFIG)
    return model, path


def test_onnx_predicts_what_keras_predicts_at_any_size_and_batch(exported):
    model, path = exported
    onnx = OnnxModel(path, threads=1)
    for shape in [(1, 64, 64, 3), (3, 96, 160, 3)]:
        x = np.random.default_rng(1).uniform(0, 255, shape).astype(np.float32)
        ours, ref = onnx.predict_on_batch(x), np.asarray(model.predict_on_batch(x))
        assert ours.shape == ref.shape == (*shape[:3], 4)
        np.testing.assert_allclose(ours, ref, atol=1e-4)
    assert not list(path.parent.glob(".*partial*"))  # written beside, then renamed


def test_every_upsampling_is_one_resize_with_constant_scales(exported):
    """What makes the file fast: ONNX Runtime keeps a Resize with constant scales in its blocked layout; the
    converter's own forms (Tile chains, a transposed convolution) leave it."""
    import onnx

    graph = onnx.load(str(exported[1])).graph
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    resizes = [n for n in graph.node if n.op_type == "Resize"]
    assert len(resizes) == 6  # four decoder steps, the face and the class maps
    for node in resizes:
        assert len(node.input) == 3 and constants[node.input[2]].tolist() == [1, 1, 2, 2]
    assert not {"Tile", "ConvTranspose"} & {n.op_type for n in graph.node}


def test_the_file_carries_its_serving_settings(exported, tmp_path):
    _, path = exported
    assert OnnxModel(path).serving_config(str(path)) == CONFIG
    bare = tmp_path / "bare.onnx"
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(bare))
    with pytest.raises(ValueError, match="bare.onnx: no serving settings"):
        OnnxModel(bare).serving_config(str(bare))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.onnx: not a loadable ONNX model"):
        OnnxModel(tmp_path / "junk.onnx")


def test_parity_checks_onnx_against_the_evaluated_figures_and_fails_on_another_model(exported):
    model, path = exported
    samples = generate(4, 64, 96, 2, seed=3)
    probs = predict_probs(model, [s.image for s in samples], CONFIG.tta_sizes, flip=True)
    threshold = float(np.median(np.concatenate([p[..., 0].ravel() for p in probs])))  # masks of half the pixels
    measured, _ = evaluate(probs, samples, dataclasses.replace(CONFIG, threshold=threshold).decoding)  # as evaluate measured
    config = dataclasses.replace(CONFIG, threshold=threshold, test_fingerprint=fingerprint(samples), test_dice=measured["dice"],
                                 test_map50=measured["map50"])
    report = parity(model, OnnxModel(path), samples, config, tolerance=0.005, n_compared=2)
    assert report["dice_difference"] <= 1e-6 and report["max_prob_difference"] < 1e-4
    assert report["n_images"] == 4 and report["n_compared"] == 2
    assert 0 < report["onnx_dice"] < 1 and report["onnx_map50"] == pytest.approx(report["keras_map50"])
    with pytest.raises(ValueError, match="not the test split"):
        parity(model, OnnxModel(path), samples[:3], config, tolerance=0.005, n_compared=2)
    import keras

    keras.utils.set_random_seed(1)
    other = build_unet("mobilenet", 0.25, None, "conv", (16, 16, 8, 8), n_classes=3)
    with pytest.raises(ParityError, match="over export.parity_tolerance 0.0"):
        parity(model, other, samples, config, tolerance=0.0, n_compared=2)


def test_an_export_whose_output_shape_differs_from_keras_is_refused_and_not_written(exported, tmp_path):
    """The fault seen twice on busy cores: the converted output gained a leading axis. A stand-in whose Keras
    answer has that axis (the converter cannot be made to do it on purpose) is converted three times, then
    refused, and nothing is written."""
    model, _ = exported

    class Reshaped:
        conversions = 0

        def predict_on_batch(self, x):
            return np.asarray(model.predict_on_batch(x))[None]

        def export(self, *args, **kwargs):
            Reshaped.conversions += 1
            return model.export(*args, **kwargs)

    with pytest.raises(ParityError, match=r"answers a batch of shape \(2, 64, 64, 3\) with shape \(2, 64, 64, 4\), the "
                       r"Keras model with \(1, 2, 64, 64, 4\) \(3 conversions\)"):
        export_onnx(Reshaped(), tmp_path / "model.onnx", CONFIG)
    assert Reshaped.conversions == 3 and list(tmp_path.iterdir()) == []


def test_a_conversion_that_gains_an_axis_once_is_converted_again(exported, tmp_path, caplog):
    """The fault as it happens: the first conversion answers (1, 2, 64, 64, 4), the next one is right. The
    file written is the right one, with its settings, and the retry is logged."""
    import keras

    model, _ = exported
    inputs = keras.Input((None, None, 3))
    wrong = keras.Model(inputs, keras.layers.Lambda(lambda t: keras.ops.expand_dims(t, 0))(model(inputs)))
    wrong.predict_on_batch(np.zeros((2, 64, 64, 3), np.float32))

    class Flaky:
        conversions = 0

        def predict_on_batch(self, x):
            return model.predict_on_batch(x)

        def export(self, *args, **kwargs):
            Flaky.conversions += 1
            return (wrong if Flaky.conversions == 1 else model).export(*args, **kwargs)

    onnx = export_onnx(Flaky(), tmp_path / "model.onnx", CONFIG)
    assert Flaky.conversions == 2 and "converting again (attempt 2 of 3)" in caplog.text
    assert list(tmp_path.iterdir()) == [tmp_path / "model.onnx"]
    assert onnx.predict_on_batch(np.zeros((1, 64, 64, 3), np.float32)).shape == (1, 64, 64, 4)
    assert OnnxModel(tmp_path / "model.onnx").serving_config("test") == CONFIG

"""The Keras model as ONNX: faster on CPU (ONNX Runtime), runnable without TensorFlow or MLflow,
with its serving settings inside, and the parity check that lets it serve what was evaluated."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np

from pipeline.config import ServingConfig
from pipeline.data.formats import Sample, fingerprint
from pipeline.evaluation.evaluate import evaluate
from pipeline.model.inference import predict_probs

CONFIG_KEY = "facemask.serving_config"  # ONNX metadata: the ServingConfig as JSON


class ParityError(RuntimeError):
    """The exported model does not predict what the evaluated Keras model predicts."""


def export_onnx(model, path: str | Path, config: ServingConfig, attempts: int = 3) -> OnnxModel:
    """Write `model` as ONNX (any batch size and image side) with `config` in its metadata; return its
    session (`config.threads`), already checked to answer in Keras' shape.

    The x2 upsampling layers are written as ONNX Resize nodes with constant scales (`_resize_friendly`,
    `_constant_scales`): ONNX Runtime then keeps the decoder in its blocked layout, and the network answers
    about a fifth faster than with the converter's Tile and Transpose chains; the maps are the same.

    Keras converts through tf2onnx. Rarely (a `make run` and a test fixture, both on busy cores; never in
    dozens of conversions of the same model alone) a conversion's output gains a leading axis of 1: it is
    logged and converted again, up to `attempts` times, then refused. The file appears only when complete
    (written beside, then renamed), and the stage's parity check still compares its answers with Keras'.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    probe = np.zeros((2, 64, 64, 3), np.float32)
    expected = np.asarray(model.predict_on_batch(probe)).shape  # Keras exports only a model that has run
    converted = _resize_friendly(model)
    if converted is not model:
        converted.predict_on_batch(probe)
    partial = path.with_name(f".{path.name}.partial")
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)  # its conversion steps, at INFO
    for attempt in range(1, attempts + 1):
        with warnings.catch_warnings():  # the converter's probe for numpy's removed `np.object`
            warnings.simplefilter("ignore", FutureWarning)
            converted.export(str(partial), format="onnx", verbose=False)
        proto = onnx.load(str(partial))
        _constant_scales(proto.graph)
        entry = proto.metadata_props.add()
        entry.key, entry.value = CONFIG_KEY, json.dumps(config.to_dict())
        onnx.save(proto, str(partial))
        exported = OnnxModel(partial, config.threads)
        got = exported.predict_on_batch(probe).shape
        if got == expected:
            break
        partial.unlink()
        message = (f"the ONNX export answers a batch of shape {probe.shape} with shape {got}, the Keras model "
                   f"with {expected}")
        if attempt == attempts:
            raise ParityError(f"{message} ({attempts} conversions): the conversion changed the output; run the "
                              f"export stage again, or serve with export.engine=keras, and report the versions "
                              f"of tf2onnx and onnxruntime")
        logging.getLogger(__name__).warning("%s: converting again (attempt %d of %d)", message, attempt + 1, attempts)
    partial.replace(path)
    exported.path = path  # the session holds the model; the file now has its name
    return exported


def _resize_friendly(model):
    """`model` with each x2 upsampling layer replaced by a TensorFlow resize (half-pixel centres, the same map),
    which the converter writes as one ONNX Resize node where UpSampling2D gives Tile chains and
    BilinearUpsample2x a transposed convolution. Every other layer, and so every weight, is shared, not copied.
    Anything but a Keras model is returned as it is."""
    import keras
    import tensorflow as tf

    from pipeline.model.network import BilinearUpsample2x

    class Resize2x(keras.layers.Layer):
        def __init__(self, interpolation: str, **kwargs):
            super().__init__(**kwargs)
            self.interpolation = interpolation

        def call(self, x):
            return tf.image.resize(x, tf.shape(x)[1:3] * 2, method=self.interpolation)

    if not isinstance(model, keras.Model):
        return model

    def swap(layer):
        if isinstance(layer, keras.layers.UpSampling2D) and tuple(layer.size) == (2, 2):
            return Resize2x(layer.interpolation, name=layer.name, dtype=layer.dtype_policy)
        if isinstance(layer, BilinearUpsample2x):  # half-pixel bilinear with edges clamped: what it computes
            return Resize2x("bilinear", name=layer.name, dtype=layer.dtype_policy)
        return layer

    return keras.models.clone_model(model, clone_function=swap, recursive=True)


def _constant_scales(graph) -> None:
    """Give every Resize node the constant scales (1, 1, 2, 2) in place of the sizes the converter computes
    from the input's shape (every Resize here comes from `_resize_friendly`). Only constant scales let ONNX Runtime
    run it in its blocked layout. Nearest becomes `asymmetric` + `floor`: for exactly x2, each output pixel
    reads the input pixel it read before."""
    from onnx import numpy_helper

    name = "facemask_resize_x2_scales"
    graph.initializer.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), name))
    for node in graph.node:
        if node.op_type != "Resize":
            continue
        del node.input[3:]
        node.input[2] = name
        attributes = {a.name: a for a in node.attribute}
        if attributes["mode"].s == b"nearest":
            attributes["coordinate_transformation_mode"].s, attributes["nearest_mode"].s = b"asymmetric", b"floor"


class OnnxModel:
    """An ONNX Runtime session with Keras' `predict_on_batch`, so the inference code runs either."""

    def __init__(self, path: str | Path, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default, one per physical core
        options.inter_op_num_threads = 1  # one graph branch at a time: the U-Net is a chain
        # idle threads sleep: spinning ones take the cores a served request needs for decoding and postprocessing
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own types for missing and malformed files
            raise ValueError(f"{path}: not a loadable ONNX model ({err})") from None
        self.path = Path(path)
        self.input = self.session.get_inputs()[0].name
        self.metadata = self.session.get_modelmeta().custom_metadata_map

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.asarray(x, np.float32)})[0]

    def serving_config(self, where: str) -> ServingConfig:
        """The settings export stored in the file: thresholds, input size, classes, limits."""
        if CONFIG_KEY not in self.metadata:
            raise ValueError(f"{where}: no serving settings in this ONNX file; use one written by the export stage")
        return ServingConfig.from_dict(json.loads(self.metadata[CONFIG_KEY]), where)


def parity(reference, exported, samples: list[Sample], config: ServingConfig, tolerance: float,
           n_compared: int) -> dict:
    """The exported model's test dice (and mAP@0.5 for a labelling model) with the served settings, against
    what evaluate measured for `reference` on the same images (`config.test_dice`), and the largest
    probability difference of the two on the first `n_compared` images. ParityError if the dice differ
    by more than `tolerance`."""
    if fingerprint(samples) != config.test_fingerprint:
        raise ValueError("parity: these samples are not the test split the serving config was evaluated on")
    images = [s.image for s in samples]
    maps = predict_probs(exported, images, config.tta_sizes, flip=config.flip_tta)
    metrics, _ = evaluate(maps, samples, config.decoding)
    report = {"keras_dice": config.test_dice, "onnx_dice": metrics["dice"]}
    if config.classes:
        report.update(keras_map50=config.test_map50, onnx_map50=metrics["map50"])
    report["dice_difference"] = abs(report["onnx_dice"] - report["keras_dice"])
    compared = predict_probs(reference, images[:n_compared], config.tta_sizes, flip=config.flip_tta)
    report["max_prob_difference"] = float(max(np.abs(a - b).max() for a, b in zip(compared, maps)))
    report.update(n_images=len(samples), n_compared=len(compared), tolerance=tolerance)
    if report["dice_difference"] > tolerance:
        raise ParityError(f"the ONNX model's test dice {report['onnx_dice']:.4f} differs from the Keras model's "
                          f"{report['keras_dice']:.4f} by {report['dice_difference']:.4f}, over export.parity_tolerance "
                          f"{tolerance} (largest probability difference {report['max_prob_difference']:.4g}): the "
                          f"conversion changed the model; serve it with export.engine=keras and report the versions "
                          f"of tf2onnx and onnxruntime")
    return report

"""Probability maps with test-time augmentation, and the evaluation's threshold choice."""

from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import PARAMS


class _SizeProbe:
    """A stand-in model whose 'probability' is the input side / 1000: which sizes were asked."""

    def predict_on_batch(self, x):
        return np.full((*x.shape[:3], 1), x.shape[1] / 1000, np.float32) + x[..., :1] / 1e6


def test_tta_averages_every_size_and_the_mirror_at_the_image_resolution():
    from pipeline.model.inference import predict_probs, tta_sizes

    assert tta_sizes(416, [1.0, 1.5]) == [416, 640] and tta_sizes(64, [0.1]) == [32]
    with pytest.raises(ValueError, match="tta_scales"):
        tta_sizes(416, [])
    image = np.zeros((30, 50, 3), np.uint8)
    image[:, :10] = 255  # left edge bright: the mirrored prediction must be flipped back
    (plain,) = predict_probs(_SizeProbe(), [image], [64])
    (multi,) = predict_probs(_SizeProbe(), [image], [64, 128])
    (mirrored,) = predict_probs(_SizeProbe(), [image], [64], flip=True)
    assert plain.shape == multi.shape == mirrored.shape == (30, 50)
    assert np.allclose(multi[15, 25], (0.064 + 0.128) / 2, atol=1e-6)
    assert np.allclose(mirrored, plain, atol=1e-6)  # flip-back restores the bright left edge
    assert plain[15, 2] > plain[15, 40]


def test_evaluate_uses_a_fixed_threshold_instead_of_vals_choice():
    from pipeline.data.synthetic import generate
    from pipeline.evaluation.evaluate import evaluate_model

    val, test = generate(6, 64, 64, 2, seed=1)[:3], generate(6, 64, 64, 2, seed=2)[3:]
    model64 = replace(PARAMS.model, input_size=64)
    cfg = replace(PARAMS.evaluate, flip_tta=False, tta_scales=(1.0,), min_area=0, threshold_grid=(0.05, 0.1, 0.01),
                  separate_faces=False, threshold_ratio=0.0)
    chosen, table, _ = evaluate_model(_SizeProbe(), val, test, replace(cfg, threshold=None), model64)
    assert chosen["threshold"] == table.loc[table["dice"].idxmax(), "threshold"] and chosen["threshold"] < 0.064
    fixed, same_table, _ = evaluate_model(_SizeProbe(), val, test, replace(cfg, threshold=0.5), model64)
    assert fixed["threshold"] == 0.5 and same_table.equals(table)
    # Probabilities are ~0.064: nothing passes 0.5, which scores 1 only on the images without faces.
    assert fixed["dice"] == pytest.approx(np.mean([len(s.boxes) == 0 for s in test])) != chosen["dice"]


def test_confusion_rows_give_one_row_per_labelled_face_for_dvc_plots():
    from pipeline.evaluation.evaluate import confusion_rows

    rows = confusion_rows([[2, 0], [1, 3]], ("with_mask", "without_mask"))
    assert list(rows.columns) == ["actual", "predicted"] and len(rows) == 6
    assert rows.value_counts().to_dict() == {("with_mask", "with_mask"): 2, ("without_mask", "with_mask"): 1,
                                             ("without_mask", "without_mask"): 3}
    assert confusion_rows([], ()).empty  # a face-only model: the header alone


def test_a_model_with_centres_ranks_every_peak_for_ap_and_serves_its_threshold_for_the_rest():
    """evaluate.centre_rank_threshold: AP counts the faint peak the served threshold leaves out (as detection
    benchmarks rank all boxes); recall and precision stay the served threshold's; a serving config decodes alike."""
    from pipeline.config import Decoding, ServingConfig
    from pipeline.data.formats import Sample
    from pipeline.evaluation.evaluate import evaluate

    sample = Sample("a", np.zeros((40, 80, 3), np.uint8), np.array([[10, 10, 30, 30], [50, 10, 70, 30]], np.float32), [None] * 2)
    prob = np.zeros((40, 80, 4), np.float32)
    prob[10:30, 10:30, 0] = prob[10:30, 50:70, 0] = 1
    prob[20, 20, 1], prob[20, 60, 1] = 0.9, 0.2  # a sure face and a faint one
    prob[..., 2:] = np.log([20 / 80, 20 / 40])
    served, _ = evaluate([prob], [sample], Decoding(0.5, centres=(0.5, 0.4)))
    ranked, _ = evaluate([prob], [sample], Decoding(0.5, centres=(0.5, 0.4), rank_threshold=0.1))
    assert served["face_recall"] == ranked["face_recall"] == 0.5 and served["ap50"] == pytest.approx(0.5)
    assert ranked["ap50"] == pytest.approx(1.0)
    config = ServingConfig(input_size=64, tta_sizes=(64,), flip_tta=False, separate_faces=False, threshold=0.5, threshold_ratio=0.0,
                           min_area=0, test_fingerprint="x", test_dice=0.0, limits=PARAMS.export.limits, caveat="",
                           centres=True, centre_threshold=0.5, centre_overlap=0.4, centre_rank_threshold=0.1)
    assert config.decoding == Decoding(0.5, centres=(0.5, 0.4), rank_threshold=0.1)
    assert evaluate([prob], [sample], config.decoding)[0] == ranked

"""Promotion in a real SQLite registry: which version holds `champion`, and why."""

from dataclasses import replace

from mlflow import MlflowClient

from pipeline.config import ServingConfig
from pipeline.serving.registry import promote, version_tags
from tests.conftest import LIMITS

NAME = "face-segmenter"
FACES = ServingConfig(input_size=64, tta_sizes=(64,), flip_tta=False, separate_faces=False, threshold=0.5,
                      threshold_ratio=0.0, min_area=4, test_fingerprint="fp", test_dice=0.6, limits=LIMITS, caveat="")
LABELS = replace(FACES, classes=("incorrect", "with_mask", "without_mask"), test_fingerprint="fp-labelled", test_map50=0.5)


def register(client: MlflowClient, config: ServingConfig):
    return client.create_model_version(NAME, "file:///nowhere", tags=version_tags(config))


def test_labelling_models_are_promoted_by_map_and_never_compared_with_face_only_ones(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model(NAME)
    assert LABELS.primary_metric == "test_map50" and FACES.primary_metric == "test_dice"
    first = register(client, LABELS)
    assert promote(client, NAME, first, LABELS.primary_metric)["alias"] == "champion"
    better_dice_worse_map = register(client, replace(LABELS, test_dice=0.9, test_map50=0.4))
    decision = promote(client, NAME, better_dice_worse_map, LABELS.primary_metric)
    assert decision == {"alias": "challenger", "reason": "test_map50 0.4000 does not beat champion v1 (0.5000)"}
    better_map = register(client, replace(LABELS, test_dice=0.1, test_map50=0.7))
    assert promote(client, NAME, better_map, LABELS.primary_metric)["alias"] == "champion"
    face_only = register(client, replace(FACES, test_fingerprint="fp-labelled", test_dice=0.99))  # same images
    decision = promote(client, NAME, face_only, FACES.primary_metric)
    assert decision == {"alias": "challenger",
                        "reason": "not compared: champion v3 is ranked by test_map50, this version by test_dice"}
    assert client.get_model_version_by_alias(NAME, "champion").version == better_map.version

"""Re-scoring the champion on the new model's test split: a champion of another image
size is fed the test images re-read from their sources, each held to the md5 and size
ingest recorded (sources.read_as_ingested), as normalize reads them."""

from __future__ import annotations

import pytest

from components.core.settings import DataConfig, EvaluateConfig
from components.core.tracking import pipeline_run
from components.data import tfrecords
from components.data.ingest import ingest
from components.data.normalize import normalize
from components.data.split import split
from components.registry.rescoring import score_champion_on_test_split
from tests.helpers import write_class_folder
from tests.helpers.models import log_keras_model

CHAMPION_SIZE = 48  # the champion's own preprocessing; the new model's test split is at 32 px


@pytest.fixture
def split_and_champion(tmp_path):
    """A 32 px test split of class-folder images, and a 48 px model registered as version 1."""
    import keras
    from mlflow.tracking import MlflowClient

    source = write_class_folder(tmp_path / "source", per_class=8, size=40)
    cfg = DataConfig(image_size=32, val_fraction=0.25, test_fraction=0.25)
    ingest(str(source), cfg, tmp_path / "ingested")
    split(tmp_path / "ingested", cfg, tmp_path / "split")
    normalize(tmp_path / "split", cfg, tmp_path / "normalized")
    classes = tfrecords.read_meta(tmp_path / "normalized")["classes"]
    model = keras.Sequential(
        [
            keras.Input((CHAMPION_SIZE, CHAMPION_SIZE, 3)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(len(classes), activation="softmax"),
        ]
    )
    model.save(tmp_path / "champion.keras")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = pipeline_run(uri, "rescoring", "champion", "kfp-champion")
    model_uri = log_keras_model(str(tmp_path / "champion.keras"), CHAMPION_SIZE, uri, run_id, classes)
    MlflowClient(uri, registry_uri=uri).create_registered_model("rescored")
    MlflowClient(uri, registry_uri=uri).create_model_version("rescored", model_uri, run_id=run_id)
    return tmp_path / "normalized", uri


def test_a_champion_of_another_size_is_scored_on_the_files_as_ingested(split_and_champion):
    normalized, uri = split_and_champion
    scored, problem = score_champion_on_test_split("models:/rescored/1", uri, normalized, EvaluateConfig())
    labels, uris = tfrecords.read_labels(tfrecords.shard_paths(normalized, "test"))
    assert problem == "" and scored.probs.shape == (len(uris), len(scored.metrics["classes"]))
    assert list(scored.y_true) == list(labels)


def test_a_test_image_changed_since_ingest_is_never_scored(split_and_champion):
    """Was: re-scoring re-read source files with read_bytes, no md5 or size check: a file
    swapped after ingest was scored as if it were the image the new model was scored on."""
    normalized, uri = split_and_champion
    _, uris = tfrecords.read_labels(tfrecords.shard_paths(normalized, "test"))
    changed = uris[0].removeprefix("file://")
    with open(changed, "ab") as f:
        f.write(b"appended after ingest")
    scored, problem = score_champion_on_test_split("models:/rescored/1", uri, normalized, EvaluateConfig())
    assert scored is None
    assert problem.startswith("test images unreadable for its preprocessing: ") and "ingest recorded" in problem

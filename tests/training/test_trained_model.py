"""A train output folder: what makes it a finished model, written so that a crash or a
full disk never leaves a folder that a later run takes for finished work; and what training
fits on validation travels with the model: files in the folder, read into LoadedModel,
logged to MLflow and read back from there, and used by predict."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from components.core import filenames
from components.core.settings import TrainConfig
from components.data import tfrecords
from components.training.checkpoints import progress_so_far
from components.training.train import train
from components.training.trained_model import HISTORY_FILE, save_finished
from tests.helpers.tiny_data import make_tiny_shards, tiny_config


def test_a_full_disk_leaves_no_history_marker_so_the_next_run_resumes_instead_of_reusing(small_disk):
    """Was: history.json (the "training finished" marker) written in place: cut short by
    ENOSPC, the next run said "training finished earlier" and failed on JSONDecodeError."""
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    out = small_disk(64)  # the model fits; a long history does not
    history = {"history": {"loss": [0.123456789] * 20_000}, "best_epoch": 0, "device": "cpu"}
    data = SimpleNamespace(meta={"classes": ["melanoma", "nevus"], "image_size": 32}, val_labels=[])
    with pytest.raises(OSError, match="No space left on device"):
        save_finished(model, data, TrainConfig(), out, "", "", history)
    assert not (out / HISTORY_FILE).exists()
    assert "finished" not in progress_so_far(out)
    assert [p.name for p in out.iterdir() if "partial" in p.name] == []


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("fitted")
    normalized = make_tiny_shards(root)
    cfg = tiny_config(model="seed_cnn", epochs=1, melanoma_flag="specificity", refer_coverage=0.75)
    train(normalized, None, cfg.train, root / "model")
    return normalized, root / "model"


def test_temperature_operating_points_and_referral_are_saved_and_loaded(trained):
    from components.scoring.inference import load_model

    _, folder = trained
    for name in filenames.FITTED_ON_VALIDATION[1:]:
        assert (folder / name).is_file(), name
    points = json.loads((folder / filenames.OPERATING_POINTS).read_text())
    assert points["flag"] == "specificity" and set(points["points"]) == {"sensitivity", "specificity"}
    loaded = load_model(str(folder))
    assert loaded.temperature == json.loads((folder / filenames.CALIBRATION).read_text())["temperature"] != 1.0
    assert loaded.melanoma_threshold == points["points"]["specificity"]["threshold"]
    assert loaded.refer_threshold == json.loads((folder / filenames.REFERRAL).read_text())["threshold"]
    probs = np.array([[0.1, 0.1, 0.7, 0.1], [0.7, 0.1, 0.1, 0.1]])  # melanoma is class 2 of the tiny set
    assert loaded.classes[2] == "melanoma"
    flags = loaded.melanoma_flags(probs)
    assert flags.tolist() == [0.7 >= loaded.melanoma_threshold, 0.1 >= loaded.melanoma_threshold]
    assert loaded.refer_flags(np.array([0.0, 10.0])).tolist() == [False, True]


def test_the_validation_split_keeps_the_configured_coverage(trained):
    from components.scoring.inference import load_model

    normalized, folder = trained
    loaded = load_model(str(folder))
    paths = tfrecords.shard_paths(normalized, "val")
    labels, _ = tfrecords.read_labels(paths)
    probs, views = loaded.predict_with_views(tfrecords.image_dataset(paths, 32, len(labels)), tta=True)
    kept = ~loaded.refer_flags(loaded.uncertainty(probs, views))
    assert kept.mean() == pytest.approx(0.75, abs=1 / len(labels))


def test_the_mlflow_logged_model_carries_them_and_predict_uses_them(trained, mlflow_server, tmp_path):
    from components.core import tracking
    from components.evaluation.predict import predict_files
    from components.scoring.inference import load_model
    from components.training.trained_model import log_trained_model

    _, folder = trained
    run_id = tracking.pipeline_run(mlflow_server, "fitted-test", "run", "", {})
    uri = log_trained_model(folder, mlflow_server, run_id)
    local, logged = load_model(str(folder)), load_model(uri, mlflow_server)
    for name in ("temperature", "melanoma_threshold", "refer_threshold", "decision_bias", "operating_points"):
        assert getattr(logged, name) == getattr(local, name), name

    from PIL import Image

    image = tmp_path / "a.png"
    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).save(image)
    row = predict_files(logged, [str(image)], tta=True)[0]
    assert isinstance(row["melanoma_flag"], bool) and isinstance(row["refer"], bool) and row["uncertainty"] >= 0

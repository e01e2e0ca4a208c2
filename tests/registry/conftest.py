"""Fixtures of the registry tests: models trained and logged once per module."""

from __future__ import annotations

import pytest

from components.core.tracking import pipeline_run
from components.data import tfrecords
from components.evaluation.evaluate import evaluate, load_scored
from components.training.train import train
from tests.helpers.models import log_keras_model
from tests.helpers.tiny_data import make_tiny_shards, tiny_config


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, mlflow_server) -> dict:
    """A trained model and an untrained one, both logged to one MLflow run each."""
    root = tmp_path_factory.mktemp("registry")
    normalized = make_tiny_shards(root)
    classes = tfrecords.read_meta(normalized)["classes"]
    out = {"normalized": normalized, "classes": classes}
    for name, epochs, lr in (("good", 3, 0.003), ("bad", 1, 1e-7)):
        cfg = tiny_config(epochs=epochs, learning_rate=lr)
        run_id = pipeline_run(mlflow_server, "registry-test", name, f"kfp-{name}-{root.name}")
        result = train(normalized, None, cfg.train, root / name)
        evaluate(result.model_path, normalized, cfg.evaluate, root / f"eval-{name}")
        scored = load_scored(root / f"eval-{name}")
        out[name] = {
            "uri": log_keras_model(result.model_path, 32, mlflow_server, run_id, classes),
            "scored": scored,
            "metrics": scored.metrics,
            "evaluation": str(root / f"eval-{name}"),
            "path": result.model_path,
        }
    return out


@pytest.fixture
def quick_mlflow_failures(monkeypatch):
    """The MLflow client gives up on a failing server at once instead of its 7 retries."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")

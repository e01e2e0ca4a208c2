"""`lesionpipe evaluate` scores as the pipeline's evaluate step does: with test-time
augmentation when the run config asks for it (from --config, or, without one, from the
pipeline run that logged the model), unless told otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from components.core.tracking import pipeline_run
from components.data import tfrecords
from components.scoring.inference import load_images, load_model
from components.training.train import train
from pipeline.cli import main
from tests.helpers import write_class_folder
from tests.helpers.models import log_keras_model
from tests.helpers.tiny_data import make_tiny_shards, tiny_config


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> dict:
    """A tiny model logged to an SQLite store by a run whose config has evaluate.tta true."""
    root = tmp_path_factory.mktemp("evaluate_cli")
    cfg = tiny_config(epochs=1).with_overrides(["evaluate.tta=true"])
    normalized = make_tiny_shards(root, cfg)
    result = train(normalized, None, cfg.train, root / "model")
    meta = tfrecords.read_meta(normalized)
    store = f"sqlite:///{root / 'mlflow.db'}"
    run_id = pipeline_run(store, "evaluate-cli", "evaluate-cli-run", "kfp-evaluate-cli", cfg.flat_params())
    uri = log_keras_model(result.model_path, meta["image_size"], store, run_id, meta["classes"])
    images = write_class_folder(root / "images", per_class=3, size=48, seed=5)
    return {"store": store, "uri": uri, "run_id": run_id, "images": images, "model": Path(result.model_path)}


def _evaluate(logged, tmp_path, *args) -> tuple[dict, np.ndarray, str]:
    out = tmp_path / "m.json"
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--model",
            logged["uri"],
            "--data",
            str(logged["images"]),
            "--out",
            str(out),
            "--tracking-uri",
            logged["store"],
            *args,
        ],
    )
    assert result.exit_code == 0, result.output
    probs = np.load(tmp_path / "m_report" / "predictions.npz")["probs"]
    return json.loads(out.read_text()), probs, result.output


def _expected(logged, tta: bool) -> np.ndarray:
    loaded = load_model(logged["uri"], logged["store"])
    uris = sorted(str(p) for p in Path(logged["images"]).rglob("*.jpg"))
    images, _ = load_images(uris, loaded.image_size, loaded.resize_mode)
    return loaded.predict(images, tta=tta), uris


def test_evaluate_without_config_uses_the_model_runs_tta(logged, tmp_path):
    assert load_model(logged["uri"], logged["store"]).run_id == logged["run_id"]
    metrics, probs, output = _evaluate(logged, tmp_path)
    assert metrics["tta"] is True
    assert f"evaluate settings of the model's run {logged['run_id']} (tta true)" in output
    with_tta, _ = _expected(logged, tta=True)
    without, _ = _expected(logged, tta=False)
    # Same images either way; the scores are the TTA ones (compared as sets of rows:
    # the CLI's order is ingest's).
    assert len(probs) == len(with_tta)
    np.testing.assert_allclose(np.sort(probs, axis=0), np.sort(with_tta, axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.sort(probs, axis=0), np.sort(without, axis=0), atol=1e-6)


def test_evaluate_is_told_otherwise_by_set_or_config(logged, tmp_path):
    metrics, _, _ = _evaluate(logged, tmp_path / "set", "--set", "evaluate.tta=false")
    assert metrics["tta"] is False
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"evaluate": {"tta": True}}))
    metrics, _, _ = _evaluate(logged, tmp_path / "config_true", "--config", str(config))
    assert metrics["tta"] is True
    config.write_text(yaml.safe_dump({"evaluate": {"tta": False}}))
    metrics, _, output = _evaluate(logged, tmp_path / "config_false", "--config", str(config))
    assert metrics["tta"] is False and "evaluate settings of the model's run" not in output


def test_evaluate_of_a_local_model_file_uses_the_defaults_or_config(logged, tmp_path):
    out = tmp_path / "m.json"
    result = CliRunner().invoke(
        main, ["evaluate", "--model", str(logged["model"]), "--data", str(logged["images"]), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["tta"] is False


def test_an_mlflow_model_trained_on_synthetic_data_is_flagged(logged, tmp_path):
    """The model's MLflow metadata carries the flag (the train step logs it from the data)."""
    run_id = pipeline_run(logged["store"], "evaluate-cli", "synthetic-run", "kfp-synthetic", {})
    uri = log_keras_model(
        str(logged["model"]),
        32,
        logged["store"],
        run_id,
        load_model(logged["uri"], logged["store"]).classes,
        synthetic=True,
    )
    assert load_model(uri, logged["store"]).synthetic is True
    assert load_model(logged["uri"], logged["store"]).synthetic is False
    out = tmp_path / "s.json"
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--model",
            uri,
            "--data",
            str(logged["images"]),
            "--out",
            str(out),
            "--tracking-uri",
            logged["store"],
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"WARNING: {uri} is a SYNTHETIC model" in result.output
    assert json.loads(out.read_text())["model_synthetic"] is True
    assert "SYNTHETIC model" in (tmp_path / "s_report" / "report.html").read_text()


def test_a_models_decision_offsets_travel_with_it_through_mlflow_to_evaluate_and_predict(logged, tmp_path):
    """Offsets in the model's MLflow metadata decide the predicted class in `lesionpipe
    evaluate` and `lesionpipe predict`; the probabilities and AUCs are the model's own."""
    import csv

    classes = load_model(logged["uri"], logged["store"]).classes
    forced = classes[1]
    offsets = {c: (30.0 if c == forced else -10.0) for c in classes}  # overrides any probability
    run_id = pipeline_run(logged["store"], "evaluate-cli", "offsets-run", "kfp-offsets", {"evaluate.tta": "True"})
    uri = log_keras_model(str(logged["model"]), 32, logged["store"], run_id, classes, decision_bias=offsets)
    assert load_model(uri, logged["store"]).decision_bias == [offsets[c] for c in classes]
    assert load_model(logged["uri"], logged["store"]).decision_bias is None

    plain, plain_probs, plain_output = _evaluate(logged, tmp_path / "plain")
    shifted, shifted_probs, shifted_output = _evaluate({**logged, "uri": uri}, tmp_path / "shifted")
    assert "validation-fitted offsets" in shifted_output and "validation-fitted" not in plain_output
    np.testing.assert_allclose(shifted_probs, plain_probs, rtol=1e-6)
    assert shifted["melanoma_auc"] == plain["melanoma_auc"] and shifted["macro_auc"] == plain["macro_auc"]
    matrix = np.asarray(shifted["confusion_matrix"])
    assert matrix[:, classes.index(forced)].sum() == matrix.sum() == shifted["n"]
    assert shifted["balanced_accuracy"] == pytest.approx(1 / len(classes))
    assert shifted["decision_bias"] == offsets and plain["decision_bias"] is None
    report = (tmp_path / "shifted" / "m_report" / "report.html").read_text()
    assert "per-class offsets, fitted on the validation split" in report and f"{forced} +30.00" in report

    out = tmp_path / "predictions.csv"
    result = CliRunner().invoke(
        main, ["predict", "--model", uri, str(logged["images"]), "--out", str(out), "--tracking-uri", logged["store"]]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert {r["predicted_class"] for r in rows} == {forced}
    assert any(max(classes, key=lambda c: float(r[f"p_{c}"])) != forced for r in rows)  # not the argmax

"""train.balance_decisions: offsets fitted on the validation split, used by the evaluate step."""

from __future__ import annotations

import json

import numpy as np

from components.data import tfrecords
from components.training.train import train
from tests.helpers.tiny_data import tiny_config


def test_balanced_decisions_are_fitted_on_validation_and_used_by_the_evaluate_step(
    normalized, tmp_path, capsys, monkeypatch
):
    """train.balance_decisions: offsets fitted on the validation split's TTA probabilities
    (after the temperature fitted on them, train.calibrate), saved beside the model, and the
    pipeline's evaluate step decides with them."""
    import keras

    from components.core.settings import EvaluateConfig
    from components.evaluation.evaluate import evaluate
    from components.scoring import decisions
    from components.scoring.calibration import apply_temperature
    from components.scoring.decisions import decide_classes, fit_balanced_bias, in_class_order, saved_decision_bias
    from components.scoring.inference import predict_probabilities

    # The tiny set has 1-5 validation images a class (hash split): below the floor, every offset would be 0.
    monkeypatch.setattr(decisions, "MIN_IMAGES_TO_FIT", 1)
    cfg = tiny_config(model="seed_cnn", epochs=1, balance_decisions=True)
    result = train(normalized, None, cfg.train, tmp_path / "model")
    classes = tfrecords.read_meta(normalized)["classes"]
    saved = in_class_order(saved_decision_bias(tmp_path / "model"), classes)
    assert np.abs(saved).max() > 0.01
    assert "decision offsets fitted on the validation split: its balanced accuracy" in capsys.readouterr().out

    model = keras.models.load_model(result.model_path, compile=False)
    val_paths = tfrecords.shard_paths(normalized, "val")
    val_labels, _ = tfrecords.read_labels(val_paths)
    val_probs = predict_probabilities(model, tfrecords.image_dataset(val_paths, 32, len(val_labels)), tta=True)
    temperature = json.loads((tmp_path / "model" / "calibration.json").read_text())["temperature"]
    val_probs = apply_temperature(val_probs, temperature)
    np.testing.assert_allclose(saved, fit_balanced_bias(val_probs, val_labels, len(classes)), atol=1e-5)

    ev = evaluate(result.model_path, normalized, EvaluateConfig(tta=True), tmp_path / "eval")
    assert ev.metrics["decision_bias"] == dict(zip(classes, saved))
    assert (
        np.asarray(ev.metrics["confusion_matrix"]).sum(0).tolist()
        == np.bincount(decide_classes(ev.probs, saved), minlength=len(classes)).tolist()
    )

"""Evaluation: metrics against hand-computed values, TTA, Grad-CAM, and the report with
every picture, on a model really trained on tiny synthetic shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.data import tfrecords
from components.evaluation.evaluate import Evaluation, evaluate, make_pictures, thinned_roc
from components.evaluation.gradcam import gradcam
from components.evaluation.plots import worst_misclassified
from components.evaluation.report_html import write_report
from components.scoring.calibration import apply_temperature
from components.scoring.inference import load_model, predict_probabilities
from components.scoring.metrics import classification_metrics, expected_calibration_error, sensitivity_at_specificity
from components.training.train import train
from tests.helpers.tiny_data import make_tiny_shards, tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    normalized = make_tiny_shards(root)
    result = train(normalized, None, tiny_config(epochs=3, learning_rate=0.003).train, root / "model")
    return Path(result.model_path), normalized


def test_melanoma_sensitivity_at_fixed_specificity():
    # 10 negatives with scores 0.0..0.9, 4 melanomas with scores 0.95, 0.85, 0.75, 0.05.
    negatives = np.arange(10) / 10
    positives = np.array([0.95, 0.85, 0.75, 0.05])
    y = np.r_[np.zeros(10), np.ones(4)].astype(int)
    scores = np.r_[negatives, positives]
    # Specificity 90 %: one negative (0.9) may score above the threshold -> 0.95 and 0.85? no:
    # a threshold of 0.85 passes 0.9 (1 false positive of 10) and catches 0.95 and 0.85.
    assert sensitivity_at_specificity(y, scores, 0.9) == pytest.approx(0.5)
    # Specificity 80 %: threshold 0.75 passes 0.8 and 0.9, catches three melanomas.
    assert sensitivity_at_specificity(y, scores, 0.8) == pytest.approx(0.75)
    assert sensitivity_at_specificity(np.zeros(5, int), np.zeros(5), 0.9) is None


def test_expected_calibration_error_of_known_predictions():
    y = np.array([0, 0, 0, 0, 1])
    # Five predictions at confidence 0.8, four right: perfectly calibrated.
    probs = np.array([[0.8, 0.2]] * 5)
    assert expected_calibration_error(y, probs) == pytest.approx(0.0, abs=1e-9)
    # Always 1.0 confident, 80 % right: ECE 0.2.
    assert expected_calibration_error(y, np.array([[1.0, 0.0]] * 5)) == pytest.approx(0.2)


def test_metrics_carry_every_number_the_issue_lists():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    probs = rng.dirichlet(np.ones(3), 60)
    probs[np.arange(60), y] += 0.5
    probs /= probs.sum(1, keepdims=True)
    m = classification_metrics(y, probs, ["nevus", "melanoma", "benign_keratosis"])
    # Each against scikit-learn's, or the tested functions above, on the same predictions.
    from sklearn import metrics as sk

    predicted = probs.argmax(1)
    melanoma = y == 1
    expected = {
        "accuracy": sk.accuracy_score(y, predicted),
        "balanced_accuracy": sk.balanced_accuracy_score(y, predicted),
        "macro_f1": sk.f1_score(y, predicted, average="macro"),
        "macro_auc": sk.roc_auc_score(y, probs, multi_class="ovr", average="macro"),
        "melanoma_auc": sk.roc_auc_score(melanoma, probs[:, 1]),
        "ece": expected_calibration_error(y, probs),
        "melanoma_sensitivity_at_80_specificity": sensitivity_at_specificity(melanoma, probs[:, 1], 0.8),
        "melanoma_sensitivity_at_90_specificity": sensitivity_at_specificity(melanoma, probs[:, 1], 0.9),
    }
    assert {key: m[key] for key in expected} == pytest.approx(expected)
    assert 0.5 < m["accuracy"] < 1  # the predictions are good and not perfect: the numbers above say something
    assert set(m["per_class"]["melanoma"]) == {"precision", "recall", "f1", "support", "auc"}
    assert np.asarray(m["confusion_matrix"]).sum() == 60


def test_test_time_augmentation_averages_the_eight_flips_and_turns(trained):
    import keras

    model = keras.models.load_model(trained[0], compile=False)
    images = np.random.default_rng(1).integers(0, 255, (3, 32, 32, 3)).astype(np.uint8)
    views = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
    views += [v[:, :, ::-1] for v in views]  # all 8 symmetries of the square, computed independently
    expected = np.mean([model.predict(v.astype(np.float32), verbose=0) for v in views], axis=0)
    np.testing.assert_allclose(predict_probabilities(model, images, tta=True), expected, rtol=1e-5)
    # A whole-image symmetry: a turned image gets the same TTA probabilities.
    np.testing.assert_allclose(
        predict_probabilities(model, np.rot90(images, 1, axes=(1, 2)), tta=True), expected, rtol=1e-4, atol=1e-6
    )


def test_gradcam_highlights_the_region_the_class_score_comes_from():
    """A model whose class-0 score grows with the brightness its one feature map sees:
    Grad-CAM of class 0 on a dark image with a bright square is that square, and of
    class 1 (whose score falls with brightness) nothing."""
    import keras

    inputs = keras.Input((32, 32, 3))
    brightness = keras.layers.Conv2D(1, 1, activation="relu", kernel_initializer=keras.initializers.Constant(1 / 3))(
        inputs
    )
    pooled = keras.layers.GlobalAveragePooling2D()(brightness)
    outputs = keras.layers.Dense(
        2, activation="softmax", kernel_initializer=keras.initializers.Constant([[1.0, -1.0]])
    )(pooled)
    model = keras.Model(inputs, outputs)
    images = np.zeros((2, 32, 32, 3), np.float32)
    images[0, 4:12, 20:28] = 1.0
    images[1, 20:30, 2:10] = 1.0
    heat = gradcam(model, images, 0)
    for h, image in zip(heat, images):
        square = image[..., 0] > 0
        assert h[square].min() > 0.9 and h[~square].max() < 0.1
    assert gradcam(model, images, 1).max() == 0


def test_gradcam_of_a_trained_model_is_scaled_to_each_images_peak(trained):
    import keras

    model = keras.models.load_model(trained[0], compile=False)
    images, labels, _ = tfrecords.read_all(tfrecords.shard_paths(trained[1], "test"), 32)
    heat = gradcam(model, images[:3].astype(np.float32), 0)
    assert heat.shape == (3, 32, 32) and heat.min() >= 0
    for h in heat:
        assert h.max() == pytest.approx(1.0) and h.min() < 0.9  # its peak, and not flat


def test_evaluation_writes_metrics_pictures_and_a_self_contained_report(trained, tmp_path):
    model_path, normalized = trained
    cfg = tiny_config()
    ev = evaluate(model_path, normalized, cfg.evaluate, tmp_path)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["n"] == tfrecords.read_meta(normalized)["counts"]["test"]
    assert written["accuracy"] > 0.5  # 4 classes: chance is 0.25
    names = {name for _, name in ev.pictures}
    assert {"confusion_matrix.png", "roc_curves.png", "reliability.png", "gradcam_melanoma.png"} <= names
    for name in names:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    gate = {
        "alias": "challenger",
        "reason": "balanced_accuracy 0.4 < minimum 0.9",
        "model_uri": "models:/m/2",
        "previous_champion": "version 1",
        "comparison": {"balanced_accuracy": {"new": 0.4, "champion": 0.5, "minimum": 0.9}},
    }
    page = write_report(ev, tmp_path, "Tiny", synthetic=True, gate=gate).read_text()
    assert page.count("data:image/png;base64,") == len(ev.pictures)
    assert "SYNTHETIC" in page and "CHALLENGER" in page and "balanced_accuracy 0.4 &lt; minimum 0.9" in page
    for label in ("balanced accuracy", "melanoma auc", "melanoma sensitivity at 90 specificity", "ece"):
        assert label in page


@pytest.mark.parametrize("tta", [False, True])
def test_evaluation_streams_the_test_split_with_the_in_memory_results(trained, tmp_path, monkeypatch, tta):
    import keras

    model_path, normalized = trained
    cfg = tiny_config().evaluate.model_copy(update={"tta": tta, "batch_size": 8})
    model = keras.models.load_model(model_path, compile=False)
    classes = tfrecords.read_meta(normalized)["classes"]
    # The reference: the whole split in memory, predicted in batches of 8 (TTA's views made from the array).
    images, labels, _ = tfrecords.read_all(tfrecords.shard_paths(normalized, "test"), 32)
    assert len(images) > 8
    probs = (
        predict_probabilities(model, images, 8, tta=True)
        if tta
        else np.asarray(model.predict(images.astype(np.float32), batch_size=8, verbose=0), dtype=np.float64)
    )
    # with the temperature fitted on validation when training ended (train.calibrate)
    probs = apply_temperature(probs, load_model(str(model_path)).temperature)
    expected = classification_metrics(labels, probs, classes, cfg.melanoma_class)

    read_back: list[int] = []
    images_at = tfrecords.images_at

    def counted_images_at(paths, image_size, indices):
        read_back.extend(indices)
        return images_at(paths, image_size, indices)

    monkeypatch.setattr(tfrecords, "images_at", counted_images_at)
    monkeypatch.setattr(tfrecords, "read_all", None)  # evaluate never holds the split
    ev = evaluate(model_path, normalized, cfg, tmp_path / "streamed")
    np.testing.assert_array_equal(ev.probs, probs)
    assert {k: ev.metrics[k] for k in expected} == expected
    # Only the images the pictures show are read back, and they are the right ones: the
    # same pictures as from the split in memory.
    assert 0 < len(read_back) <= cfg.worst_images + cfg.gradcam_images
    reference = Evaluation(
        {**expected, "calibration": ev.metrics["calibration"], "referral": ev.metrics["referral"]}, labels, probs
    )
    (tmp_path / "reference").mkdir()
    make_pictures(
        model, lambda indices: {i: images[i] for i in indices}, reference, classes, cfg, tmp_path / "reference"
    )
    assert ev.pictures == reference.pictures
    for _, name in ev.pictures:
        assert (tmp_path / "streamed" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name


def test_worst_misclassified_and_thinned_roc():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.95, 0.05], [0.2, 0.8]])
    assert worst_misclassified(y, probs, 5).tolist() == [2, 1]  # true-class probability 0.05, then 0.3
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 5000)
    probs = rng.dirichlet([1, 1], 5000)
    fpr, tpr, thresholds = thinned_roc(y, probs, 1)
    assert len(fpr) <= 200 and fpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1

"""Decision offsets (components.scoring.decisions): fitted on validation for balanced accuracy,
used for the predicted class only; the probabilities, and so every AUC, stay as they are."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from components.scoring.decisions import (
    MIN_IMAGES_TO_FIT,
    decide_classes,
    fit_balanced_bias,
    in_class_order,
    too_few_to_fit,
)
from components.scoring.metrics import classification_metrics

PRIOR = np.array([0.80, 0.12, 0.05, 0.03])


def _skewed_classifier(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) of a classifier that sees each image's class through noise
    and leans to the frequent classes by twice their log prior (as a network trained on
    imbalanced data does on images it has not seen)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(PRIOR), size=n, p=PRIOR)
    logits = rng.normal(0.0, 1.0, (n, len(PRIOR))) + 1.5 * np.eye(len(PRIOR))[labels] + 2.0 * np.log(PRIOR)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return probs / probs.sum(1, keepdims=True), labels


def test_offsets_fitted_on_validation_raise_balanced_accuracy_on_other_images():
    val_probs, val_labels = _skewed_classifier(1500, seed=1)
    test_probs, test_labels = _skewed_classifier(4000, seed=2)
    bias = fit_balanced_bias(val_probs, val_labels, len(PRIOR))

    assert bias.mean() == pytest.approx(0.0, abs=1e-9)
    assert bias[0] < 0 < bias[3]  # the frequent class loses, the rarest gains
    plain = balanced_accuracy_score(test_labels, decide_classes(test_probs))
    balanced = balanced_accuracy_score(test_labels, decide_classes(test_probs, bias))
    assert balanced > plain + 0.05, (plain, balanced)
    # Without offsets the decision is the plain argmax.
    np.testing.assert_array_equal(decide_classes(test_probs, None), test_probs.argmax(1))
    np.testing.assert_array_equal(decide_classes(test_probs, np.zeros(len(PRIOR))), test_probs.argmax(1))


def test_a_class_absent_from_validation_keeps_a_zero_offset():
    probs, labels = _skewed_classifier(600, seed=3)
    present = labels != 3
    bias = fit_balanced_bias(probs[present], labels[present], len(PRIOR))
    assert bias[3] == 0.0 and bias[:3].mean() == pytest.approx(0.0, abs=1e-9) and np.abs(bias[:3]).max() > 0.1


def test_a_class_with_too_few_validation_images_keeps_a_zero_offset_and_leaves_the_others_alone():
    """Kaggle ISIC 9-class had one validation image of a class; the balanced loss gave it
    a whole class's weight and its offset reached +5.8."""
    probs, labels = _skewed_classifier(1500, seed=5)
    common = labels != 3
    few = np.flatnonzero(~common)[: MIN_IMAGES_TO_FIT - 1]
    # The rare class's few images all look like the frequent class to the network.
    probs[few] = np.array([0.97, 0.01, 0.01, 0.01])
    keep = common.copy()
    keep[few] = True

    bias = fit_balanced_bias(probs[keep], labels[keep], len(PRIOR))
    np.testing.assert_allclose(bias, fit_balanced_bias(probs[common], labels[common], len(PRIOR)), atol=1e-9)
    assert bias[3] == 0.0 and too_few_to_fit(labels[keep], len(PRIOR)).tolist() == [False, False, False, True]
    # One image more, and the class is fitted: its offset grows to win its misread images.
    keep[np.flatnonzero(~common)[MIN_IMAGES_TO_FIT - 1]] = True
    probs[np.flatnonzero(~common)[MIN_IMAGES_TO_FIT - 1]] = np.array([0.97, 0.01, 0.01, 0.01])
    assert fit_balanced_bias(probs[keep], labels[keep], len(PRIOR))[3] > 1.0
    # No class with enough images: no offsets at all.
    np.testing.assert_array_equal(fit_balanced_bias(probs[few], labels[few], len(PRIOR)), np.zeros(len(PRIOR)))


def test_metrics_count_the_offset_decisions_and_keep_the_aucs_of_the_probabilities():
    probs, labels = _skewed_classifier(800, seed=4)
    classes = ["nevus", "benign_keratosis", "melanoma", "dermatofibroma"]
    bias = fit_balanced_bias(probs, labels, len(classes)).tolist()
    plain = classification_metrics(labels, probs, classes)
    shifted = classification_metrics(labels, probs, classes, decision_bias=bias)

    assert plain["decision_bias"] is None and shifted["decision_bias"] == dict(zip(classes, bias))
    assert shifted["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, decide_classes(probs, bias)))
    assert shifted["balanced_accuracy"] > plain["balanced_accuracy"]
    assert (
        np.asarray(shifted["confusion_matrix"]).sum(0).tolist()
        == np.bincount(decide_classes(probs, bias), minlength=4).tolist()
    )
    for key in ("melanoma_auc", "macro_auc", "ece", "melanoma_sensitivity_at_90_specificity"):
        assert shifted[key] == plain[key]


def test_offsets_must_name_exactly_the_models_classes():
    assert in_class_order({"b": 1.0, "a": -1.0}, ["a", "b"]) == [-1.0, 1.0]
    assert in_class_order(None, ["a", "b"]) is None
    with pytest.raises(ValueError, match="decision offsets are for classes"):
        in_class_order({"a": 1.0}, ["a", "b"])

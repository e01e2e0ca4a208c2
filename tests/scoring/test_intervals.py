"""The bootstrap of the test metrics: weighted metrics that agree with the plain ones,
resamples of whole lesions, intervals that cover what they should, and the paired
difference the champion gate decides on."""

from __future__ import annotations

import numpy as np
import pytest

from components.scoring.decisions import decide_classes
from components.scoring.intervals import (
    bootstrap,
    intervals,
    paired_difference,
    rank_metrics,
    resampled_metrics,
    resampling,
)
from components.scoring.metrics import Scored, classification_metrics

CLASSES = ["nevus", "melanoma", "benign_keratosis"]


def _planted(n: int, signal: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities with ``signal`` of probability mass pushed to the true class,
    scores rounded to 2 digits so there are ties."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), n)
    probs = rng.dirichlet(np.ones(len(CLASSES)), n)
    probs[np.arange(n), y] += signal
    return y, np.round(probs / probs.sum(1, keepdims=True), 2)


def _headline(m: dict) -> dict:
    flat = {
        k: m[k]
        for k in (
            "accuracy",
            "balanced_accuracy",
            "macro_f1",
            "macro_auc",
            "melanoma_auc",
            "melanoma_sensitivity_at_80_specificity",
            "melanoma_sensitivity_at_90_specificity",
        )
    }
    return {**flat, **{f"recall_{c}": r for c, r in m["per_class_recall"].items()}}


@pytest.mark.parametrize("bias", [None, [0.0, 0.7, -0.3]])
def test_weighted_metrics_equal_the_plain_ones_on_the_same_rows(bias):
    y, probs = _planted(300, 0.3, seed=1)
    predicted = classification_metrics(y, probs, CLASSES, decision_bias=bias)
    labels = decide_classes(probs, bias)
    # Weights of 1: the whole split; integer weights: the split with rows repeated.
    counts = np.random.default_rng(2).integers(0, 4, 300).astype(float)
    weights = np.stack([np.ones(300), counts], axis=1)
    got = resampled_metrics(weights, y, probs, labels, CLASSES)
    repeated = classification_metrics(
        np.repeat(y, counts.astype(int)), np.repeat(probs, counts.astype(int), axis=0), CLASSES, decision_bias=bias
    )
    for row, expected in ((0, _headline(predicted)), (1, _headline(repeated))):
        for name, value in expected.items():
            assert got[name][row] == pytest.approx(value, abs=1e-12), (row, name)


def test_resamples_draw_whole_lesions_and_are_the_same_for_a_seed():
    groups = ["a", "a", "a", "b", "", "c", "c", ""]  # '' : an image without a lesion id is its own group
    plan = resampling(groups, len(groups), "lesions", resamples=500, seed=3)
    assert (plan.groups, plan.unit) == (5, "lesions")
    weights = np.concatenate(list(plan.weights()), axis=1).T
    assert weights.shape == (500, 8)
    # The three images of lesion a are drawn together, always; each resample draws 5 lesions.
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 1] == weights[:, 2]).all()
    assert not (weights[:, 4] == weights[:, 7]).all()
    lesion_counts = weights[:, [0, 3, 4, 5, 7]]
    assert (lesion_counts.sum(1) == 5).all()
    np.testing.assert_array_equal(np.concatenate(list(plan.weights()), axis=1).T, weights)
    assert resampling(None, 8, "lesions").unit == "images" and resampling(None, 8, "lesions").groups == 8


def test_the_interval_brackets_the_estimate_and_narrows_with_more_images():
    widths = []
    for n in (200, 3200):
        y, probs = _planted(n, 0.25, seed=n)
        found = intervals(resampling(None, n, "images", resamples=400), y, probs, CLASSES)
        m = classification_metrics(y, probs, CLASSES)
        low, high = found["values"]["melanoma_auc"]
        assert low < m["melanoma_auc"] < high
        widths.append(high - low)
        assert found["values"].keys() >= {
            "accuracy",
            "balanced_accuracy",
            "recall_melanoma",
            "melanoma_sensitivity_at_90_specificity",
        }
        assert (found["unit"], found["units"], found["level"]) == ("images", n, 0.95)
    # The standard error falls as 1/sqrt(n): 16 times the images, about a quarter the width.
    assert 0.15 < widths[1] / widths[0] < 0.4


def test_lesions_with_several_images_widen_the_interval():
    """Each lesion photographed 4 times (near-identical scores): the images are not 4 times
    the evidence, and resampling lesions says so where resampling images would not."""
    y, probs = _planted(150, 0.25, seed=7)
    y4, probs4 = np.repeat(y, 4), np.repeat(probs, 4, axis=0)
    lesions = np.repeat([f"L{i}" for i in range(150)], 4).tolist()
    by_image = intervals(resampling(None, 600, "images"), y4, probs4, CLASSES)["values"]["melanoma_auc"]
    by_lesion = intervals(resampling(lesions, 600, "lesions"), y4, probs4, CLASSES)["values"]["melanoma_auc"]
    assert (by_lesion[1] - by_lesion[0]) > 1.6 * (by_image[1] - by_image[0])


def test_an_undefined_metric_gets_no_interval():
    y, probs = _planted(100, 0.3, seed=4)
    y[y == 1] = 0  # no melanoma
    found = intervals(resampling(None, 100, "images", resamples=200), y, probs, CLASSES)["values"]
    assert "melanoma_auc" not in found and "recall_melanoma" not in found and "accuracy" in found


def test_paired_difference_is_sharper_than_two_separate_intervals():
    """Two models scored on the same images share most of their luck: the paired
    difference's interval is narrower than the two intervals' overlap suggests."""
    y, champion = _planted(1000, 0.2, seed=5)
    noise = np.random.default_rng(6).normal(0, 0.02, champion.shape)
    challenger = np.clip(champion + noise, 1e-6, None)
    challenger[np.arange(1000), y] += 0.02
    challenger /= challenger.sum(1, keepdims=True)
    plan = resampling(None, 1000, "images")
    scored = [Scored(y, p, classification_metrics(y, p, CLASSES)) for p in (challenger, champion)]
    diff = paired_difference("melanoma_auc", plan, *scored)
    separate = [bootstrap(plan, y, p, CLASSES)["melanoma_auc"] for p in (challenger, champion)]
    assert diff.estimate == pytest.approx(scored[0].metrics["melanoma_auc"] - scored[1].metrics["melanoma_auc"])
    assert diff.low < diff.estimate < diff.high
    assert diff.high - diff.low < 0.5 * (np.ptp(np.percentile(separate[0], [2.5, 97.5])))
    assert "paired bootstrap, 1000 resamples of 1000 images" in diff.describe()


@pytest.mark.parametrize("all_positive", [True, False])
def test_a_resample_of_one_class_only_has_no_auc_and_no_error(all_positive):
    """A subgroup whose images are all melanomas (or none): the AUC and the sensitivity at
    a specificity are undefined, not an error (was: argmax of an empty sequence, which
    ended the evaluate step on a small body-site subgroup)."""
    positive = np.full(5, all_positive)
    auc, [sensitivity] = rank_metrics(positive, np.linspace(0.1, 0.9, 5), np.ones((5, 3)), (0.9,))
    assert np.isnan(auc).all() and np.isnan(sensitivity).all()

"""The champion gate's decision rules, pure functions: floors, the first champion, better
only beyond the noise, and data that cannot be compared (synthetic vs real, other classes)."""

from __future__ import annotations

import numpy as np
import pytest

from components.registry.champion_gate import (
    CHALLENGER,
    CHAMPION,
    decide_across_data,
    decide_promotion,
    incompatibility,
)
from components.registry.training_record import TrainingRecord
from components.scoring.intervals import paired_difference, resampling
from components.scoring.metrics import Scored, classification_metrics
from tests.helpers.registry import gate_config


def _cfg(**kwargs):
    return gate_config(metric="balanced_accuracy", margin=0.02, **kwargs)


def test_gate_floors_and_the_first_champion():
    new = {"balanced_accuracy": 0.70, "melanoma_auc": 0.90, "macro_auc": 0.9}
    assert decide_promotion(new, None, _cfg()).alias == CHAMPION
    below = decide_promotion(new, None, _cfg(min_melanoma_auc=0.93))
    assert below.alias == CHALLENGER and "melanoma_auc 0.900 < minimum 0.930" in below.reason
    assert below.comparison["melanoma_auc"] == {"new": 0.9, "champion": None, "minimum": 0.93}
    assert decide_promotion(new, None, _cfg(), champion_problem="it predicts other classes").alias == CHALLENGER
    # A champion, but the metric is undefined on this split: no difference to decide on.
    assert "cannot compare" in decide_promotion(new, {"balanced_accuracy": 0.6}, _cfg(), difference=None).reason


GATE_CLASSES = ["nevus", "melanoma", "benign_keratosis", "basal_cell_carcinoma"]


def _planted_scores(y: np.ndarray, right: np.ndarray) -> Scored:
    """Probabilities that put 0.7 on the true class where ``right``, else on the next class."""
    k = len(GATE_CLASSES)
    probs = np.full((len(y), k), 0.1)
    probs[np.arange(len(y)), np.where(right, y, (y + 1) % k)] = 0.7
    return Scored(y, probs, classification_metrics(y, probs, GATE_CLASSES))


@pytest.mark.parametrize("gained, lost, alias", [(250, 50, CHAMPION), (72, 60, CHALLENGER), (40, 100, CHALLENGER)])
def test_the_gate_promotes_only_beyond_the_noise(gained, lost, alias):
    """1,130 test images in 800 lesions, as HAM10000's test split: the champion gets 700
    images right; a challenger also gets ``gained`` of its wrong ones right and ``lost``
    of its right ones wrong. +200 images (balanced accuracy about +0.18) clears the
    noise; +12 (about +0.01, the old fixed margin) is within it, so the champion stays;
    -60 is worse."""
    rng = np.random.default_rng(0)
    n = 1130
    lesions = np.r_[np.arange(800), rng.integers(0, 800, n - 800)]
    y = rng.integers(0, len(GATE_CLASSES), 800)[lesions]
    champion_right = np.zeros(n, bool)
    champion_right[rng.permutation(n)[:700]] = True
    challenger_right = champion_right.copy()
    challenger_right[rng.permutation(np.flatnonzero(~champion_right))[:gained]] = True
    challenger_right[rng.permutation(np.flatnonzero(champion_right))[:lost]] = False
    new, old = _planted_scores(y, challenger_right), _planted_scores(y, champion_right)
    plan = resampling([f"L{i}" for i in lesions], n, "lesions")
    cfg = gate_config(metric="balanced_accuracy")
    difference = paired_difference(cfg.metric, plan, new, old)
    decision = decide_promotion(new.metrics, old.metrics, cfg, difference=difference)
    assert decision.alias == alias, decision.reason
    assert difference.estimate == pytest.approx(new.metrics["balanced_accuracy"] - old.metrics["balanced_accuracy"])
    assert f"[{difference.low:+.4f}, {difference.high:+.4f}]" in decision.reason
    assert "1000 resamples of 800 lesions" in decision.reason
    assert decision.difference["low"] == difference.low
    if gained - lost == 12:
        assert 0 < difference.estimate < 0.02 and difference.low < 0 < difference.high
        assert "not shown better than the champion" in decision.reason
        # A negative margin accepts a challenger that may be that much worse.
        assert (
            decide_promotion(new.metrics, old.metrics, gate_config(margin=-0.05), difference=difference).alias
            == CHAMPION
        )
    if gained < lost:
        assert "worse than the champion" in decision.reason


def _record(synthetic: bool = False, classes=("nevus", "melanoma")) -> TrainingRecord:
    return TrainingRecord(list(classes), synthetic, ["a" * 32], ["L1"], "f" * 64)


def test_incompatible_data_is_named_and_a_synthetic_model_never_replaces_a_real_champion():
    """Was: the data.synthetic tag was written and never read, and a model trained on the
    generated demo images could take @champion from one trained on real images."""
    new = {"balanced_accuracy": 0.9}
    real, synthetic = _record(), _record(synthetic=True)
    assert incompatibility(real, real, False, "") == ""
    problem = incompatibility(synthetic, real, False, "")
    assert problem == "the champion was trained on real images, this model on synthetic ones"
    for allow in (False, True):
        decision = decide_across_data(new, problem, True, _cfg(allow_incompatible_data=allow))
        assert decision.alias == CHALLENGER and "never replaces a real champion" in decision.reason
    other = incompatibility(real, _record(classes=("nevus", "melanoma", "vascular")), False, "")
    assert other.startswith("other classes: the champion's nevus, melanoma, vascular")
    kept = decide_across_data(new, other, False, _cfg())
    assert kept.alias == CHALLENGER and "champion_gate.allow_incompatible_data=true" in kept.reason
    forced = decide_across_data(new, other, False, _cfg(allow_incompatible_data=True))
    assert forced.alias == CHAMPION and "promoted over an incompatible champion" in forced.reason
    # a real model over a synthetic champion: the same rule, forced only by the setting
    assert decide_across_data(new, incompatibility(real, synthetic, True, ""), False, _cfg()).alias == CHALLENGER
    assert "no record of the images the champion trained on (its run was deleted)" in incompatibility(
        real, None, False, "its run was deleted"
    )

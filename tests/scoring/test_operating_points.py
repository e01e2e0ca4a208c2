"""Melanoma operating points: thresholds chosen for a target, and their test rates with intervals."""

import numpy as np
import pytest

from components.scoring.intervals import resampling
from components.scoring.operating_points import (
    fit_operating_points,
    flag_threshold,
    rates,
    rates_on_test,
    threshold_for_sensitivity,
    threshold_for_specificity,
)


def test_thresholds_meet_their_targets_exactly_on_known_scores():
    # 20 melanomas scoring 0.05 .. 1.0, 100 others scoring 0.005 .. 0.5
    positive = np.r_[np.ones(20, bool), np.zeros(100, bool)]
    scores = np.r_[np.arange(1, 21) / 20, np.arange(1, 101) / 200]
    t_sens = threshold_for_sensitivity(scores, positive, 0.95)
    assert t_sens == pytest.approx(0.10)  # the 19th highest melanoma score: 19 of 20 caught
    assert rates(scores, positive, t_sens)["sensitivity"] == 0.95
    t_spec = threshold_for_specificity(scores, positive, 0.90)
    assert 0.45 < t_spec <= 0.455  # just above the 11th highest other score (0.45): 90 of 100 left
    assert rates(scores, positive, t_spec) == {"sensitivity": 0.55, "specificity": 0.90}
    assert threshold_for_sensitivity(scores, np.zeros(120, bool), 0.95) is None


def test_the_flag_uses_the_named_point_and_test_rates_carry_intervals():
    rng = np.random.default_rng(1)
    positive = rng.random(400) < 0.2
    scores = np.clip(rng.normal(0.3 + 0.4 * positive, 0.15), 0, 1)
    fitted = fit_operating_points(scores, positive, 0.95, 0.90, "specificity")
    assert flag_threshold(fitted) == fitted["points"]["specificity"]["threshold"]
    plan = resampling(None, len(scores), "images", 200, 0)
    found = rates_on_test(fitted, scores, positive, plan)
    sens = found["sensitivity"]["test"]
    assert sens["sensitivity"] >= 0.95
    low, high = sens["sensitivity_ci"]
    assert low <= sens["sensitivity"] <= high < 1.0 + 1e-9
    assert 0.90 <= found["specificity"]["test"]["specificity"] < 0.905  # 286 of 317 others left unflagged

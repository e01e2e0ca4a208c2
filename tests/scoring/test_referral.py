"""Referral: uncertainty, a threshold for a coverage, and the risk-coverage figures."""

import numpy as np
import pytest

from components.scoring.referral import fit_refer_threshold, risk_coverage, uncertainty


def test_uncertainty_adds_the_views_disagreement():
    probs = np.array([[0.9, 0.1], [0.9, 0.1]])
    agreeing = np.array([[[0.9, 0.1]] * 8] * 2)
    split = agreeing.copy()
    split[1, :4] = [0.8, 0.2]
    split[1, 4:] = [1.0, 0.0]
    assert uncertainty(probs).tolist() == pytest.approx([0.1, 0.1])
    assert uncertainty(probs, agreeing).tolist() == pytest.approx([0.1, 0.1])
    assert uncertainty(probs, split).tolist() == pytest.approx([0.1, 0.2])


def test_the_threshold_keeps_the_coverage_and_referring_the_doubtful_raises_accuracy():
    rng = np.random.default_rng(0)
    scores = rng.random(1000)
    threshold = fit_refer_threshold(scores, 0.9)
    assert (scores <= threshold).mean() == pytest.approx(0.9, abs=0.002)
    # planted: every wrong answer is among the 10 % most uncertain
    correct = scores < np.quantile(scores, 0.9)
    melanoma = np.arange(1000) % 10 == 0
    found = risk_coverage(scores, correct, melanoma, melanoma & correct)
    assert found["at"]["90"]["accuracy"] == 1.0
    assert found["at"]["80"]["accuracy"] == 1.0
    assert found["at"]["90"]["melanoma_sensitivity"] == 1.0
    assert found["curve"][-1] == {"coverage": 1.0, "accuracy": pytest.approx(0.9)}

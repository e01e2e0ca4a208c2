"""Temperature scaling: a known temperature is recovered, and undoing it is exact."""

import numpy as np
import pytest

from components.scoring.calibration import apply_temperature, brier_score, calibration_figures, fit_temperature


def _overconfident(true_temperature: float, n: int = 20_000, k: int = 5, seed: int = 0):
    """Labels drawn from softmax(z), and probabilities softmax(z * T): a model whose
    probabilities need temperature T to be calibrated."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, k))
    truth = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = np.array([rng.choice(k, p=p) for p in truth])
    return apply_temperature(truth, 1.0 / true_temperature), labels


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_a_known_temperature_is_recovered(true_temperature):
    probs, labels = _overconfident(true_temperature)
    assert fit_temperature(probs, labels) == pytest.approx(true_temperature, rel=0.06)


def test_calibration_lowers_ece_and_brier_of_an_overconfident_model():
    probs, labels = _overconfident(2.5)
    figures = calibration_figures(probs, labels, fit_temperature(probs, labels))
    assert figures["ece_after"] < 0.02 < figures["ece_before"]
    assert figures["brier_after"] < figures["brier_before"]
    assert figures["nll_after"] < figures["nll_before"]


def test_temperature_keeps_the_decision_and_is_undone_by_its_inverse():
    probs, _ = _overconfident(2.0, n=200)
    hot = apply_temperature(probs, 3.0)
    assert (hot.argmax(1) == probs.argmax(1)).all()
    np.testing.assert_allclose(apply_temperature(hot, 1 / 3.0), probs, atol=1e-9)


def test_brier_score_of_known_probabilities():
    assert brier_score(np.array([[1.0, 0.0], [0.5, 0.5]]), np.array([0, 1])) == pytest.approx(0.25)
    assert brier_score(np.zeros((0, 2)), np.zeros(0)) is None
    assert fit_temperature(np.zeros((0, 2)), np.zeros(0)) == 1.0

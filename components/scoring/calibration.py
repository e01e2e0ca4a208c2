"""Temperature scaling: one temperature T, fitted on the validation split when training
ends (components.training.decision_offsets), saved beside the model
(filenames.CALIBRATION) and applied by every user of the model
(components.scoring.inference.LoadedModel): probabilities softmax(log p / T).

A network trained with a logit-adjusted loss and fine-tuned to fit its training images
is over-confident on images it has not seen (T > 1 softens it); one scalar keeps the
ranking of the classes within an image, so it changes no argmax decision. The fit
minimizes the validation negative log-likelihood of the probabilities (TTA-averaged, as
the decision offsets are fitted), which is convex in 1/T."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from components.core import filenames

_LOG_FLOOR = 1e-12
# The fit searches log T in this range: a temperature outside it means the validation
# split is too small or degenerate to say anything, and the bound is reported as is.
LOG_T_BOUNDS = (-3.0, 3.0)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log probs / temperature), row by row (the last axis is the classes)."""
    if temperature == 1.0:
        return np.asarray(probs, dtype=np.float64)
    z = np.log(np.maximum(np.asarray(probs, dtype=np.float64), _LOG_FLOOR)) / temperature
    z -= z.max(-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(-1, keepdims=True)


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=int)
    if not len(labels):
        return 0.0
    return float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], _LOG_FLOOR)).mean())


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float | None:
    """Multi-class Brier score: the mean over images of the squared distance between the
    probabilities and the one-hot truth (0 best, 2 worst)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=int)
    if not len(labels):
        return None
    truth = np.zeros_like(probs)
    truth[np.arange(len(labels)), labels] = 1.0
    return float(((probs - truth) ** 2).sum(1).mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimizing the negative log-likelihood of ``labels`` under
    apply_temperature(``probs``, T); 1.0 with no labelled images."""
    from scipy.optimize import minimize_scalar

    if not len(labels):
        return 1.0
    found = minimize_scalar(
        lambda log_t: negative_log_likelihood(apply_temperature(probs, float(np.exp(log_t))), labels),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(found.x))


def write_calibration(folder: str | Path, temperature: float, fitted_on: str, figures: dict) -> None:
    """The temperature beside a model (filenames.CALIBRATION), with what it was fitted on
    and the validation figures before and after it."""
    (Path(folder) / filenames.CALIBRATION).write_text(
        json.dumps(
            {"temperature": round(float(temperature), 6), "fitted_on": fitted_on, "validation": figures}, indent=1
        )
    )


def calibration_figures(probs: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """ECE, Brier score and negative log-likelihood of ``probs`` (uncalibrated) before and
    after ``temperature``: name_before / name_after."""
    from components.scoring.metrics import expected_calibration_error

    out: dict = {"temperature": float(temperature)}
    for when, p in (("before", probs), ("after", apply_temperature(probs, temperature))):
        out[f"ece_{when}"] = expected_calibration_error(labels, p) if len(labels) else None
        out[f"brier_{when}"] = brier_score(p, labels)
        out[f"nll_{when}"] = negative_log_likelihood(p, labels)
    return out

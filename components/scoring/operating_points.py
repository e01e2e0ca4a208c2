"""Melanoma operating points: thresholds on the (calibrated) melanoma probability,
chosen on the validation split when training ends for a target sensitivity and a target
specificity (train.melanoma_target_sensitivity, train.melanoma_target_specificity), saved
beside the model (filenames.OPERATING_POINTS) with the one the melanoma flag uses
(train.melanoma_flag). An image is flagged melanoma when its melanoma probability is at
or above the threshold, whatever class the decision picks: a clinic runs a melanoma
classifier at a chosen sensitivity, not at the argmax's.

Chosen on validation, the test split then says what they hold (rates_on_test, with 95 %
intervals by the same bootstrap over lesions as every other metric)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from components.core import filenames
from components.scoring.intervals import Resampling, percentile_interval

POINTS = ("sensitivity", "specificity")


def threshold_for_sensitivity(scores: np.ndarray, positive: np.ndarray, target: float) -> float | None:
    """The highest threshold whose sensitivity (scores >= threshold) is at least ``target``."""
    pos = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(positive, bool)])[::-1]
    if not len(pos):
        return None
    needed = min(len(pos), max(1, math.ceil(target * len(pos) - 1e-9)))
    return float(pos[needed - 1])


def threshold_for_specificity(scores: np.ndarray, positive: np.ndarray, target: float) -> float | None:
    """The lowest threshold whose specificity is at least ``target``: just above the
    highest negative score that must be left unflagged."""
    neg = np.sort(np.asarray(scores, dtype=np.float64)[~np.asarray(positive, bool)])[::-1]
    if not len(neg):
        return None
    allowed = math.floor((1.0 - target) * len(neg) + 1e-9)
    return 0.0 if allowed >= len(neg) else float(np.nextafter(neg[allowed], np.inf))


def rates(scores: np.ndarray, positive: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Sensitivity and specificity of flagging scores >= ``threshold``."""
    positive = np.asarray(positive, bool)
    flagged = np.asarray(scores) >= threshold
    return {
        "sensitivity": float(flagged[positive].mean()) if positive.any() else None,
        "specificity": float((~flagged[~positive]).mean()) if (~positive).any() else None,
    }


def fit_operating_points(
    scores: np.ndarray, positive: np.ndarray, target_sensitivity: float, target_specificity: float, flag: str
) -> dict:
    """Both thresholds fitted on validation scores, with their validation rates, and which
    one the flag uses; a point that cannot be fitted (no melanoma, or none else) is None."""
    found = {
        "sensitivity": threshold_for_sensitivity(scores, positive, target_sensitivity),
        "specificity": threshold_for_specificity(scores, positive, target_specificity),
    }
    targets = {"sensitivity": target_sensitivity, "specificity": target_specificity}
    points = {
        name: None
        if t is None
        else {"target": targets[name], "threshold": round(t, 8), "validation": rates(scores, positive, t)}
        for name, t in found.items()
    }
    return {"points": points, "flag": flag}


def write_operating_points(folder: str | Path, melanoma_class: str, fitted: dict, fitted_on: str) -> None:
    (Path(folder) / filenames.OPERATING_POINTS).write_text(
        json.dumps({"melanoma_class": melanoma_class, **fitted, "fitted_on": fitted_on}, indent=1)
    )


def flag_threshold(saved: dict | None) -> float | None:
    """The threshold of the point the flag uses, from a saved operating-points document."""
    if not saved or not saved.get("points"):
        return None
    point = saved["points"].get(saved.get("flag", "sensitivity"))
    return None if point is None else float(point["threshold"])


def resampled_rates(plan: Resampling, positive: np.ndarray, flagged: np.ndarray) -> dict[str, list[float] | None]:
    """95 % intervals of sensitivity and specificity of ``flagged`` by ``plan``'s resamples."""
    positive, flagged = np.asarray(positive, bool), np.asarray(flagged, bool)
    found: dict[str, list[np.ndarray]] = {"sensitivity": [], "specificity": []}
    for w in plan.weights():
        pos, neg = w[positive].sum(0), w[~positive].sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            found["sensitivity"].append(np.where(pos > 0, w[positive & flagged].sum(0) / pos, np.nan))
            found["specificity"].append(np.where(neg > 0, w[~positive & ~flagged].sum(0) / neg, np.nan))
    return {k: percentile_interval(np.concatenate(v)) if v else None for k, v in found.items()}


def rates_on_test(saved: dict | None, scores: np.ndarray, positive: np.ndarray, plan: Resampling) -> dict:
    """Per stored point: its target, threshold, validation rates, and the test rates with
    their 95 % intervals (``<rate>_ci``)."""
    out = {}
    for name, point in ((saved or {}).get("points") or {}).items():
        if point is None:
            continue
        t = float(point["threshold"])
        on_test = rates(scores, positive, t)
        ci = resampled_rates(plan, positive, np.asarray(scores) >= t)
        out[name] = {**point, "test": {**on_test, **{f"{k}_ci": v for k, v in ci.items()}}}
    return out

"""Referral: an uncertainty score per image, and a threshold above which the model says
"refer" (a person looks) instead of answering. The threshold is fitted on the validation
split when training ends so that ``train.refer_coverage`` of the images are kept, saved
beside the model (filenames.REFERRAL) and applied by LoadedModel.refer_flags.

The score adds two signs of doubt: how little the (calibrated) probabilities favour
their top class (1 - max p), and, where the 8 flips and turns were scored (TTA), how much
the views disagree (their mean total-variation distance from the averaged probabilities:
a lesion has no up or left, so a model sure of it gives every view the same answer).
Both lie in [0, 1]. A threshold fitted on TTA scores is for TTA scores: referral.json
says which it was fitted on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from components.core import filenames

COVERAGES = (0.8, 0.9)


def uncertainty(probs: np.ndarray, view_probs: np.ndarray | None = None) -> np.ndarray:
    """Per image: 1 - max probability, plus the views' disagreement when ``view_probs``
    (images x views x classes) is given."""
    probs = np.asarray(probs, dtype=np.float64)
    score = 1.0 - probs.max(1) if len(probs) else np.zeros(0)
    if view_probs is not None and len(probs):
        score = score + 0.5 * np.abs(np.asarray(view_probs) - probs[:, None, :]).sum(2).mean(1)
    return score


def fit_refer_threshold(scores: np.ndarray, coverage: float) -> float | None:
    """The uncertainty above which images are referred so that ``coverage`` of ``scores``
    are kept (None with no scores; coverage 1 keeps every image)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores):
        return None
    return float(np.quantile(scores, coverage, method="higher")) if coverage < 1 else float(scores.max())


def write_referral(folder: str | Path, coverage: float, threshold: float | None, fitted_on: str, tta: bool) -> None:
    (Path(folder) / filenames.REFERRAL).write_text(
        json.dumps({"coverage": coverage, "threshold": threshold, "tta_views": tta, "fitted_on": fitted_on}, indent=1)
    )


def risk_coverage(
    scores: np.ndarray, correct: np.ndarray, melanoma: np.ndarray | None = None, flagged: np.ndarray | None = None
) -> dict:
    """The risk-coverage curve (images kept in order of increasing uncertainty: the
    accuracy of those kept at each coverage), and at each of COVERAGES the accuracy and,
    with ``melanoma`` (true melanomas) and ``flagged`` (the melanoma flag), the melanoma
    sensitivity of the kept images and how many melanomas were referred."""
    scores, correct = np.asarray(scores, dtype=np.float64), np.asarray(correct, bool)
    n = len(scores)
    if not n:
        return {"curve": [], "at": {}}
    order = np.argsort(scores, kind="stable")
    kept_correct = np.cumsum(correct[order])
    steps = np.unique(np.linspace(1, n, min(n, 100)).round().astype(int))
    curve = [{"coverage": k / n, "accuracy": float(kept_correct[k - 1] / k)} for k in steps]
    at = {}
    for coverage in COVERAGES:
        keep = np.zeros(n, bool)
        keep[order[: max(1, round(coverage * n))]] = True
        figures = {"kept": int(keep.sum()), "accuracy": float(correct[keep].mean())}
        if melanoma is not None and flagged is not None:
            melanoma, flagged = np.asarray(melanoma, bool), np.asarray(flagged, bool)
            kept_mel = keep & melanoma
            figures["melanoma_sensitivity"] = float(flagged[kept_mel].mean()) if kept_mel.any() else None
            figures["melanomas_referred"] = int((melanoma & ~keep).sum())
        at[f"{round(coverage * 100)}"] = figures
    return {"curve": curve, "at": at}

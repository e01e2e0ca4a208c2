"""How a model's class probabilities become one predicted class.

Plain argmax, or argmax after one offset per class (``decision_bias``) added to the log
probabilities. The offsets are fitted on the validation split (train.balance_decisions)
to minimize the class-balanced log-loss: every class weighs the same however few images
it has, so the decision aims at balanced accuracy. A network trained on imbalanced data
still leans to the majority class on images it has not seen (HAM10000: nevus), even with
a logit-adjusted loss, because it fits its own training images too well for the loss's
prior to keep the margin. The probabilities themselves are left as they are: a ranking
metric such as melanoma AUC is computed on them, and shifting all classes would change
it. Fitting 7 offsets is convex and stable, unlike a search for the offsets that
maximize balanced accuracy itself on a few hundred images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from components.core import filenames

# Keeps log(0) finite for a class a model gives no probability at all.
_LOG_FLOOR = 1e-12
# Fewer validation images of a class than this, and its offset is not fitted: the
# balanced loss gives the few images a whole class's weight, and the fit pushes the
# offset until they are right (Kaggle ISIC 9-class's one validation image of seborrheic
# keratosis: docs/results.md, Decision offsets).
MIN_IMAGES_TO_FIT = 10


def decide_classes(probs: np.ndarray, decision_bias: list[float] | np.ndarray | None = None) -> np.ndarray:
    """The predicted class index of each row of ``probs``: argmax, after adding
    ``decision_bias`` to the log probabilities when given."""
    probs = np.asarray(probs, dtype=np.float64)
    if decision_bias is None:
        return probs.argmax(1)
    return (np.log(np.maximum(probs, _LOG_FLOOR)) + np.asarray(decision_bias, dtype=np.float64)).argmax(1)


def too_few_to_fit(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per class: True where ``labels`` has fewer than MIN_IMAGES_TO_FIT of it."""
    return np.bincount(np.asarray(labels, dtype=int), minlength=num_classes) < MIN_IMAGES_TO_FIT


def fit_balanced_bias(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """One offset per class, mean 0, minimizing the class-balanced log-loss of
    softmax(log probs + offset) on labelled images. A class with too few images (see
    MIN_IMAGES_TO_FIT; absent ones included) keeps offset 0 relative to the others' mean,
    and its images are left out of the fit."""
    from scipy.optimize import minimize

    labels = np.asarray(labels, dtype=int)
    present = ~too_few_to_fit(labels, num_classes)
    if not present.any():
        return np.zeros(num_classes)
    fitted_images = present[labels]
    labels = labels[fitted_images]
    logp = np.log(np.maximum(np.asarray(probs, dtype=np.float64)[fitted_images], _LOG_FLOOR))
    counts = np.bincount(labels, minlength=num_classes)
    weight = 1.0 / counts[labels] / present.sum()  # every present class's images sum to 1 / classes
    rows = np.arange(len(labels))

    def loss_and_gradient(free: np.ndarray) -> tuple[float, np.ndarray]:
        bias = np.zeros(num_classes)
        bias[present] = free
        z = logp + bias
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        loss = -(weight * np.log(np.maximum(p[rows, labels], _LOG_FLOOR))).sum()
        p[rows, labels] -= 1.0
        return float(loss), (weight[:, None] * p).sum(0)[present]

    fitted = minimize(loss_and_gradient, np.zeros(int(present.sum())), jac=True, method="L-BFGS-B").x
    bias = np.zeros(num_classes)
    bias[present] = fitted - fitted.mean()
    return bias


def write_decision_bias(folder: str | Path, classes: list[str], bias: np.ndarray, fitted_on: str) -> None:
    """The offsets beside a model (filenames.DECISION_BIAS), by class name."""
    (Path(folder) / filenames.DECISION_BIAS).write_text(
        json.dumps(
            {"decision_bias": {c: round(float(b), 6) for c, b in zip(classes, bias)}, "fitted_on": fitted_on}, indent=1
        )
    )


def saved_decision_bias(folder: str | Path) -> dict[str, float] | None:
    """The offsets saved beside a model in ``folder``, by class (None: none saved)."""
    path = Path(folder) / filenames.DECISION_BIAS
    return json.loads(path.read_text())["decision_bias"] if path.is_file() else None


def in_class_order(by_class: dict[str, float] | None, classes: list[str]) -> list[float] | None:
    """Offsets by class name as a list in ``classes`` order (None stays None)."""
    if by_class is None:
        return None
    if set(by_class) != set(classes):
        raise ValueError(f"decision offsets are for classes {sorted(by_class)}, the model predicts {classes}")
    return [float(by_class[c]) for c in classes]

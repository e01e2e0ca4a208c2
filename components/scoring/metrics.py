"""Classification metrics from true labels and predicted probabilities: one definition
for the training callback, the evaluate step and ``lesionpipe evaluate``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from components.scoring.decisions import decide_classes


def _auc(y_binary: np.ndarray, scores: np.ndarray) -> float | None:
    if y_binary.min() == y_binary.max():  # AUC undefined with one class present
        return None
    return float(roc_auc_score(y_binary, scores))


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    melanoma_class: str = "melanoma",
    decision_bias: list[float] | None = None,
) -> dict:
    """Metrics of the predicted classes (argmax, shifted by ``decision_bias`` when the
    model has one: components.scoring.decisions) and of the probabilities (AUCs, calibration)."""
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = decide_classes(probs, decision_bias)
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    aucs = {c: _auc((y_true == i).astype(int), probs[:, i]) for i, c in enumerate(classes)}
    defined = [a for a in aucs.values() if a is not None]
    out: dict = {
        "n": int(len(y_true)),
        "classes": list(classes),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "macro_auc": float(np.mean(defined)) if defined else None,
        "per_class_recall": {c: float(r) for c, r in zip(classes, recall)},
        "per_class": {
            c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s), "auc": aucs[c]}
            for c, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "decision_bias": dict(zip(classes, map(float, decision_bias))) if decision_bias is not None else None,
    }
    out["ece"] = expected_calibration_error(y_true, probs) if len(y_true) else None
    if melanoma_class in classes:
        index = classes.index(melanoma_class)
        out["melanoma_auc"] = aucs[melanoma_class]
        for specificity in (0.8, 0.9):
            out[f"melanoma_sensitivity_at_{round(specificity * 100)}_specificity"] = sensitivity_at_specificity(
                (y_true == index).astype(int), probs[:, index], specificity
            )
    return out


def sensitivity_at_specificity(y_binary: np.ndarray, scores: np.ndarray, specificity: float) -> float | None:
    """The best sensitivity of any threshold whose specificity is at least ``specificity``
    (the operating point a clinic would pick on this ROC curve)."""
    y_binary = np.asarray(y_binary)
    if y_binary.min(initial=0) == y_binary.max(initial=0):
        return None
    fpr, tpr, _ = roc_curve(y_binary, scores)
    allowed = fpr <= 1.0 - specificity + 1e-12
    return float(tpr[allowed].max())


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, bins: int = 10) -> list[dict]:
    """Top-label calibration: per confidence bin, how many predictions, their mean
    confidence and how often they were right."""
    confidence = np.asarray(probs).max(1)
    correct = np.asarray(probs).argmax(1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        members = which == b
        out.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": int(members.sum()),
                "confidence": float(confidence[members].mean()) if members.any() else None,
                "accuracy": float(correct[members].mean()) if members.any() else None,
            }
        )
    return out


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE: the count-weighted gap between confidence and accuracy over the bins."""
    total = len(y_true)
    return float(
        sum(
            b["count"] / total * abs(b["confidence"] - b["accuracy"])
            for b in reliability_bins(y_true, probs, bins)
            if b["count"]
        )
    )


def roc_points(y_true: np.ndarray, probs: np.ndarray, class_index: int) -> tuple[list[float], list[float], list[float]]:
    """One-vs-rest ROC curve of one class: (fpr, tpr, thresholds), thresholds finite."""
    fpr, tpr, thresholds = roc_curve((np.asarray(y_true) == class_index).astype(int), np.asarray(probs)[:, class_index])
    thresholds = np.minimum(thresholds, 1.0)
    return fpr.tolist(), tpr.tolist(), thresholds.tolist()


@dataclass
class Scored:
    """A model's probabilities on labelled images, and classification_metrics of them."""

    y_true: np.ndarray
    probs: np.ndarray
    metrics: dict

    @property
    def decision_bias(self) -> list[float] | None:
        offsets = self.metrics.get("decision_bias")
        return None if offsets is None else [offsets[c] for c in self.metrics["classes"]]

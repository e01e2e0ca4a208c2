"""Classification metrics from true labels and predicted probabilities: one definition
for the training callback, the evaluate step and ``lesionpipe evaluate``."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import (balanced_accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support,
                             roc_auc_score, roc_curve)


def _auc(y_binary: np.ndarray, scores: np.ndarray) -> float | None:
    if y_binary.min() == y_binary.max():  # AUC undefined with one class present
        return None
    return float(roc_auc_score(y_binary, scores))


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str],
                           melanoma_class: str = "melanoma") -> dict:
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = probs.argmax(1)
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    aucs = {c: _auc((y_true == i).astype(int), probs[:, i]) for i, c in enumerate(classes)}
    defined = [a for a in aucs.values() if a is not None]
    out = {
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
    }
    if melanoma_class in classes:
        out["melanoma_auc"] = aucs[melanoma_class]
    return out


def roc_points(y_true: np.ndarray, probs: np.ndarray, class_index: int) -> tuple[list[float], list[float], list[float]]:
    """One-vs-rest ROC curve of one class: (fpr, tpr, thresholds), thresholds finite."""
    fpr, tpr, thresholds = roc_curve((np.asarray(y_true) == class_index).astype(int), np.asarray(probs)[:, class_index])
    thresholds = np.minimum(thresholds, 1.0)
    return fpr.tolist(), tpr.tolist(), thresholds.tolist()

"""The evaluation report's pictures, drawn with matplotlib: confusion matrices, ROC
curves, the reliability diagram and grids of images (with heatmaps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.scoring.metrics import reliability_bins, roc_points


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrices(matrix: list[list[int]], classes: list[str], path: Path) -> None:
    """Counts and row-normalised (each true class's recall on the diagonal), side by side."""
    plt = _pyplot()
    counts = np.asarray(matrix)
    normalised = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = max(4.0, 0.7 * len(classes) + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    for ax, values, title, fmt in (
        (axes[0], counts, "counts", "{:d}"),
        (axes[1], normalised, "normalised by true class", "{:.2f}"),
    ):
        ax.imshow(values, cmap="Blues")
        ax.set_title(title)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                ax.text(
                    j,
                    i,
                    fmt.format(values[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if values[i, j] > values.max() / 2 else "black",
                )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_roc_curves(y_true: np.ndarray, probs: np.ndarray, classes: list[str], metrics: dict, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    for i, c in enumerate(classes):
        auc = metrics["per_class"][c]["auc"]
        if auc is None:
            continue
        fpr, tpr, _ = roc_points(y_true, probs, i)
        ax.plot(fpr, tpr, lw=2.5 if c == "melanoma" else 1.2, label=f"{c} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC, one class vs rest")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_reliability(
    y_true: np.ndarray, probs: np.ndarray, ece: float, path: Path, before: np.ndarray | None = None
) -> None:
    """Accuracy per confidence bin; with ``before`` (the probabilities before temperature
    scaling) its bins as a line beside the bars."""
    plt = _pyplot()
    bins = reliability_bins(y_true, probs)
    fig, ax = plt.subplots(figsize=(6, 6))
    if before is not None:
        raw = [b for b in reliability_bins(y_true, before) if b["count"]]
        ax.plot([b["confidence"] for b in raw], [b["accuracy"] for b in raw], "ko-", label="before temperature")
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    ax.bar(centres, [b["accuracy"] or 0 for b in bins], width=0.09, edgecolor="k", label="accuracy in bin")
    ax.plot([0, 1], [0, 1], "r--", label="perfect calibration")
    for x, b in zip(centres, bins):
        if b["count"]:
            ax.text(x, 0.02, str(b["count"]), ha="center", fontsize=7, rotation=90)
    ax.set_xlabel("confidence (top class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram (ECE {ece:.3f}); numbers: images per bin")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_risk_coverage(curve: list[dict], path: Path) -> None:
    """Accuracy of the images kept against the fraction kept, most certain first."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["coverage"] for p in curve], [p["accuracy"] for p in curve], "b-")
    for coverage in (0.8, 0.9):
        ax.axvline(coverage, color="grey", linestyle=":")
    ax.set_xlabel("coverage (fraction of test images answered, least uncertain first)")
    ax.set_ylabel("accuracy of the answered images")
    ax.set_title("Risk-coverage: the rest are referred")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def worst_misclassified(
    y_true: np.ndarray, probs: np.ndarray, count: int, predicted: np.ndarray | None = None
) -> np.ndarray:
    """Indices of wrong predictions (``predicted``, else the argmax), lowest probability
    on the true class first."""
    wrong = np.flatnonzero((probs.argmax(1) if predicted is None else predicted) != y_true)
    true_prob = probs[wrong, y_true[wrong]]
    return wrong[np.argsort(true_prob, kind="stable")][:count]


def plot_image_grid(
    images: list[np.ndarray], captions: list[str], path: Path, overlays: list[np.ndarray] | None = None
) -> None:
    plt = _pyplot()
    columns = min(4, len(images))
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (image, caption) in enumerate(zip(images, captions)):
        ax = axes.flat[k]
        ax.imshow(image.astype(np.uint8))
        if overlays is not None:
            ax.imshow(overlays[k], cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_title(caption, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)

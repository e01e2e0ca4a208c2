"""95 % intervals of the test metrics, and of the difference between two models on the
same test images, by bootstrap over lesions.

Images of one lesion are not independent (HAM10000 has up to six photographs of a
lesion), so a resample draws whole groups (lesions, or patients where that is the only
id; images where there is none), with replacement, as many as there are. A resample is
a vector of counts per group, hence of weights per image, and every metric is computed
from weighted sums: all resamples at once, in blocks, with no Python loop over them.
The same seed gives the same resamples, so two models scored with one ``Resampling``
are compared pair by pair (the paired bootstrap of the champion gate).

The interval is the 2.5th to 97.5th percentile of the resampled values (percentile
bootstrap); a resample in which a metric is undefined (no melanoma drawn) is left out
of that metric's percentiles.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from components.scoring.decisions import decide_classes
from components.scoring.lesions import group_index
from components.scoring.metrics import Scored

LEVEL = 0.95
# Resamples weighted at once: images x BLOCK float64 (16 MB for 10,000 images). Images
# are rows, so that sorting them by score moves whole rows.
BLOCK = 200
SPECIFICITIES = (0.8, 0.9)


@dataclass(frozen=True)
class Resampling:
    """How to draw resamples of a test split: ``group_index`` gives each image's group
    (0 .. groups-1); ``unit`` names what a group is, for people ("lesions", "images")."""

    group_index: np.ndarray
    groups: int
    unit: str
    resamples: int = 1000
    seed: int = 0

    def weights(self) -> Iterator[np.ndarray]:
        """Blocks of resamples as (images, resamples in the block) weights: how many
        times each image's group was drawn. The same blocks on every call."""
        rng = np.random.default_rng(self.seed)
        for start in range(0, self.resamples, BLOCK):
            size = min(BLOCK, self.resamples - start)
            # group * size + resample: the counts come out as (groups, resamples), rows contiguous
            draws = rng.integers(0, self.groups, (size, self.groups)) * size + np.arange(size)[:, None]
            counts = np.bincount(draws.ravel(), minlength=self.groups * size).reshape(self.groups, size)
            yield counts[self.group_index].astype(np.float64)

    def describe(self) -> dict:
        return {"level": LEVEL, "resamples": self.resamples, "seed": self.seed, "unit": self.unit, "units": self.groups}


def resampling(group_ids: Sequence[str] | None, n: int, unit: str, resamples: int = 1000, seed: int = 0) -> Resampling:
    """Resample by ``group_ids`` (one per image; '' for an image with none, which is then
    its own group), or by image when there are none. ``unit``: what a group is, plural."""
    if group_ids is None or not any(group_ids):
        return Resampling(np.arange(n), n, "images", resamples, seed)
    names, index = group_index(group_ids)
    return Resampling(index, len(names), unit, resamples, seed)


def rank_metrics(
    positive: np.ndarray, scores: np.ndarray, weights: np.ndarray, specificities: tuple[float, ...] = ()
) -> tuple[np.ndarray, list[np.ndarray]]:
    """One class against the rest, per column of ``weights`` (images x resamples): the
    AUC (Mann-Whitney: the chance a positive scores above a negative, ties count half)
    and, per specificity, the best sensitivity of a threshold whose specificity is at
    least that (as components.scoring.metrics.sensitivity_at_specificity); NaN where a
    resample lacks positives or negatives.

    Only the negatives are sorted and summed cumulatively; each positive finds the
    negative weight below its score (and tied with it) by binary search."""
    negatives, positives = np.flatnonzero(~positive), np.flatnonzero(positive)
    order = np.argsort(scores[negatives], kind="stable")
    neg_scores = scores[negatives][order]
    neg_cum = np.zeros((len(negatives) + 1, weights.shape[1]))
    np.cumsum(weights[negatives[order]], axis=0, out=neg_cum[1:])
    pos_w, pos_scores = weights[positives], scores[positives]
    n_pos, n_neg = pos_w.sum(0), neg_cum[-1]
    defined = (n_pos > 0) & (n_neg > 0)
    below = neg_cum[np.searchsorted(neg_scores, pos_scores, "left")]
    up_to = neg_cum[np.searchsorted(neg_scores, pos_scores, "right")]
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.where(defined, 0.5 * (pos_w * (below + up_to)).sum(0) / (n_pos * n_neg), np.nan)
    pos_order = np.argsort(pos_scores, kind="stable")
    pos_sorted = pos_scores[pos_order]
    pos_cum = np.zeros((len(positives) + 1, weights.shape[1]))
    np.cumsum(pos_w[pos_order], axis=0, out=pos_cum[1:])
    # Negative weight scoring at or above each negative's score, ties included.
    at_or_above = n_neg - neg_cum[np.searchsorted(neg_scores, neg_scores, "left")]
    columns = np.arange(weights.shape[1])
    sensitivities = []
    for specificity in specificities:
        fits = at_or_above <= (1.0 - specificity + 1e-12) * n_neg
        # The lowest allowed threshold lies just above the highest negative score that
        # does not fit: every positive above that score is caught.
        # (No negatives: every threshold fits; argmax of an empty column would raise.)
        first = np.where(fits.any(0), fits.argmax(0), len(negatives)) if len(negatives) else np.zeros(len(columns), int)
        cut = neg_scores[np.maximum(first - 1, 0)] if len(negatives) else np.zeros(len(columns))
        caught = n_pos - pos_cum[np.searchsorted(pos_sorted, cut, "right"), columns]
        with np.errstate(invalid="ignore", divide="ignore"):
            sensitivities.append(np.where(defined, np.where(first == 0, 1.0, caught / n_pos), np.nan))
    return auc, sensitivities


def _sums_by_class(weights: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(classes, resamples): the weights of the rows of each class summed (row sums, not
    a matrix product: BLAS threads fare badly on a busy machine)."""
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=k)
    sums = np.zeros((k, weights.shape[1]))
    present = counts > 0
    sums[present] = np.add.reduceat(weights[order], np.r_[0, np.cumsum(counts)[:-1]][present], axis=0)
    return sums


def _mean_of_defined(values: np.ndarray) -> np.ndarray:
    """Column means over the non-NaN entries; NaN for a column with none."""
    defined = ~np.isnan(values)
    count = defined.sum(0)
    return np.where(count > 0, np.where(defined, values, 0.0).sum(0) / np.maximum(count, 1), np.nan)


def resampled_metrics(
    weights: np.ndarray,
    y_true: np.ndarray,
    probs: np.ndarray,
    predicted: np.ndarray,
    classes: list[str],
    melanoma_class: str = "melanoma",
    only: str | None = None,
) -> dict[str, np.ndarray]:
    """The headline metrics (names as evaluation's headline_metrics: accuracy,
    balanced_accuracy, macro_f1, macro_auc, melanoma_auc, melanoma_sensitivity_at_NN_specificity,
    recall_<class>) of every column of ``weights`` (images x resamples); with weights of
    1 they equal classification_metrics'. ``only``: that metric alone is sure to be there."""
    k = len(classes)
    correct = predicted == y_true
    true_k = _sums_by_class(weights, y_true, k)
    hits_k = _sums_by_class(weights[correct], y_true[correct], k)
    predicted_k = _sums_by_class(weights, predicted, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(true_k > 0, hits_k / true_k, np.nan)
        f1 = np.where(true_k + predicted_k > 0, 2 * hits_k / (true_k + predicted_k), 0.0)
    # sklearn's balanced accuracy: the mean recall of the classes present
    out = {
        "accuracy": hits_k.sum(0) / true_k.sum(0),
        "balanced_accuracy": _mean_of_defined(recall),
        "macro_f1": f1.mean(0),
        **{f"recall_{c}": recall[i] for i, c in enumerate(classes)},
    }
    if only in out:
        return out
    ranked = classes if only in (None, "macro_auc") else [c for c in classes if c == melanoma_class]
    aucs = np.full((k, weights.shape[1]), np.nan)
    for c in ranked:
        i = classes.index(c)
        melanoma = c == melanoma_class
        aucs[i], sensitivities = rank_metrics(y_true == i, probs[:, i], weights, SPECIFICITIES if melanoma else ())
        if melanoma:
            out["melanoma_auc"] = aucs[i]
            out.update(
                {
                    f"melanoma_sensitivity_at_{round(s * 100)}_specificity": v
                    for s, v in zip(SPECIFICITIES, sensitivities)
                }
            )
    out["macro_auc"] = _mean_of_defined(aucs)
    return out


def bootstrap(
    resample: Resampling,
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    melanoma_class: str = "melanoma",
    decision_bias: list[float] | None = None,
    only: str | None = None,
) -> dict[str, np.ndarray]:
    """Every headline metric (or ``only`` that one) of every resample: name -> (resamples,) array."""
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    predicted = decide_classes(probs, decision_bias)
    blocks = [resampled_metrics(w, y_true, probs, predicted, classes, melanoma_class, only) for w in resample.weights()]
    return {name: np.concatenate([b[name] for b in blocks]) for name in blocks[0]} if blocks else {}


def percentile_interval(values: np.ndarray) -> list[float] | None:
    """[low, high] of the LEVEL interval of the defined values; None if fewer than half
    the resamples define the metric (a class too rare in the test split)."""
    defined = values[~np.isnan(values)]
    if len(defined) < len(values) / 2 or not len(defined):
        return None
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(defined, [tail, 100 - tail])
    return [float(low), float(high)]


def intervals(
    resample: Resampling,
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    melanoma_class: str = "melanoma",
    decision_bias: list[float] | None = None,
) -> dict:
    """metrics.json's ``intervals``: how they were drawn, and [low, high] per metric name."""
    values = bootstrap(resample, y_true, probs, classes, melanoma_class, decision_bias)
    found = {name: percentile_interval(v) for name, v in values.items()}
    return {**resample.describe(), "values": {k: v for k, v in found.items() if v is not None}}


@dataclass(frozen=True)
class Difference:
    """One model minus another on one metric, on the same test images, with its interval."""

    metric: str
    estimate: float
    low: float
    high: float
    resamples: int
    unit: str
    units: int

    def describe(self) -> str:
        return (
            f"difference {self.estimate:+.4f}, {round(LEVEL * 100)} % interval [{self.low:+.4f}, {self.high:+.4f}] "
            f"(paired bootstrap, {self.resamples} resamples of {self.units} {self.unit})"
        )


def paired_difference(
    metric: str, resample: Resampling, new: Scored, old: Scored, melanoma_class: str = "melanoma"
) -> Difference | None:
    """``new`` minus ``old`` on ``metric`` (the same test images, in the same order), both
    resampled with the same draws; None where the metric is undefined for either."""
    if new.metrics.get(metric) is None or old.metrics.get(metric) is None:
        return None
    classes = new.metrics["classes"]
    values = [
        bootstrap(resample, s.y_true, s.probs, classes, melanoma_class, s.decision_bias, metric)[metric]
        for s in (new, old)
    ]
    interval = percentile_interval(values[0] - values[1])
    if interval is None:
        return None
    return Difference(
        metric,
        float(new.metrics[metric] - old.metrics[metric]),
        *interval,
        resample.resamples,
        resample.unit,
        resample.groups,
    )

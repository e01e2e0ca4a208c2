"""Results per subgroup of the test split: by sex, age band, body site and how the
diagnosis was confirmed (the source's metadata, components.data.labels.METADATA_COLUMNS),
per image and per lesion: n, balanced accuracy, melanoma AUC, and the melanoma flag's
sensitivity and specificity at the model's stored operating point, each with its 95 %
interval (the bootstrap over lesions of components.scoring.intervals, within the
subgroup). A subgroup too small to say anything is marked ``small``, never left out."""

from __future__ import annotations

import numpy as np

from components.scoring.decisions import decide_classes
from components.scoring.intervals import percentile_interval, resampled_metrics, resampling
from components.scoring.lesions import lesion_labels, lesion_means

ATTRIBUTES = ("sex", "age_band", "body_site", "confirmation")
AGE_BANDS = ((30, "<30"), (50, "30-49"), (70, "50-69"), (float("inf"), ">=70"))
UNKNOWN = "unknown"
# Fewer images than this, or some melanomas but fewer than MIN_MELANOMAS (its melanoma
# sensitivity then rests on a handful), and a subgroup is marked small: its intervals are
# too wide to act on. A subgroup with no melanoma has no melanoma sensitivity or AUC at
# all (HAM10000's follow-up cases), and is small only by its number of images.
MIN_IMAGES = 30
MIN_MELANOMAS = 5
FIGURES = ("balanced_accuracy", "melanoma_auc", "melanoma_sensitivity", "melanoma_specificity")


def age_band(age: str) -> str:
    try:
        years = float(age)
    except (TypeError, ValueError):
        return UNKNOWN
    if np.isnan(years):
        return UNKNOWN
    return next(name for upper, name in AGE_BANDS if years < upper)


def subgroup_values(metadata: list[dict[str, str]]) -> dict[str, list[str]]:
    """attribute -> each image's value of it ('unknown' where the source has none)."""
    return {
        "sex": [m.get("sex") or UNKNOWN for m in metadata],
        "age_band": [age_band(m.get("age", "")) for m in metadata],
        "body_site": [m.get("body_site") or UNKNOWN for m in metadata],
        "confirmation": [m.get("confirmation") or UNKNOWN for m in metadata],
    }


def _figures(weights, y, probs, predicted, classes, melanoma_class, flagged) -> dict[str, np.ndarray]:
    """FIGURES of every column of ``weights`` (images x resamples)."""
    found = resampled_metrics(weights, y, probs, predicted, classes, melanoma_class, "melanoma_auc")
    out = {"balanced_accuracy": found["balanced_accuracy"], "melanoma_auc": found.get("melanoma_auc")}
    if flagged is not None:
        positive = y == classes.index(melanoma_class)
        pos, neg = weights[positive].sum(0), weights[~positive].sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["melanoma_sensitivity"] = np.where(pos > 0, weights[positive & flagged].sum(0) / pos, np.nan)
            out["melanoma_specificity"] = np.where(neg > 0, weights[~positive & ~flagged].sum(0) / neg, np.nan)
    return {k: v for k, v in out.items() if v is not None}


def _row(y, probs, predicted, classes, melanoma_class, threshold, ids, unit, resamples, seed) -> dict:
    """n, melanomas, small, and each figure with its interval (``<figure>_ci``)."""
    melanoma = classes.index(melanoma_class) if melanoma_class in classes else None
    flagged = probs[:, melanoma] >= threshold if melanoma is not None and threshold is not None else None
    melanomas = int((y == melanoma).sum()) if melanoma is not None else 0
    row = {"n": int(len(y)), "melanomas": melanomas, "small": len(y) < MIN_IMAGES or 0 < melanomas < MIN_MELANOMAS}
    point = _figures(np.ones((len(y), 1)), y, probs, predicted, classes, melanoma_class, flagged)
    plan = resampling(ids, len(y), unit or "images", resamples, seed)
    drawn = [_figures(w, y, probs, predicted, classes, melanoma_class, flagged) for w in plan.weights()]
    for name, value in point.items():
        row[name] = None if np.isnan(value[0]) else float(value[0])
        row[f"{name}_ci"] = percentile_interval(np.concatenate([d[name] for d in drawn]))
    return row


def subgroup_results(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    melanoma_class: str,
    decision_bias: list[float] | None,
    melanoma_threshold: float | None,
    metadata: list[dict[str, str]],
    groups: list[str] | None,
    unit: str,
    resamples: int = 1000,
    seed: int = 0,
) -> list[dict]:
    """One row per (attribute, value, level): level "image", and "lesion" (each lesion's
    images' mean probabilities) where ``unit`` is lesions. Attributes the source does not
    describe at all are left out."""
    y_true, probs = np.asarray(y_true, dtype=int), np.asarray(probs, dtype=np.float64)
    ids = np.asarray(groups if groups is not None else [""] * len(y_true), dtype=object)
    per_lesion = unit == "lesions" and any(ids)

    def row(y, p, group_ids, what) -> dict:
        predicted = decide_classes(p, decision_bias)
        return _row(y, p, predicted, classes, melanoma_class, melanoma_threshold, group_ids, what, resamples, seed)

    rows = []
    for attribute, values in subgroup_values(metadata).items():
        values = np.asarray(values, dtype=object)
        if (values == UNKNOWN).all():
            continue
        for value in sorted(set(values)):
            members = np.flatnonzero(values == value)
            y, p, g = y_true[members], probs[members], list(ids[members])
            rows.append({"attribute": attribute, "value": value, "level": "image", **row(y, p, g, unit)})
            if per_lesion:
                names, mean_probs, _ = lesion_means(p, g)
                lesion_y = lesion_labels(y, g, len(classes))
                rows.append(
                    {
                        "attribute": attribute,
                        "value": value,
                        "level": "lesion",
                        **row(lesion_y, mean_probs, list(names), "lesions"),
                    }
                )
    return rows


def floor_failures(rows: list[dict], floors: dict[str, float]) -> list[str]:
    """The gate's subgroup floors (champion_gate.subgroup_floors): each subgroup, not small, whose
    figure is below its floor, per lesion where there are lesion rows, else per image."""
    if not floors or not rows:
        return []
    level = "lesion" if any(r["level"] == "lesion" for r in rows) else "image"
    return [
        f"{name} {r[name]:.3f} < floor {floor:.3f} in {r['attribute']}={r['value']} ({r['n']} {level}s)"
        for r in rows
        if r["level"] == level and not r["small"]
        for name, floor in floors.items()
        if r.get(name) is not None and r[name] < floor
    ]


def subgroup_table(rows: list[dict]) -> str:
    """The rows as CSV (the MLflow table artifact, filenames.SUBGROUPS_TABLE)."""
    import csv
    import io

    columns = ["attribute", "value", "level", "n", "melanomas", "small"]
    for name in FIGURES:
        columns += [name, f"{name}_ci_low", f"{name}_ci_high"]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        flat = dict(r)
        for name in FIGURES:
            low, high = r.get(f"{name}_ci") or (None, None)
            flat.update({f"{name}_ci_low": low, f"{name}_ci_high": high})
        writer.writerow(flat)
    return out.getvalue()

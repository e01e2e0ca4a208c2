"""What a clinic asks of an evaluation beyond the overall metrics, from the model's
test probabilities and what was fitted with it on validation
(components.scoring.inference.LoadedModel): calibration before and after its temperature,
the melanoma operating points' test sensitivity and specificity with intervals, referral
(risk-coverage; accuracy and melanoma sensitivity of the images kept at 80 % and 90 %
coverage) and results per subgroup (components.evaluation.subgroups)."""

from __future__ import annotations

import numpy as np

from components.core.settings import EvaluateConfig
from components.evaluation.subgroups import FIGURES, subgroup_results
from components.scoring import operating_points, referral
from components.scoring.calibration import apply_temperature, brier_score
from components.scoring.decisions import decide_classes
from components.scoring.intervals import resampling
from components.scoring.metrics import expected_calibration_error


def calibration_section(y_true: np.ndarray, probs: np.ndarray, temperature: float) -> dict:
    """ECE and Brier score of the test probabilities before and after the temperature
    (``probs`` are after it: the model's own; before is undone exactly, T -> 1/T)."""
    raw = apply_temperature(probs, 1.0 / temperature)
    return {
        "temperature": temperature,
        "ece_before": expected_calibration_error(y_true, raw) if len(y_true) else None,
        "ece_after": expected_calibration_error(y_true, probs) if len(y_true) else None,
        "brier_before": brier_score(raw, y_true),
        "brier_after": brier_score(probs, y_true),
    }


def clinical_metrics(
    loaded,
    y_true: np.ndarray,
    probs: np.ndarray,
    view_probs: np.ndarray | None,
    cfg: EvaluateConfig,
    groups: list[str] | None = None,
    unit: str = "",
    metadata: list[dict[str, str]] | None = None,
) -> dict:
    """metrics.json's ``calibration``, ``operating_points``, ``referral`` and ``subgroups``
    of ``loaded``'s (calibrated) ``probs`` on labelled test images."""
    y_true = np.asarray(y_true, dtype=int)
    classes = loaded.classes
    out: dict = {"calibration": calibration_section(y_true, probs, loaded.temperature)}
    plan = resampling(groups, len(y_true), unit, cfg.bootstrap_resamples, cfg.bootstrap_seed)
    melanoma = classes.index(cfg.melanoma_class) if cfg.melanoma_class in classes else None
    positive = y_true == melanoma if melanoma is not None else None
    if melanoma is not None and loaded.operating_points:
        out["operating_points"] = {
            "melanoma_class": cfg.melanoma_class,
            "flag": loaded.operating_points.get("flag"),
            "points": operating_points.rates_on_test(loaded.operating_points, probs[:, melanoma], positive, plan),
        }
    scores = loaded.uncertainty(probs, view_probs)
    correct = decide_classes(probs, loaded.decision_bias) == y_true
    out["referral"] = {
        "threshold": loaded.refer_threshold,
        "coverage_fitted": (loaded.referral or {}).get("coverage"),
        "coverage_on_test": float((scores <= loaded.refer_threshold).mean())
        if loaded.refer_threshold is not None and len(scores)
        else None,
        **referral.risk_coverage(scores, correct, positive, loaded.melanoma_flags(probs)),
    }
    if metadata is not None and any(metadata):
        out["subgroups"] = subgroup_results(
            y_true,
            probs,
            classes,
            cfg.melanoma_class,
            loaded.decision_bias,
            loaded.melanoma_threshold,
            metadata,
            groups,
            unit,
            cfg.bootstrap_resamples,
            cfg.bootstrap_seed,
        )
    return out


def clinical_headline(metrics: dict) -> dict[str, float]:
    """The key figures as flat name -> value (MLflow and KFP metrics)."""
    flat: dict[str, float] = {}
    for k, v in (metrics.get("calibration") or {}).items():
        if v is not None:
            flat[k if k == "temperature" else f"{k}_temperature"] = v
    for name, point in ((metrics.get("operating_points") or {}).get("points") or {}).items():
        for rate in ("sensitivity", "specificity"):
            value, ci = point["test"].get(rate), point["test"].get(f"{rate}_ci")
            if value is not None:
                flat[f"melanoma_{rate}_at_target_{name}"] = value
            if ci:
                flat.update(
                    {
                        f"melanoma_{rate}_at_target_{name}_ci_low": ci[0],
                        f"melanoma_{rate}_at_target_{name}_ci_high": ci[1],
                    }
                )
    for coverage, figures in ((metrics.get("referral") or {}).get("at") or {}).items():
        for k in ("accuracy", "melanoma_sensitivity"):
            if figures.get(k) is not None:
                flat[f"{k}_at_{coverage}_coverage"] = figures[k]
    for row in metrics.get("subgroups") or []:
        name = f"subgroup_{row['attribute']}_{_metric_safe(row['value'])}_{row['level']}"
        for figure in FIGURES:
            if row.get(figure) is not None:
                flat[f"{name}_{figure}"] = row[figure]
    return flat


def _metric_safe(value: str) -> str:
    """An MLflow metric name part: letters, digits, _ - . only ('<30' -> 'lt30')."""
    value = value.replace(">=", "ge").replace("<", "lt").replace(" ", "_")
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in value)

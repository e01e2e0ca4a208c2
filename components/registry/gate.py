"""The champion gate's decision, a pure function of two models' metrics on the same test
images and the paired difference between them (components.scoring.intervals): champion
when every absolute threshold is met and the new model is better than the champion
beyond the test split's noise; challenger otherwise, with the reason in words.
components.registry.champion applies it in the registry."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from components.core.settings import EvaluateConfig
from components.evaluation.subgroups import floor_failures
from components.scoring.intervals import Difference

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass
class GateDecision:
    alias: str
    reason: str
    # metric -> {"new": x, "champion": y or None, "minimum": z or None}
    comparison: dict[str, dict[str, float | None]]
    # new minus champion on the gate's metric with its interval (scoring.intervals.Difference), when compared
    difference: dict | None = None


def minimums(cfg: EvaluateConfig) -> dict[str, float]:
    """The absolute thresholds in force (0 in the config: no threshold)."""
    values = {
        "balanced_accuracy": cfg.min_balanced_accuracy,
        "melanoma_auc": cfg.min_melanoma_auc,
        "macro_auc": cfg.min_macro_auc,
    }
    return {k: v for k, v in values.items() if v > 0}


def decide(
    new: dict,
    champion: dict | None,
    cfg: EvaluateConfig,
    champion_problem: str = "",
    difference: Difference | None = None,
) -> GateDecision:
    """The gate itself, a pure function of the two models' metrics on the same images and
    ``difference``, new minus champion on ``cfg.champion_metric`` with its interval
    (components.scoring.intervals.paired_difference; None where the metric is undefined).

    ``champion`` None with ``champion_problem`` empty: there is no champion yet.
    ``champion_problem`` set: a champion exists but could not be scored here (say, other
    classes); the new model then stays a challenger and a person decides."""
    metric = cfg.champion_metric
    floors = minimums(cfg)
    compared = sorted({metric, *floors})
    comparison = {
        k: {"new": new.get(k), "champion": (champion or {}).get(k), "minimum": floors.get(k)} for k in compared
    }
    failures = [
        f"{k} {_fmt(new.get(k))} < minimum {floor:.3f}"
        for k, floor in floors.items()
        if new.get(k) is None or new[k] < floor
    ] + floor_failures(new.get("subgroups") or [], cfg.subgroup_floors)
    if failures:
        return GateDecision(CHALLENGER, "below the absolute thresholds: " + "; ".join(failures), comparison)
    if champion_problem:
        return GateDecision(CHALLENGER, f"not compared with the current champion: {champion_problem}", comparison)
    if champion is None:
        return GateDecision(CHAMPION, "no champion yet and every absolute threshold met", comparison)
    if difference is None:
        return GateDecision(CHALLENGER, f"{metric} undefined on this test split: cannot compare", comparison)
    verdict = (
        f"{metric} {new[metric]:.4f} vs champion {champion[metric]:.4f} on the same test split, {difference.describe()}"
    )
    margin = f"the margin {cfg.champion_margin:+.4f}"
    compared_with = asdict(difference)
    if difference.low > cfg.champion_margin:
        return GateDecision(
            CHAMPION,
            f"better than the champion beyond the test split's noise (the interval's lower "
            f"end is above {margin}): {verdict}",
            comparison,
            compared_with,
        )
    if difference.high < 0:
        return GateDecision(CHALLENGER, f"worse than the champion: {verdict}", comparison, compared_with)
    return GateDecision(
        CHALLENGER,
        f"not shown better than the champion (the interval's lower end is not above "
        f"{margin}), so the champion stays: {verdict}",
        comparison,
        compared_with,
    )


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"

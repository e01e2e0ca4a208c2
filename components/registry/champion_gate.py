"""The champion gate's decision (not the retraining check: components.registry.retraining_check),
a pure function of two models' metrics on the same test images (those neither trained or
validated on) and the paired difference between them (components.scoring.intervals):
champion when every absolute threshold is met and the new model is better than the
champion beyond the test split's noise; challenger otherwise, with the reason in words.
Before any comparison, whether the two were trained on compatible data. components.registry.champion
applies it in the registry."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from components.core.settings import ChampionGateConfig
from components.evaluation.subgroups import floor_failures
from components.registry.training_record import TrainingRecord
from components.scoring.intervals import Difference

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class Champion:
    version: str
    fingerprint: str  # empty when the version was registered without one
    run_id: str = ""  # the MLflow run that logged it (empty for a version made without one)
    synthetic: bool = False  # its SYNTHETIC_TAG: trained on the generated demo data


@dataclass
class GateDecision:
    alias: str
    reason: str
    # metric -> {"new": x, "champion": y or None, "minimum": z or None}
    comparison: dict[str, dict[str, float | None]]
    # new minus champion on the gate's metric with its interval (scoring.intervals.Difference), when compared
    difference: dict | None = None
    # test images compared, and those left out by reason (training_record.FairTestImages)
    test_images: dict | None = None


def minimums(cfg: ChampionGateConfig) -> dict[str, float]:
    """The absolute thresholds in force (0 in the config: no threshold)."""
    values = {
        "balanced_accuracy": cfg.min_balanced_accuracy,
        "melanoma_auc": cfg.min_melanoma_auc,
        "macro_auc": cfg.min_macro_auc,
    }
    return {k: v for k, v in values.items() if v > 0}


def decide_promotion(
    new: dict,
    champion: dict | None,
    cfg: ChampionGateConfig,
    champion_problem: str = "",
    difference: Difference | None = None,
) -> GateDecision:
    """The gate itself, a pure function of the two models' metrics on the same images and
    ``difference``, new minus champion on ``cfg.metric`` with its interval
    (components.scoring.intervals.paired_difference; None where the metric is undefined).

    ``champion`` None with ``champion_problem`` empty: there is no champion yet.
    ``champion_problem`` set: a champion exists but could not be scored here (say, other
    classes); the new model then stays a challenger and a person decides."""
    metric = cfg.metric
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
    margin = f"the margin {cfg.margin:+.4f}"
    compared_with = asdict(difference)
    if difference.low > cfg.margin:
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


def incompatibility(
    new: TrainingRecord, champion: TrainingRecord | None, champion_synthetic: bool, why_none: str
) -> str:
    """Why the two models' data cannot be compared ('' when it can): synthetic against real
    images, other classes, or no record of what the champion trained on (``why_none``)."""
    synthetic = champion.synthetic if champion is not None else champion_synthetic
    if synthetic != new.synthetic:
        kinds = {True: "synthetic", False: "real"}
        return f"the champion was trained on {kinds[synthetic]} images, this model on {kinds[new.synthetic]} ones"
    if champion is None:
        return f"no record of the images the champion trained on ({why_none})"
    if champion.classes != new.classes:
        return f"other classes: the champion's {', '.join(champion.classes)}; this model's {', '.join(new.classes)}"
    return ""


def decide_across_data(new: dict, problem: str, synthetic_over_real: bool, cfg: ChampionGateConfig) -> GateDecision:
    """The decision when the data is not comparable (``problem``): challenger, unless
    ``cfg.allow_incompatible_data`` lets the floors alone decide. A model trained on
    synthetic images never replaces a champion trained on real ones (``synthetic_over_real``)."""
    if synthetic_over_real:
        decision = decide_promotion(new, None, cfg, champion_problem=problem)
        decision.reason = f"a model trained on synthetic images never replaces a real champion: {problem}"
        decision.alias = CHALLENGER
        return decision
    if not cfg.allow_incompatible_data:
        decision = decide_promotion(new, None, cfg, champion_problem=problem)
        if decision.alias == CHALLENGER and decision.reason.startswith("not compared"):
            decision.reason += " (champion_gate.allow_incompatible_data=true promotes it on the floors alone)"
        return decision
    decision = decide_promotion(new, None, cfg)
    if decision.alias == CHAMPION:
        decision.reason = f"promoted over an incompatible champion (champion_gate.allow_incompatible_data): {problem}"
    return decision


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"

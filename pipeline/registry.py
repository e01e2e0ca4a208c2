"""The champion gate on the MLflow model registry.

Every trained model is registered as a new version. It gets the ``champion`` alias only
if it reaches the config's minimum metrics and is not worse than the current champion
by more than the configured margin on the chosen metric, with the champion re-scored
on the same test split in the same step (never its old, possibly other-split numbers).
Otherwise it gets ``challenger``. The decision, the numbers and the reason go to the
version's tags, the pipeline's MLflow run and the report.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from components.errors import UserError
from pipeline.config import EvaluateConfig

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass
class GateDecision:
    alias: str
    reason: str
    # metric -> {"new": x, "champion": y or None, "minimum": z or None}
    comparison: dict[str, dict[str, float | None]]


def minimums(cfg: EvaluateConfig) -> dict[str, float]:
    """The absolute thresholds in force (0 in the config: no threshold)."""
    values = {"balanced_accuracy": cfg.min_balanced_accuracy, "melanoma_auc": cfg.min_melanoma_auc,
              "macro_auc": cfg.min_macro_auc}
    return {k: v for k, v in values.items() if v > 0}


def decide(new: dict, champion: dict | None, cfg: EvaluateConfig, champion_problem: str = "") -> GateDecision:
    """The gate itself, a pure function of the two models' metrics on the same images.

    ``champion`` None with ``champion_problem`` empty: there is no champion yet.
    ``champion_problem`` set: a champion exists but could not be scored here (say, other
    classes); the new model then stays a challenger and a person decides."""
    metric = cfg.champion_metric
    floors = minimums(cfg)
    compared = sorted({metric, *floors})
    comparison = {k: {"new": new.get(k), "champion": (champion or {}).get(k), "minimum": floors.get(k)} for k in compared}
    failures = [f"{k} {_fmt(new.get(k))} < minimum {floor:.3f}" for k, floor in floors.items()
                if new.get(k) is None or new[k] < floor]
    if failures:
        return GateDecision(CHALLENGER, "below the absolute thresholds: " + "; ".join(failures), comparison)
    if champion_problem:
        return GateDecision(CHALLENGER, f"not compared with the current champion: {champion_problem}", comparison)
    if champion is None:
        return GateDecision(CHAMPION, "no champion yet and every absolute threshold met", comparison)
    if new.get(metric) is None or champion.get(metric) is None:
        return GateDecision(CHALLENGER, f"{metric} undefined on this test split: cannot compare", comparison)
    delta = new[metric] - champion[metric]
    verdict = (f"{metric} {new[metric]:.4f} vs champion {champion[metric]:.4f} (difference {delta:+.4f}, "
               f"allowed margin {cfg.champion_margin:.4f}) on the same test split")
    if delta < -cfg.champion_margin:
        return GateDecision(CHALLENGER, f"worse than the champion: {verdict}", comparison)
    return GateDecision(CHAMPION, f"not worse than the champion: {verdict}", comparison)


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def score_champion_on_test_split(champion_uri: str, tracking_uri: str, normalized_dir: str | Path,
                                 cfg: EvaluateConfig) -> tuple[dict | None, str]:
    """(metrics, '') of the champion on the test split, or (None, why it cannot be scored).

    A champion trained at another image size or resize mode is fed the same test images
    re-read from their sources with its own preprocessing."""
    from components import shards
    from components.metrics import classification_metrics
    from components.predict import ModelLoadError, load_images, load_model

    try:
        champion = load_model(champion_uri, tracking_uri)
    except ModelLoadError as exc:
        return None, str(exc)
    meta = shards.read_meta(normalized_dir)
    if champion.classes != meta["classes"]:
        return None, f"it predicts other classes ({', '.join(champion.classes)})"
    images, labels, uris = shards.read_all(shards.shard_paths(normalized_dir, "test"), meta["image_size"])
    if (champion.image_size, champion.resize_mode) != (meta["image_size"], meta.get("resize_mode", "pad")):
        images, errors = load_images(uris, champion.image_size, champion.resize_mode)
        if any(errors):
            return None, f"test images unreadable for its preprocessing: {next(e for e in errors if e)}"
    probs = champion.predict(images, cfg.batch_size, cfg.tta)
    return classification_metrics(labels, np.asarray(probs), meta["classes"], cfg.melanoma_class), ""


def register_with_gate(tracking_uri: str, model_name: str, model_uri: str, new_metrics: dict,
                       normalized_dir: str | Path, cfg: EvaluateConfig) -> dict:
    """Register ``model_uri`` as a new version of ``model_name`` and give it the alias the
    gate decides; returns the decision with version, URIs and the previous champion."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from pipeline import tracking

    client = tracking.client(tracking_uri)
    try:
        previous = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:  # no such model or no champion alias yet
        previous = None
    champion_metrics, problem = (None, "")
    if previous is not None:
        champion_metrics, problem = score_champion_on_test_split(
            f"models:/{model_name}@{CHAMPION}", tracking_uri, normalized_dir, cfg)
    decision = decide(new_metrics, champion_metrics, cfg, problem)

    tracking.use_store(tracking_uri)
    try:
        version = mlflow.register_model(model_uri, model_name)
    except MlflowException as exc:
        raise UserError(f"cannot register {model_uri} as {model_name}: {exc.message.splitlines()[0]}") from None
    client.set_registered_model_alias(model_name, decision.alias, version.version)
    tags = {"gate.alias": decision.alias, "gate.reason": decision.reason[:5000],
            **{f"test.{k}": f"{v['new']:.4f}" for k, v in decision.comparison.items() if v["new"] is not None}}
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version.version, key, value)
    return {**asdict(decision), "model_name": model_name, "version": str(version.version),
            "model_uri": f"models:/{model_name}/{version.version}",
            "previous_champion": f"version {previous.version}" if previous is not None else None,
            "metric": cfg.champion_metric, "margin": cfg.champion_margin}


def log_gate(tracking_uri: str, run_id: str, gate: dict) -> None:
    """The decision, its reason and both models' numbers into the pipeline's MLflow run."""
    from mlflow.entities import RunTag
    from pipeline import tracking

    metrics = tracking.metrics_at({f"gate_{who}_{k}": v[who] for k, v in gate["comparison"].items()
                                   for who in ("new", "champion") if v[who] is not None})
    tags = [RunTag("gate.alias", gate["alias"]), RunTag("gate.reason", gate["reason"][:5000]),
            RunTag("gate.registered_version", gate["model_uri"])]
    tracking.client(tracking_uri).log_batch(run_id, metrics=metrics, tags=tags)

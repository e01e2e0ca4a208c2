"""The champion: the one module that finds, compares, registers and promotes models in
the MLflow model registry, and tags each version with the data it was trained on.

The champion is ``models:/<model_name>@champion``. Every trained model is registered as
a new version, carrying its gate decision and its data fingerprint from the moment it
exists (tags are set at registration, so no version is ever left untagged). It gets the
``champion`` alias only if it reaches the configured minimum metrics and is not worse
than the current champion by more than the margin on the chosen metric, with the
champion re-scored on the same test split in the same step; otherwise ``challenger``.

One error policy: only "not found" (no such model, or no champion alias yet) means
there is no champion. Any other registry error (permission, server, network) fails the
step, which KFP retries; it never hands the alias to a model that was not compared.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from components.core.errors import UserError
from components.core.settings import EvaluateConfig

CHAMPION = "champion"
CHALLENGER = "challenger"
FINGERPRINT_TAG = "data_fingerprint"
# "true" on a version trained on the generated demo data (components.data.synthetic).
SYNTHETIC_TAG = "data.synthetic"
# The champion version a decision was made against ("none": there was none): versions
# decided against the same one were promoted concurrently.
COMPARED_WITH_TAG = "gate.compared_with"
# A promotion re-reads the alias before moving it; if another run moved it meanwhile,
# the decision is made again against the new champion, at most this many times.
MAX_PROMOTION_ATTEMPTS = 3


@dataclass(frozen=True)
class Champion:
    version: str
    fingerprint: str  # empty when the version was registered without one
    run_id: str = ""  # the MLflow run that logged it (empty for a version made without one)


@dataclass
class GateDecision:
    alias: str
    reason: str
    # metric -> {"new": x, "champion": y or None, "minimum": z or None}
    comparison: dict[str, dict[str, float | None]]


def _is_not_found(exc: Exception) -> bool:
    """MLflow's two ways of saying "no champion": the registered model does not exist
    (RESOURCE_DOES_NOT_EXIST), or it has no such alias (INVALID_PARAMETER_VALUE,
    "Registered model alias champion not found.")."""
    code = getattr(exc, "error_code", "")
    message = getattr(exc, "message", str(exc))
    return code == "RESOURCE_DOES_NOT_EXIST" or (code == "INVALID_PARAMETER_VALUE" and "not found" in message)


def find_champion(tracking_uri: str, model_name: str) -> Champion | None:
    """The version behind ``@champion``; None only when the registry says it does not exist."""
    from mlflow.exceptions import MlflowException

    from components.core import tracking
    try:
        version = tracking.client(tracking_uri).get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException as exc:
        if _is_not_found(exc):
            return None
        raise RegistryUnavailable(f"cannot look up {model_name}@{CHAMPION} in {tracking_uri}: "
                                  f"{exc.message.splitlines()[0] if exc.message else exc}") from None
    return Champion(str(version.version), version.tags.get(FINGERPRINT_TAG, ""), str(version.run_id or ""))


class RegistryUnavailable(UserError):
    """The registry answered with something other than "not found": the step fails (and
    KFP retries it) rather than decide without the champion."""


# ---- the decision ----------------------------------------------------------------


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
    comparison = {
        k: {"new": new.get(k), "champion": (champion or {}).get(k), "minimum": floors.get(k)} for k in compared
    }
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

    The test images are streamed from their shards in batches; a champion trained at
    another image size or resize mode is fed the same test images re-read from their
    sources with its own preprocessing, a few batches at a time."""
    from components.data import tfrecords
    from components.scoring.inference import ModelLoadError, load_model
    from components.scoring.metrics import classification_metrics

    try:
        champion = load_model(champion_uri, tracking_uri)
    except ModelLoadError as exc:
        return None, str(exc)
    meta = tfrecords.read_meta(normalized_dir)
    if champion.classes != meta["classes"]:
        return None, f"it predicts other classes ({', '.join(champion.classes)})"
    paths = tfrecords.shard_paths(normalized_dir, "test")
    labels, uris = tfrecords.read_labels(paths)
    if (champion.image_size, champion.resize_mode) != (meta["image_size"], meta.get("resize_mode", "pad")):
        probs, errors = champion.probabilities_of_files(uris, cfg.batch_size, cfg.tta)
        if any(errors):
            return None, f"test images unreadable for its preprocessing: {next(e for e in errors if e)}"
    else:
        probs = champion.predict(
            tfrecords.image_dataset(paths, meta["image_size"], len(labels)), cfg.batch_size, cfg.tta
        )
    return classification_metrics(labels, probs, meta["classes"], cfg.melanoma_class, champion.decision_bias), ""


def _decide_against(champion: Champion | None, model_name: str, tracking_uri: str, new_metrics: dict,
                    normalized_dir: str | Path, cfg: EvaluateConfig) -> GateDecision:
    if champion is None:
        return decide(new_metrics, None, cfg)
    scored, problem = score_champion_on_test_split(f"models:/{model_name}/{champion.version}", tracking_uri,
                                                   normalized_dir, cfg)
    return decide(new_metrics, scored, cfg, problem)


# ---- registering and promoting ----------------------------------------------------


def register_and_promote(tracking_uri: str, model_name: str, model_uri: str, new_metrics: dict,
                         normalized_dir: str | Path, cfg: EvaluateConfig, data_fingerprint: str,
                         synthetic: bool = False) -> dict:
    """Register ``model_uri`` as a new version of ``model_name`` (tagged with its decision,
    data fingerprint and whether that data was synthetic) and give it the alias the gate
    decides; returns the decision
    with version, URIs and the champion it was compared with.

    Safe against a concurrent run: right before moving ``@champion`` the alias is read
    again, and if another run moved it meanwhile the decision is made again against the
    new champion. (Between that read and the move there remains a window of one registry
    call; the README says how schedules avoid it.)"""
    import mlflow
    from mlflow.exceptions import MlflowException

    from components.core import tracking
    compared_with = find_champion(tracking_uri, model_name)
    decision = _decide_against(compared_with, model_name, tracking_uri, new_metrics, normalized_dir, cfg)
    tracking.use_store(tracking_uri)
    try:
        version = str(mlflow.register_model(model_uri, model_name, tags={
            **_decision_tags(decision, compared_with), FINGERPRINT_TAG: data_fingerprint,
            SYNTHETIC_TAG: str(synthetic).lower()}).version)
    except MlflowException as exc:
        raise RegistryUnavailable(f"cannot register {model_uri} as {model_name}: "
                                  f"{exc.message.splitlines()[0]}") from None

    try:
        decision, compared_with = _promote(tracking_uri, model_name, version, compared_with, decision, new_metrics,
                                           normalized_dir, cfg, data_fingerprint)
    except MlflowException as exc:
        raise RegistryUnavailable(
            f"version {version} of {model_name} is registered with its decision and data "
            f"fingerprint, but giving it an alias failed: {exc.message.splitlines()[0]}"
        ) from None
    return {**asdict(decision), "model_name": model_name, "version": version,
            "model_uri": f"models:/{model_name}/{version}",
            "previous_champion": f"version {compared_with.version}" if compared_with is not None else None,
            "metric": cfg.champion_metric, "margin": cfg.champion_margin}


def _promote(tracking_uri: str, model_name: str, version: str, compared_with: Champion | None,
             decision: GateDecision, new_metrics: dict, normalized_dir: str | Path, cfg: EvaluateConfig,
             data_fingerprint: str) -> tuple[GateDecision, Champion | None]:
    """Give ``version`` the decided alias, deciding again if the champion moved since the
    comparison; returns the final decision and the champion it was made against."""
    from components.core import tracking
    client = tracking.client(tracking_uri)
    for _ in range(MAX_PROMOTION_ATTEMPTS):
        current = find_champion(tracking_uri, model_name)
        if current == compared_with:
            break
        compared_with = current
        decision = _decide_against(current, model_name, tracking_uri, new_metrics, normalized_dir, cfg)
        decision.reason += " (re-decided: another run moved the champion meanwhile)"
    else:
        raise RegistryUnavailable(f"{model_name}@{CHAMPION} kept moving during {MAX_PROMOTION_ATTEMPTS} attempts to "
                                  f"compare with it: version {version} registered without an alias")
    for key, value in _decision_tags(decision, compared_with).items():
        client.set_model_version_tag(model_name, version, key, value)
    client.set_registered_model_alias(model_name, decision.alias, version)
    if decision.alias == CHAMPION:
        decision = _settle_concurrent_promotions(tracking_uri, model_name, version, compared_with, decision, cfg,
                                                 data_fingerprint)
    return decision, compared_with


def _settle_concurrent_promotions(tracking_uri: str, model_name: str, version: str, compared_with: Champion | None,
                                  decision: GateDecision, cfg: EvaluateConfig, data_fingerprint: str) -> GateDecision:
    """After moving ``@champion`` to ``version``: if runs on the same data promoted
    their own versions at the same time (each compared with the same old champion, so
    neither saw the other: the same ``gate.compared_with``), leave the alias on the best
    of them on ``cfg.champion_metric``
    (same data, so the same test split and comparable numbers), whichever write landed
    last. A champion that no run of this set chose is left alone: it was decided later,
    knowing ours. Returns this version's decision, changed if it lost."""
    from components.core import tracking
    client = tracking.client(tracking_uri)
    current = find_champion(tracking_uri, model_name)
    baseline = _baseline(compared_with)
    metric_tag = f"test.{cfg.champion_metric}"
    rivals = {str(v.version): float(v.tags[metric_tag]) for v in client.search_model_versions(f"name='{model_name}'")
              if v.tags.get(COMPARED_WITH_TAG) == baseline and v.tags.get("gate.alias") == CHAMPION
              and metric_tag in v.tags and v.tags.get(FINGERPRINT_TAG) == data_fingerprint}
    if current is None or current.version not in rivals or version not in rivals:
        return decision
    best = max(rivals, key=lambda v: (rivals[v], int(v)))
    if best != current.version:
        client.set_registered_model_alias(model_name, CHAMPION, best)
    if best == version:
        return decision
    lost = GateDecision(CHALLENGER, f"promoted at the same time as version {best} of the same data, which has the "
                        f"better {cfg.champion_metric} ({rivals[best]:.4f} vs {rivals[version]:.4f}): "
                        f"{decision.reason}", decision.comparison)
    for key, value in _decision_tags(lost, compared_with).items():
        client.set_model_version_tag(model_name, version, key, value)
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    return lost


def _baseline(compared_with: Champion | None) -> str:
    return compared_with.version if compared_with is not None else "none"


def _decision_tags(decision: GateDecision, compared_with: Champion | None) -> dict[str, str]:
    return {"gate.alias": decision.alias, "gate.reason": decision.reason[:5000],
            COMPARED_WITH_TAG: _baseline(compared_with),
            **{f"test.{k}": f"{v['new']:.4f}" for k, v in decision.comparison.items() if v["new"] is not None}}


def log_gate(tracking_uri: str, run_id: str, gate: dict) -> None:
    """The decision, its reason and both models' numbers into the pipeline's MLflow run."""
    from mlflow.entities import RunTag

    from components.core import tracking
    metrics = tracking.metrics_at({f"gate_{who}_{k}": v[who] for k, v in gate["comparison"].items()
                                   for who in ("new", "champion") if v[who] is not None})
    tags = [RunTag("gate.alias", gate["alias"]), RunTag("gate.reason", gate["reason"][:5000]),
            RunTag("gate.registered_version", gate["model_uri"])]
    tracking.client(tracking_uri).log_batch(run_id, metrics=metrics, tags=tags)

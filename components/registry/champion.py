"""The champion: the one module that finds, registers and promotes models in the MLflow
model registry (the comparison: components.registry.rescoring and .champion_gate), and
tags each version with the data it was trained on.

The champion is ``models:/<model_name>@champion``. Every trained model is registered as
a new version, carrying its gate decision and its data fingerprint from the moment it
exists (tags are set at registration, so no version is ever left untagged). It gets the
``champion`` alias only if it reaches the configured minimum metrics and is better than
the current champion beyond the test split's noise: the champion is re-scored on the
same test split in the same step, on the test images neither model trained or validated on
(each model's run carries the record of those: components.registry.training_record), and
the lower end of the 95 % interval of the difference on the chosen metric (paired
bootstrap over lesions, components.scoring.intervals) must be above the margin; otherwise
``challenger``. Models trained on incompatible data (synthetic against real images, other
classes) are not compared: the new one stays challenger unless
``champion_gate.allow_incompatible_data``; a synthetic one never replaces a real champion.

One error policy: only "not found" (no such model, or no champion alias yet) means
there is no champion, and only a champion that cannot be read as a model leaves the new
one a "not compared" challenger. Any other registry error (permission, server, network)
fails the step, which KFP retries; it never hands the alias to a model that was not
compared. A retry reuses the version its earlier try registered: a model is registered
once and never compared with itself. ``@champion`` moved by hand (a rollback) stands.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace

from components.core.errors import UserError
from components.core.settings import ChampionGateConfig
from components.registry.champion_gate import CHALLENGER, CHAMPION, Champion, GateDecision
from components.registry.rescoring import Candidate
from components.registry.training_record import RecordUnavailable, log_record_of_version

FINGERPRINT_TAG = "data_fingerprint"
# "true" on a version trained on the generated demo data (components.data.synthetic).
SYNTHETIC_TAG = "data.synthetic"
# The champion version a decision was made against ("none": there was none).
COMPARED_WITH_TAG = "gate.compared_with"
# The model URI a version was registered from: how a retried step finds its own version.
REGISTERED_FROM_TAG = "registered_from"
# The whole decision as JSON, for a retry that finds it already made.
DECISION_TAG = "gate.decision"
# Epoch ms of the last read of @champion before the alias write, and of that write's end.
CHECKED_AT_TAG = "gate.checked_at"
PROMOTED_AT_TAG = "gate.promoted_at"
# A promotion re-reads the alias before moving it; if another run moved it meanwhile,
# the decision is made again against the new champion, at most this many times.
MAX_PROMOTION_ATTEMPTS = 3


@dataclass(frozen=True)
class Promotion:
    """One version on its way to an alias: what its registry writes need, together."""

    tracking_uri: str
    model_name: str
    version: str
    baseline: str  # the champion version it was compared with, "none" when there was none
    decision: GateDecision
    gate: ChampionGateConfig
    fingerprint: str  # of the data it was trained on


def find_champion(tracking_uri: str, model_name: str) -> Champion | None:
    """The version behind ``@champion``; None only when the registry says it does not exist."""
    from mlflow.exceptions import MlflowException

    from components.core import tracking

    try:
        version = tracking.client(tracking_uri).get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException as exc:
        if tracking.is_not_found(exc):
            return None
        raise RegistryUnavailable(
            f"cannot look up {model_name}@{CHAMPION} in {tracking_uri}: "
            f"{exc.message.splitlines()[0] if exc.message else exc}"
        ) from None
    return Champion(
        str(version.version),
        version.tags.get(FINGERPRINT_TAG, ""),
        str(version.run_id or ""),
        version.tags.get(SYNTHETIC_TAG) == "true",
    )


class RegistryUnavailable(UserError):
    """The registry answered with something other than "not found": the step fails (and
    KFP retries it) rather than decide without the champion."""


def _decide_against(champion: Champion | None, model_name: str, tracking_uri: str, new: Candidate) -> GateDecision:
    from components.registry.rescoring import decide_against
    from components.scoring.inference import ModelUnavailable

    try:
        return decide_against(champion, model_name, tracking_uri, new)
    except (ModelUnavailable, RecordUnavailable) as exc:
        raise RegistryUnavailable(f"cannot compare with the champion: {exc}") from None


# ---- registering and promoting ----------------------------------------------------


def register_and_promote(
    *, tracking_uri: str, model_name: str, model_uri: str, new: Candidate, data_fingerprint: str
) -> dict:
    """Register ``model_uri`` as a new version of ``model_name`` (tagged with its decision,
    data fingerprint and whether that data was synthetic) and give it the alias the champion
    gate decides on ``new``; returns the decision with version, URIs and the champion it
    was compared with.

    Safe against a concurrent run: right before moving ``@champion`` the alias is read
    again, and if another run moved it meanwhile the decision is made again against the
    new champion. (Between that read and the move there remains a window of one registry
    call; docs/reliability.md says how schedules avoid it.) Safe to retry: a version registered
    from ``model_uri`` is reused; once promoted, it keeps its recorded decision."""
    from mlflow.exceptions import MlflowException

    earlier = _registered_before(tracking_uri, model_name, model_uri)
    if earlier is not None and PROMOTED_AT_TAG in earlier.tags:
        return _result(_recorded(earlier), model_name, earlier.version, earlier.tags[COMPARED_WITH_TAG], new.gate)
    compared_with = find_champion(tracking_uri, model_name)
    if earlier is not None and compared_with is not None and compared_with.version == earlier.version:
        # The earlier try's alias write landed, then it failed: finish that promotion.
        promotion = Promotion(
            tracking_uri,
            model_name,
            earlier.version,
            earlier.tags[COMPARED_WITH_TAG],
            _recorded(earlier),
            new.gate,
            data_fingerprint,
        )
        try:
            decision = _after_alias_write(promotion, int(earlier.tags[CHECKED_AT_TAG]))
        except MlflowException as exc:
            raise RegistryUnavailable(
                f"cannot finish promoting version {earlier.version} of {model_name}: {exc.message.splitlines()[0]}"
            ) from None
        return _result(decision, model_name, earlier.version, promotion.baseline, new.gate)
    decision = _decide_against(compared_with, model_name, tracking_uri, new)
    version = (
        earlier.version
        if earlier is not None
        else _register(tracking_uri, model_name, model_uri, decision, compared_with, data_fingerprint, new)
    )
    if new.record is not None:
        _log_record(tracking_uri, model_name, version, new.record)
    promotion = Promotion(
        tracking_uri, model_name, version, _baseline(compared_with), decision, new.gate, data_fingerprint
    )
    try:
        promotion = _promote(promotion, compared_with, new)
    except MlflowException as exc:
        raise RegistryUnavailable(
            f"version {version} of {model_name} is registered with its decision and data "
            f"fingerprint, but giving it an alias failed: {exc.message.splitlines()[0]}"
        ) from None
    return _result(promotion.decision, model_name, version, promotion.baseline, new.gate)


def _log_record(tracking_uri: str, model_name: str, version: str, record) -> None:
    """The version's training record, into the run that logged the model, where a later
    gate reads it (Champion.run_id)."""
    from mlflow.exceptions import MlflowException

    try:
        log_record_of_version(tracking_uri, model_name, version, record)
    except MlflowException as exc:
        raise RegistryUnavailable(
            f"cannot log the training record of {model_name} version {version}: {exc.message.splitlines()[0]}"
        ) from None


def _register(
    tracking_uri: str,
    model_name: str,
    model_uri: str,
    decision: GateDecision,
    compared_with: Champion | None,
    data_fingerprint: str,
    new: Candidate,
) -> str:
    """A new version of ``model_name`` from ``model_uri``, born with every tag."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from components.core import tracking

    synthetic = new.record.synthetic if new.record is not None else bool(new.scored.metrics.get("synthetic"))
    tracking.use_store(tracking_uri)
    try:
        return str(
            mlflow.register_model(
                model_uri,
                model_name,
                tags={
                    **_decision_tags(decision, _baseline(compared_with)),
                    FINGERPRINT_TAG: data_fingerprint,
                    SYNTHETIC_TAG: str(synthetic).lower(),
                    REGISTERED_FROM_TAG: model_uri,
                },
            ).version
        )
    except MlflowException as exc:
        reason = exc.message.splitlines()[0]
        raise RegistryUnavailable(f"cannot register {model_uri} as {model_name}: {reason}") from None


def _registered_before(tracking_uri: str, model_name: str, model_uri: str):
    """The version an earlier try of this step registered from ``model_uri``, or None."""
    from mlflow.exceptions import MlflowException

    from components.core import tracking

    try:
        versions = tracking.client(tracking_uri).search_model_versions(f"name='{model_name}'")
    except MlflowException as exc:
        raise RegistryUnavailable(
            f"cannot list the versions of {model_name} in {tracking_uri}: "
            f"{exc.message.splitlines()[0] if exc.message else exc}"
        ) from None
    return next((v for v in versions if v.tags.get(REGISTERED_FROM_TAG) == model_uri), None)


def _recorded(version) -> GateDecision:
    return GateDecision(**json.loads(version.tags[DECISION_TAG]))


def _result(decision: GateDecision, model_name: str, version: str, baseline: str, gate: ChampionGateConfig) -> dict:
    return {
        **asdict(decision),
        "model_name": model_name,
        "version": version,
        "model_uri": f"models:/{model_name}/{version}",
        "previous_champion": None if baseline == "none" else f"version {baseline}",
        "metric": gate.metric,
        "margin": gate.margin,
    }


def _promote(promotion: Promotion, compared_with: Champion | None, new: Candidate) -> Promotion:
    """Give the version the decided alias, deciding again if the champion moved since the
    comparison; returns the promotion as it ended (final decision, the champion it was made against)."""
    from components.core import tracking

    client = tracking.client(promotion.tracking_uri)
    decision = promotion.decision
    for _ in range(MAX_PROMOTION_ATTEMPTS):
        checked_at = int(time.time() * 1000)
        current = find_champion(promotion.tracking_uri, promotion.model_name)
        if current == compared_with:
            break
        compared_with = current
        decision = _decide_against(current, promotion.model_name, promotion.tracking_uri, new)
        decision.reason += " (re-decided: another run moved the champion meanwhile)"
    else:
        raise RegistryUnavailable(
            f"{promotion.model_name}@{CHAMPION} kept moving during {MAX_PROMOTION_ATTEMPTS} attempts to "
            f"compare with it: version {promotion.version} registered without an alias"
        )
    promotion = replace(promotion, decision=decision, baseline=_baseline(compared_with))
    for key, value in {**_decision_tags(decision, promotion.baseline), CHECKED_AT_TAG: str(checked_at)}.items():
        client.set_model_version_tag(promotion.model_name, promotion.version, key, value)
    client.set_registered_model_alias(promotion.model_name, decision.alias, promotion.version)
    return replace(promotion, decision=_after_alias_write(promotion, checked_at))


def _after_alias_write(promotion: Promotion, checked_at: int) -> GateDecision:
    """Record that the alias write ended, then settle a race for ``@champion``."""
    from components.core import tracking

    promoted_at = int(time.time() * 1000)
    tracking.client(promotion.tracking_uri).set_model_version_tag(
        promotion.model_name, promotion.version, PROMOTED_AT_TAG, str(promoted_at)
    )
    if promotion.decision.alias != CHAMPION:
        return promotion.decision
    return _settle_concurrent_promotions(promotion, (checked_at, promoted_at))


def _settle_concurrent_promotions(promotion: Promotion, window: tuple[int, int]) -> GateDecision:
    """After moving ``@champion`` to the promotion's version: if runs on the same data
    promoted their own versions at the same time (each compared with the same old champion,
    and each read ``@champion`` before the other's alias write ended: neither saw the other),
    leave the alias on the best of them on the gate's metric (same data, so the same test
    split), whichever write landed last. ``window``: this promotion's last read of the alias
    and the end of its write. A version promoted before that read is no rival (so a rollback
    by hand after it stands), nor one whose write never ended (its retry finishes it). A
    champion that no run of this set chose is left alone: it was decided later, knowing
    ours. Returns this version's decision, changed if it lost."""
    from components.core import tracking

    p = promotion
    client = tracking.client(p.tracking_uri)
    current = find_champion(p.tracking_uri, p.model_name)
    metric_tag = f"test.{p.gate.metric}"
    rivals = {
        str(v.version): float(v.tags[metric_tag])
        for v in client.search_model_versions(f"name='{p.model_name}'")
        if v.tags.get(COMPARED_WITH_TAG) == p.baseline
        and v.tags.get("gate.alias") == CHAMPION
        and metric_tag in v.tags
        and v.tags.get(FINGERPRINT_TAG) == p.fingerprint
        and (str(v.version) == p.version or _overlaps(v.tags, window))
    }
    if current is None or current.version not in rivals or p.version not in rivals:
        return p.decision
    best = max(rivals, key=lambda v: (rivals[v], int(v)))
    if best != current.version:
        client.set_registered_model_alias(p.model_name, CHAMPION, best)
    if best == p.version:
        return p.decision
    lost = GateDecision(
        CHALLENGER,
        f"promoted at the same time as version {best} of the same data, which has the "
        f"better {p.gate.metric} ({rivals[best]:.4f} vs {rivals[p.version]:.4f}): "
        f"{p.decision.reason}",
        p.decision.comparison,
    )
    for key, value in _decision_tags(lost, p.baseline).items():
        client.set_model_version_tag(p.model_name, p.version, key, value)
    client.set_registered_model_alias(p.model_name, CHALLENGER, p.version)
    return lost


def _overlaps(tags: dict[str, str], window: tuple[int, int]) -> bool:
    """Another version's promotion ended and overlapped ``window``."""
    if CHECKED_AT_TAG not in tags or PROMOTED_AT_TAG not in tags:
        return False
    checked_at, promoted_at = window
    return int(tags[CHECKED_AT_TAG]) < promoted_at and checked_at < int(tags[PROMOTED_AT_TAG])


def _baseline(compared_with: Champion | None) -> str:
    return compared_with.version if compared_with is not None else "none"


def _decision_tags(decision: GateDecision, baseline: str) -> dict[str, str]:
    return {
        "gate.alias": decision.alias,
        "gate.reason": decision.reason[:5000],
        COMPARED_WITH_TAG: baseline,
        DECISION_TAG: json.dumps(asdict(decision)),
        **{f"test.{k}": f"{v['new']:.4f}" for k, v in decision.comparison.items() if v["new"] is not None},
    }

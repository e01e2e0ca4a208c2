"""The retraining gate (not the champion gate: components.registry.champion_gate): a run
whose ingested data is the data the current champion was trained on stops after ingest,
so a scheduled retraining never spends a GPU on nothing.

It is the first step that talks to MLflow: it creates the pipeline's MLflow run, with
the run's settings as params. It reads the model registry (the champion and its data
fingerprint, from ``components.registry.champion``) and the champion's run, so it
belongs to the registry stage. A champion whose run was deleted or purged has no metrics
to keep: the run retrains, and says why.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from kfp import dsl

from components.registry.champion import FINGERPRINT_TAG, Champion, find_champion

TRAIN = "train"
SKIP = "skip"


@dataclass(frozen=True)
class RetrainDecision:
    action: str  # TRAIN or SKIP
    reason: str


def decide_retraining(
    fingerprint: str, champion: Champion | None, force: bool, champion_run_problem: str = ""
) -> RetrainDecision:
    """Train or skip; ``champion_run_problem``: why the champion's run cannot be read ('' when it can)."""
    if force:
        return RetrainDecision(TRAIN, "forced (force_retrain)")
    if champion is None:
        return RetrainDecision(TRAIN, "no champion yet")
    if champion_run_problem:
        return RetrainDecision(TRAIN, f"champion v{champion.version}: {champion_run_problem}, so retraining")
    if not champion.fingerprint:
        return RetrainDecision(TRAIN, f"champion v{champion.version} has no data fingerprint")
    if champion.fingerprint == fingerprint:
        return RetrainDecision(SKIP, f"data unchanged since champion v{champion.version}")
    return RetrainDecision(TRAIN, f"data changed since champion v{champion.version}")


def champion_test_metrics(client, champion: Champion | None) -> tuple[dict[str, float], str]:
    """(the champion run's test metrics, ''), or ({}, why there are none: a deleted or purged run)."""
    from mlflow.exceptions import MlflowException

    from components.core import tracking

    if champion is None or not champion.run_id:
        return {}, ""
    try:
        run = client.get_run(champion.run_id)
    except MlflowException as exc:
        if tracking.is_not_found(exc):
            return {}, f"its MLflow run {champion.run_id} was purged (no metrics)"
        raise
    if run.info.lifecycle_stage == "deleted":
        return {}, f"its MLflow run {champion.run_id} was deleted (no metrics)"
    metrics = run.data.metrics
    return {k.removeprefix("test_"): v for k, v in sorted(metrics.items()) if k.startswith("test_")}, ""


def check_retraining(
    manifest_dir: str | Path,
    *,
    model_name: str,
    experiment: str,
    run_params: dict[str, str],
    tracking_uri: str,
    force: bool,
    kfp_run_name: str,
    kfp_run_id: str,
) -> dict:
    """Decide, record the decision on the pipeline's MLflow run, and return the details."""
    from components.core import filenames, tracking
    from components.data.data_report import summary_counts
    from components.data.listing import data_fingerprint

    fingerprint = data_fingerprint(manifest_dir)
    champion = find_champion(tracking_uri, model_name)
    client = tracking.client(tracking_uri)
    test_metrics, run_problem = champion_test_metrics(client, champion)
    decision = decide_retraining(fingerprint, champion, force, run_problem)
    run_id = tracking.pipeline_run(tracking_uri, experiment, kfp_run_name, kfp_run_id, run_params)
    for key, value in {
        FINGERPRINT_TAG: fingerprint,
        "retrain.decision": decision.action,
        "retrain.reason": decision.reason,
    }.items():
        client.set_tag(run_id, key, value)
    report = json.loads((Path(manifest_dir) / filenames.INGEST_REPORT).read_text())
    kept = {}
    if champion is not None:
        kept = {
            "version": champion.version,
            "model_uri": f"models:/{model_name}/{champion.version}",
            "test_metrics": test_metrics,
        }
    return {
        "decision": decision.action,
        "reason": decision.reason,
        "fingerprint": fingerprint,
        "champion_version": champion.version if champion else "",
        "champion": kept,
        "mlflow_run_id": run_id,
        "mlflow_run_url": tracking.run_url(tracking_uri, run_id),
        "tracking_uri": tracking_uri,
        "data": summary_counts(report),
    }


def retrain_gate_step(
    manifest: dsl.Input[dsl.Dataset],
    model_name: str,
    experiment: str,
    run_params: dict,
    tracking_uri: str,
    force_retrain: bool,
    kfp_run_name: str,
    kfp_run_id: str,
) -> NamedTuple("GateOutputs", [("decision", str), ("fingerprint", str), ("details", str)]):
    """KFP wrapper: train or skip (never cached: the champion changes between runs).
    ``run_params`` are the whole run's settings, logged as the MLflow run's params."""
    import json

    from components.core.errors import user_errors
    from components.registry.retrain_gate import check_retraining

    with user_errors():
        details = check_retraining(
            manifest.path,
            model_name=model_name,
            experiment=experiment,
            run_params=run_params,
            tracking_uri=tracking_uri,
            force=force_retrain,
            kfp_run_name=kfp_run_name,
            kfp_run_id=kfp_run_id,
        )
    print(
        f"retraining gate: {details['decision']}: {details['reason']} (data fingerprint {details['fingerprint'][:12]})"
    )
    return details["decision"], details["fingerprint"], json.dumps(details)

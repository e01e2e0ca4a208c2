"""The retraining gate: a run whose ingested data is the data the current champion was
trained on stops after ingest, so a scheduled retraining never spends a GPU on nothing.

It is the first step that talks to MLflow: it creates the pipeline's MLflow run, with
the run's settings as params. The champion and its data fingerprint come from
``components.registry.champion``.
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
class Decision:
    action: str  # TRAIN or SKIP
    reason: str


def decide(fingerprint: str, champion: Champion | None, force: bool) -> Decision:
    if force:
        return Decision(TRAIN, "forced (force_retrain)")
    if champion is None:
        return Decision(TRAIN, "no champion yet")
    if not champion.fingerprint:
        return Decision(TRAIN, f"champion v{champion.version} has no data fingerprint")
    if champion.fingerprint == fingerprint:
        return Decision(SKIP, f"data unchanged since champion v{champion.version}")
    return Decision(TRAIN, f"data changed since champion v{champion.version}")


def gate(
    manifest_dir: str | Path,
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
    decision = decide(fingerprint, champion, force)
    run_id = tracking.pipeline_run(tracking_uri, experiment, kfp_run_name, kfp_run_id, run_params)
    client = tracking.client(tracking_uri)
    for key, value in {
        FINGERPRINT_TAG: fingerprint,
        "retrain.decision": decision.action,
        "retrain.reason": decision.reason,
    }.items():
        client.set_tag(run_id, key, value)
    report = json.loads((Path(manifest_dir) / filenames.INGEST_REPORT).read_text())
    kept = {}
    if champion is not None:
        metrics = client.get_run(champion.run_id).data.metrics if champion.run_id else {}
        kept = {
            "version": champion.version,
            "model_uri": f"models:/{model_name}/{champion.version}",
            "test_metrics": {k.removeprefix("test_"): v for k, v in sorted(metrics.items()) if k.startswith("test_")},
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
    from components.registry.retrain_gate import gate

    with user_errors():
        details = gate(
            manifest.path, model_name, experiment, run_params, tracking_uri, force_retrain, kfp_run_name, kfp_run_id
        )
    print(
        f"retraining gate: {details['decision']}: {details['reason']} (data fingerprint {details['fingerprint'][:12]})"
    )
    return details["decision"], details["fingerprint"], json.dumps(details)

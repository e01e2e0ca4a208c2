"""The retraining gate: a run whose ingested data is the data the current champion was
trained on stops after ingest, so a scheduled retraining never spends a GPU on nothing.

The champion is ``models:/<model_name>@champion``; evaluate tags every registered
version with the fingerprint of its training data (``FINGERPRINT_TAG``).
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from kfp import dsl

from pipeline.config import Config

CHAMPION_ALIAS = "champion"
FINGERPRINT_TAG = "data_fingerprint"
TRAIN = "train"
SKIP = "skip"


@dataclass(frozen=True)
class Champion:
    version: str
    fingerprint: str  # empty when the version was registered without one


@dataclass(frozen=True)
class Decision:
    action: str  # TRAIN or SKIP
    reason: str


def find_champion(tracking_uri: str, model_name: str) -> Champion | None:
    """The version behind ``@champion``, or None when there is no such model or alias yet."""
    from mlflow.exceptions import MlflowException
    from pipeline import tracking

    try:
        version = tracking.client(tracking_uri).get_model_version_by_alias(model_name, CHAMPION_ALIAS)
    except MlflowException as exc:
        # No registered model: RESOURCE_DOES_NOT_EXIST; a model without the alias: INVALID_PARAMETER_VALUE.
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return Champion(str(version.version), version.tags.get(FINGERPRINT_TAG, ""))


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


def gate(manifest_dir: str | Path, cfg: Config, tracking_uri: str, force: bool, kfp_run_name: str,
         kfp_run_id: str) -> dict:
    """Decide, record the decision on the pipeline's MLflow run, and return the details."""
    from components.fingerprint import data_fingerprint
    from components.ingest_report import summary_counts
    from pipeline import tracking

    fingerprint = data_fingerprint(manifest_dir)
    champion = find_champion(tracking_uri, cfg.mlflow.model_name)
    decision = decide(fingerprint, champion, force)
    run_id = tracking.pipeline_run(tracking_uri, cfg.mlflow.experiment, kfp_run_name, kfp_run_id, cfg.flat_params())
    client = tracking.client(tracking_uri)
    for key, value in {FINGERPRINT_TAG: fingerprint, "retrain.decision": decision.action,
                       "retrain.reason": decision.reason}.items():
        client.set_tag(run_id, key, value)
    report = json.loads((Path(manifest_dir) / "report.json").read_text())
    return {"decision": decision.action, "reason": decision.reason, "fingerprint": fingerprint,
            "champion_version": champion.version if champion else "", "mlflow_run_id": run_id,
            "mlflow_run_url": tracking.run_url(tracking_uri, run_id), "tracking_uri": tracking_uri,
            "data": summary_counts(report)}


def record_fingerprint(tracking_uri: str, model_name: str, version: str, fingerprint: str) -> None:
    """Tag a registered version with the fingerprint of the data it was trained on."""
    from pipeline import tracking

    tracking.client(tracking_uri).set_model_version_tag(model_name, version, FINGERPRINT_TAG, fingerprint)


def run_summary(gate_details: dict, evaluation: dict | None) -> dict:
    """The pipeline's result: evaluate's summary when it trained, else why it stopped."""
    if evaluation is not None:
        return {**evaluation, "skipped": False, "retrain": gate_details}
    return {"skipped": True, "skip_reason": gate_details["reason"], "retrain": gate_details,
            "mlflow_run_id": gate_details["mlflow_run_id"], "mlflow_run_url": gate_details["mlflow_run_url"],
            "tracking_uri": gate_details["tracking_uri"], "data": gate_details["data"]}


def retrain_gate_step(manifest: dsl.Input[dsl.Dataset], config: dict, tracking_uri: str, force_retrain: bool,
                      kfp_run_name: str, kfp_run_id: str) -> NamedTuple("GateOutputs", [("decision", str),
                                                                                           ("fingerprint", str),
                                                                                           ("details", str)]):
    """KFP wrapper: train or skip (never cached: the champion changes between runs)."""
    import json

    from components.retrain_gate import gate
    from pipeline.config import Config

    details = gate(manifest.path, Config.from_dict(config), tracking_uri, force_retrain, kfp_run_name, kfp_run_id)
    print(f"retraining gate: {details['decision']}: {details['reason']} (data fingerprint {details['fingerprint'][:12]})")
    return details["decision"], details["fingerprint"], json.dumps(details)


def report_step(gate_details: str, summary: dsl.Input[dsl.Artifact] = None) -> str:
    """KFP wrapper: the pipeline's output, one JSON document whichever branch ran."""
    import json

    from components.retrain_gate import run_summary

    evaluation = json.loads(open(summary.path).read()) if summary is not None else None
    return json.dumps(run_summary(json.loads(gate_details), evaluation))

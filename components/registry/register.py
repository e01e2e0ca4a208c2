"""Register: the trained model becomes a new version in the MLflow model registry, and
the champion gate (components.registry.champion) decides whether it takes ``@champion``. The
decision goes to the version's tags, the pipeline's MLflow run, and the evaluation
report rendered again with it."""

import json
from pathlib import Path

from kfp import dsl

from components.core import filenames
from components.core.settings import ChampionGateConfig, EvaluateConfig


def register(
    *,
    evaluation_dir: str | Path,
    normalized_dir: str | Path,
    evaluate: EvaluateConfig,
    champion_gate: ChampionGateConfig,
    model_name: str,
    model_uri: str,
    data_fingerprint: str,
    tracking_uri: str,
    mlflow_run_id: str,
    output_dir: str | Path,
    kfp_url: str = "",
    local_run_dir: str = "",
) -> dict:
    """Register and gate the evaluated model; write gate.json and the report with the
    decision to ``output_dir`` and log both into the pipeline's MLflow run, whose
    description (and the new version's) then carries the verdict in words. The run that
    logged the model gets the record of the images it trained and validated on."""
    import mlflow

    from components.core import run_descriptions, tracking
    from components.evaluation.evaluate import load_scored
    from components.evaluation.report_html import report_with_gate
    from components.registry import champion
    from components.registry.model_card import publish_card
    from components.registry.rescoring import Candidate
    from components.registry.training_record import TrainingRecord

    record = TrainingRecord.of(normalized_dir)
    new = Candidate(load_scored(evaluation_dir), Path(normalized_dir), record, evaluate, champion_gate)
    new_metrics = new.scored.metrics
    synthetic = bool(new_metrics.get("synthetic"))
    gate = champion.register_and_promote(
        tracking_uri=tracking_uri,
        model_name=model_name,
        model_uri=model_uri,
        new=new,
        data_fingerprint=data_fingerprint,
    )
    tracking.set_description(
        tracking_uri,
        mlflow_run_id,
        run_descriptions.trained_description(new_metrics, gate, synthetic, kfp_url, local_run_dir),
    )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    card_line = publish_card(
        tracking_uri, mlflow_run_id, model_name, gate, new_metrics, normalized_dir, data_fingerprint, out
    )
    tracking.client(tracking_uri).update_model_version(
        model_name,
        gate["version"],
        description=(
            run_descriptions.model_version_description(
                gate, new_metrics, synthetic, tracking.run_url(tracking_uri, mlflow_run_id)
            )
            + f"\n{card_line}\n"
        ),
    )
    (out / filenames.GATE).write_text(json.dumps(gate, indent=2))
    report = report_with_gate(evaluation_dir, gate, out / filenames.EVALUATION_REPORT)
    log_gate(tracking_uri, mlflow_run_id, gate)
    with tracking.logging_into(tracking_uri, mlflow_run_id):
        # Replaces evaluate's report in the run: the same page, now with the decision.
        mlflow.log_artifact(str(report), artifact_path="evaluation")
        mlflow.log_artifact(str(out / filenames.GATE), artifact_path="evaluation")
    return gate


def register_step(
    evaluation: dsl.Input[dsl.Dataset],
    normalized: dsl.Input[dsl.Dataset],
    evaluate: dict,
    champion_gate: dict,
    model_name: str,
    model_uri: str,
    data_fingerprint: str,
    experiment: str,
    tracking_uri: str,
    kfp_run_name: str,
    kfp_run_id: str,
    registration: dsl.Output[dsl.Artifact],
    report: dsl.Output[dsl.HTML],
    kfp_ui_url: str = "",
    local_run_dir: str = "",
):
    """KFP wrapper: register the model and move the champion alias only to a better one
    (never cached: the champion changes between runs). ``kfp_ui_url`` (the KFP UI a cluster
    run was submitted to) and ``local_run_dir`` (a local run's folder) go into the MLflow
    run's description."""
    import shutil
    from pathlib import Path

    from components.core import filenames, tracking
    from components.core.config_base import load_section
    from components.core.errors import user_errors
    from components.core.run_descriptions import kfp_run_url
    from components.core.run_status import failure_recorded
    from components.core.settings import ChampionGateConfig, EvaluateConfig
    from components.registry.register import register

    run_id = tracking.pipeline_run(tracking_uri, experiment, kfp_run_name, kfp_run_id)
    with user_errors(), failure_recorded(tracking_uri, run_id, "register"):
        gate = register(
            evaluation_dir=evaluation.path,
            normalized_dir=normalized.path,
            evaluate=load_section(EvaluateConfig, evaluate, "evaluate."),
            champion_gate=load_section(ChampionGateConfig, champion_gate, "champion_gate."),
            model_name=model_name,
            model_uri=model_uri,
            data_fingerprint=data_fingerprint,
            tracking_uri=tracking_uri,
            mlflow_run_id=run_id,
            output_dir=registration.path,
            kfp_url=kfp_run_url(kfp_ui_url, kfp_run_id),
            local_run_dir=local_run_dir,
        )
    shutil.copyfile(Path(registration.path) / filenames.EVALUATION_REPORT, report.path)
    registration.metadata.update({"version": gate["version"], "alias": gate["alias"], "model_uri": gate["model_uri"]})
    print(f"registered {gate['model_uri']} -> {gate['alias']}: {gate['reason']}")


def log_gate(tracking_uri: str, run_id: str, gate: dict) -> None:
    """The decision, its reason, both models' numbers and their difference with its
    interval (``gate_difference``, ``_ci_low``, ``_ci_high``) into the pipeline's MLflow run."""
    from mlflow.entities import RunTag

    from components.core import tracking

    values = {
        f"gate_{who}_{k}": v[who]
        for k, v in gate["comparison"].items()
        for who in ("new", "champion")
        if v[who] is not None
    }
    if gate.get("difference"):
        d = gate["difference"]
        values.update(gate_difference=d["estimate"], gate_difference_ci_low=d["low"], gate_difference_ci_high=d["high"])
    metrics = tracking.metrics_at(values)
    tags = [
        RunTag("gate.alias", gate["alias"]),
        RunTag("gate.reason", gate["reason"][:5000]),
        RunTag("gate.registered_version", gate["model_uri"]),
    ]
    tracking.client(tracking_uri).log_batch(run_id, metrics=metrics, tags=tags)

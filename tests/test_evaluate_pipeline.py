"""The train, evaluate and register steps inside the real pipeline (KFP local runner,
subprocess per step) against a real MLflow server: KFP Metrics / ClassificationMetrics /
HTML outputs, the report and gate in the MLflow run, the model registered with its alias."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.local import run_local
from tests.tiny_data import tiny_config


def test_pipeline_evaluates_registers_and_gates_the_model(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    model_name = f"pipeline-gate-{tmp_path.name}"
    cfg = tiny_config(epochs=2).with_overrides([
        "data.synthetic_images_per_class=12", "augment.enabled=false", f"mlflow.model_name={model_name}",
        "mlflow.experiment=pipeline-evaluate-test", "evaluate.min_balanced_accuracy=0.05"])
    summary = run_local(cfg, "", tmp_path / "out", mlflow_server)

    assert summary["gate"]["alias"] == "champion" and summary["registered_model"]["version"] == "1"
    assert summary["metrics"]["n"] == summary["data"]["test_images"]
    evaluate_dir = Path(summary["pipeline_run_dir"]) / "evaluate-step"
    outputs = json.loads((evaluate_dir / "executor_output.json").read_text())["artifacts"]
    classification = outputs["classification"]["artifacts"][0]["metadata"]
    assert len(classification["confusionMatrix"]["rows"]) == 4
    assert 2 <= len(classification["confidenceMetrics"]) <= 200
    kfp_metrics = outputs["metrics"]["artifacts"][0]["metadata"]
    assert {"balanced_accuracy", "melanoma_auc", "ece", "melanoma_sensitivity_at_90_specificity"} <= set(kfp_metrics)
    assert "Champion gate" not in (evaluate_dir / "report").read_text()  # evaluate scores; register decides
    html = (Path(summary["pipeline_run_dir"]) / "register-step" / "report").read_text()
    assert "Champion gate" in html and "CHAMPION" in html and html.count("data:image/png;base64,") >= 4

    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.tags["gate.alias"] == "champion"
    assert run.data.metrics["test_balanced_accuracy"] == summary["metrics"]["balanced_accuracy"]
    assert "val_balanced_accuracy" in run.data.metrics  # per-epoch training logs in the same run
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/report.html", "evaluation/gate.json", "evaluation/gradcam_melanoma.png"} <= artifacts
    assert client.get_model_version_by_alias(model_name, "champion").version == "1"

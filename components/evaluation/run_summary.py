"""The run summary, made by the report step: the pipeline's result, one JSON document
whichever branch ran (trained, or skipped by the retraining gate), and the data reports
and counts in the MLflow run."""

import json
from pathlib import Path

from kfp import dsl

from components.core import filenames

# Files of the data steps that a reviewer reads in the MLflow run.
DATA_REPORT_SUFFIXES = (".json", ".html", ".md")


def run_summary(
    gate_details: dict,
    evaluation_dir: str | Path | None = None,
    registration_dir: str | Path | None = None,
    splits_dir: str | Path | None = None,
    model_uri: str = "",
) -> dict:
    """evaluate's metrics and register's decision when the run trained, else why it stopped."""
    data = dict(gate_details["data"])
    common = {
        "mlflow_run_id": gate_details["mlflow_run_id"],
        "mlflow_run_url": gate_details["mlflow_run_url"],
        "tracking_uri": gate_details["tracking_uri"],
        "retrain": gate_details,
    }
    if evaluation_dir is None:
        # The model this run keeps serving: the champion, with its numbers.
        return {
            **common,
            "skipped": True,
            "skip_reason": gate_details["reason"],
            "data": data,
            "champion": gate_details.get("champion") or {},
        }
    split_report = json.loads((Path(splits_dir) / filenames.SPLIT_REPORT).read_text())
    data.update({f"{k}_images": v for k, v in split_report["subset_sizes"].items()})
    gate = json.loads((Path(registration_dir) / filenames.GATE).read_text())
    registered = {
        "name": gate["model_name"],
        "version": gate["version"],
        "uri": gate["model_uri"],
        "alias": gate["alias"],
    }
    return {
        **common,
        "skipped": False,
        "model_uri": model_uri,
        "registered_model": registered,
        "gate": gate,
        "data": data,
        "metrics": json.loads((Path(evaluation_dir) / filenames.METRICS).read_text()),
        "warnings": split_report.get("class_size_warnings", []),
    }


def log_data_reports(summary: dict, data_dirs: dict[str, Path]) -> None:
    """Data counts (``data_*``), the synthetic and class-size warning tags, the data
    steps' reports, and the source and its subsets as dataset inputs into the run."""
    import mlflow

    from components.core import tracking
    from components.data.dataset_inputs import log_data_inputs

    with tracking.logging_into(summary["tracking_uri"], summary["mlflow_run_id"]):
        log_data_inputs(data_dirs["data"], data_dirs.get("split"))
        mlflow.log_metrics({f"data_{k}": float(v) for k, v in summary["data"].items()})
        mlflow.set_tag("data.synthetic", str(bool(summary["data"].get("synthetic"))).lower())
        if summary.get("warnings"):
            mlflow.set_tag("data.class_size_warnings", "\n".join(summary["warnings"])[:5000])
        for name, folder in data_dirs.items():
            for f in sorted(folder.glob("*")):
                if f.suffix in DATA_REPORT_SUFFIXES:
                    mlflow.log_artifact(str(f), artifact_path=name)


def write_description(summary: dict, kfp_url: str = "", local_run_dir: str = "") -> None:
    """The run's verdict in words on top of its MLflow run page (components.core.run_descriptions)."""
    from components.core import run_descriptions, tracking

    if summary["skipped"]:
        text = run_descriptions.skipped_description(
            summary["skip_reason"], summary.get("champion") or {}, kfp_url, local_run_dir
        )
    else:
        text = run_descriptions.trained_description(
            summary["metrics"],
            summary["gate"],
            bool(summary["data"].get("synthetic")),
            kfp_url,
            local_run_dir,
            summary.get("warnings", []),
        )
    tracking.set_description(summary["tracking_uri"], summary["mlflow_run_id"], text)


def mlflow_run_markdown(summary: dict) -> str:
    from components.core import tracking

    run = f"[{summary['mlflow_run_id']}]({summary['mlflow_run_url']})"
    lines = [f"# MLflow run\n\n{run} in `{summary['tracking_uri']}`"]
    if not summary["skipped"]:
        gate = summary["gate"]
        lines.append(f"Registered model: `{gate['model_uri']}` ({gate['alias']}: {gate['reason']})")
    else:
        lines.append(f"Training skipped: {summary['skip_reason']}")
    lines.append(f"Open the UI: `{tracking.ui_command(summary['tracking_uri'])}`")
    return "\n\n".join(lines) + "\n"


def report_step(
    gate_details: str,
    manifest: dsl.Input[dsl.Dataset],
    mlflow_run: dsl.Output[dsl.Markdown],
    splits: dsl.Input[dsl.Dataset] = None,
    augmented: dsl.Input[dsl.Dataset] = None,
    evaluation: dsl.Input[dsl.Dataset] = None,
    registration: dsl.Input[dsl.Artifact] = None,
    model_uri: str = "",
    kfp_run_id: str = "",
    kfp_ui_url: str = "",
    local_run_dir: str = "",
) -> str:
    """KFP wrapper: the pipeline's output, one JSON document whichever branch ran; the
    MLflow run's description says its verdict."""
    import json
    from pathlib import Path

    from components.core.run_descriptions import kfp_run_url
    from components.evaluation.run_summary import log_data_reports, mlflow_run_markdown, run_summary, write_description

    def path(artifact) -> Path | None:
        return Path(artifact.path) if artifact is not None else None

    summary = run_summary(json.loads(gate_details), path(evaluation), path(registration), path(splits), model_uri)
    data_dirs = {"data": path(manifest), "split": path(splits), "augment": path(augmented)}
    log_data_reports(summary, {name: folder for name, folder in data_dirs.items() if folder is not None})
    summary["kfp_run_url"] = kfp_run_url(kfp_ui_url, kfp_run_id)
    write_description(summary, summary["kfp_run_url"], local_run_dir)
    Path(mlflow_run.path).write_text(mlflow_run_markdown(summary))
    return json.dumps(summary)

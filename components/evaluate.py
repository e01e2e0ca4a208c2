"""Evaluate: score the trained model on the held-out test split, write the metrics and
the pictures people look at, log them to the pipeline's MLflow run and register the
model."""

import html
import json
from pathlib import Path

import numpy as np
from kfp import dsl

from components import shards
from components.metrics import classification_metrics
from pipeline.config import Config


def predict_subset(model, normalized_dir: str | Path, subset: str, batch_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    meta = shards.read_meta(normalized_dir)
    images, labels, uris = shards.read_all(shards.shard_paths(normalized_dir, subset), meta["image_size"])
    probs = model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0) if len(images) else np.zeros((0, len(meta["classes"])))
    return labels, np.asarray(probs, dtype=np.float64), uris


def plot_confusion_matrix(matrix: list[list[int]], classes: list[str], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix)
    size = max(4.0, 0.8 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > m.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def render_report(metrics: dict, synthetic: bool) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td><td>{v['f1']:.3f}</td>"
        f"<td>{_fmt(v['auc'])}</td><td>{v['support']}</td></tr>"
        for c, v in metrics["per_class"].items())
    headline = "".join(
        f"<li>{k}: {metrics[k]:.4f}</li>" for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "melanoma_auc")
        if metrics.get(k) is not None)
    warning = "<p><strong>SYNTHETIC data: these numbers say nothing about real lesions.</strong></p>" if synthetic else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Evaluation report</title>"
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:2px 6px}table{border-collapse:collapse}</style>"
        f"</head><body><h1>Evaluation on the held-out test split ({metrics['n']} images)</h1>{warning}<ul>{headline}</ul>"
        "<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>AUC</th><th>support</th></tr>"
        f"{rows}</table><h2>Confusion matrix</h2><img src='confusion_matrix.png' alt='confusion matrix'></body></html>")


def evaluate(model_path: str | Path, normalized_dir: str | Path, cfg: Config, output_dir: str | Path) -> dict:
    import keras

    model = keras.models.load_model(model_path)
    meta = shards.read_meta(normalized_dir)
    y_true, probs, _ = predict_subset(model, normalized_dir, "test", cfg.evaluate.batch_size)
    metrics = classification_metrics(y_true, probs, meta["classes"], cfg.evaluate.melanoma_class)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    np.savez_compressed(out / "predictions.npz", y_true=y_true, probs=probs)
    plot_confusion_matrix(metrics["confusion_matrix"], meta["classes"], out / "confusion_matrix.png")
    (out / "report.html").write_text(render_report(metrics, meta.get("synthetic", False)))
    return metrics


def headline_metrics(metrics: dict) -> dict[str, float]:
    """Flat name -> value for MLflow and KFP Metrics (undefined AUCs left out)."""
    flat = {k: metrics[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "melanoma_auc")
            if metrics.get(k) is not None}
    flat.update({f"recall_{c}": r for c, r in metrics["per_class_recall"].items()})
    return flat


def log_to_mlflow(tracking_uri: str, run_id: str, metrics: dict, eval_dir: Path, data_dirs: dict[str, Path],
                  data_counts: dict[str, int | bool], model_uri: str, model_name: str) -> dict:
    """Test metrics, data counts and reports into the run; register the model."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"test_{k}": v for k, v in headline_metrics(metrics).items()})
        mlflow.log_metrics({f"data_{k}": float(v) for k, v in data_counts.items()})
        mlflow.set_tag("data.synthetic", str(bool(data_counts.get("synthetic"))).lower())
        mlflow.log_artifacts(str(eval_dir), artifact_path="evaluation")
        for name, folder in data_dirs.items():
            for f in sorted(folder.glob("*")):
                if f.suffix in (".json", ".html", ".md"):
                    mlflow.log_artifact(str(f), artifact_path=name)
    version = mlflow.register_model(model_uri, model_name, tags={"mlflow_run_id": run_id})
    return {"name": model_name, "version": str(version.version), "uri": f"models:/{model_name}/{version.version}"}


def evaluate_step(model: dsl.Input[dsl.Model], normalized: dsl.Input[dsl.Dataset], manifest: dsl.Input[dsl.Dataset],
                  splits: dsl.Input[dsl.Dataset], augmented: dsl.Input[dsl.Dataset], config: dict, tracking_uri: str,
                  kfp_run_name: str, kfp_run_id: str, model_uri: str, data_fingerprint: str,
                  metrics: dsl.Output[dsl.Metrics], classification: dsl.Output[dsl.ClassificationMetrics],
                  report: dsl.Output[dsl.HTML], mlflow_run: dsl.Output[dsl.Markdown], summary: dsl.Output[dsl.Artifact]):
    """KFP wrapper: the evaluate step."""
    import json
    import shutil
    from pathlib import Path

    import numpy as np

    from components.evaluate import evaluate, headline_metrics, log_to_mlflow
    from components.metrics import roc_points
    from components.retrain_gate import record_fingerprint
    from pipeline import tracking
    from pipeline.config import Config

    cfg = Config.from_dict(config)
    eval_dir = Path(report.path).parent / "evaluation"
    result = evaluate(Path(model.path) / "model.keras", normalized.path, cfg, eval_dir)
    shutil.copyfile(eval_dir / "report.html", report.path)
    ingest_report = json.loads((Path(manifest.path) / "report.json").read_text())
    split_report = json.loads((Path(splits.path) / "split_report.json").read_text())
    data = {k: ingest_report[k] for k in ("files_found", "ingested", "quarantined", "ignored", "duplicate_groups",
                                          "label_conflict_groups", "split_leak_groups", "synthetic")}
    data.update({f"{k}_images": v for k, v in split_report["subset_sizes"].items()})

    run_id = tracking.pipeline_run(tracking_uri, cfg.mlflow.experiment, kfp_run_name, kfp_run_id, cfg.flat_params())
    registered = log_to_mlflow(tracking_uri, run_id, result, eval_dir,
                               {"data": Path(manifest.path), "split": Path(splits.path), "augment": Path(augmented.path)},
                               data, model_uri, cfg.mlflow.model_name)
    record_fingerprint(tracking_uri, registered["name"], registered["version"], data_fingerprint)

    for name, value in headline_metrics(result).items():
        metrics.log_metric(name, value)
    classification.log_confusion_matrix(result["classes"], result["confusion_matrix"])
    if cfg.evaluate.melanoma_class in result["classes"]:
        predictions = np.load(eval_dir / "predictions.npz")
        fpr, tpr, thresholds = roc_points(predictions["y_true"], predictions["probs"],
                                          result["classes"].index(cfg.evaluate.melanoma_class))
        classification.log_roc_curve(fpr, tpr, thresholds)
    url = tracking.run_url(tracking_uri, run_id)
    with open(mlflow_run.path, "w") as f:
        f.write(f"# MLflow run\n\n[{run_id}]({url}) in `{tracking_uri}`\n\nRegistered model: "
                f"`{registered['uri']}`\n\nOpen the UI: `{tracking.ui_command(tracking_uri)}`\n")
    with open(summary.path, "w") as f:
        json.dump({"mlflow_run_id": run_id, "mlflow_run_url": url, "tracking_uri": tracking_uri, "model_uri": model_uri,
                   "registered_model": registered, "data": data, "metrics": result}, f, indent=2)

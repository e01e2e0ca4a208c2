"""Evaluate: score a model on held-out images, write every metric with its 95 %
interval (bootstrap over lesions: components.scoring.intervals), the same per lesion
where the source names lesions, and the pictures people look at into one
self-contained HTML report (components.evaluation.report_html), and, in the pipeline,
log them to the pipeline's MLflow run. Registering the model and the champion decision
are the next step's (components.registry.register)."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from kfp import dsl

from components.core import filenames
from components.core.settings import DataConfig, EvaluateConfig
from components.data import tfrecords
from components.evaluation.clinical import clinical_headline
from components.evaluation.gradcam import gradcam
from components.evaluation.plots import (
    plot_confusion_matrices,
    plot_image_grid,
    plot_reliability,
    plot_risk_coverage,
    plot_roc_curves,
    worst_misclassified,
)
from components.evaluation.report_html import HEADLINE, PICTURES_FILE, write_report
from components.evaluation.subgroups import subgroup_table
from components.scoring.calibration import apply_temperature
from components.scoring.decisions import decide_classes
from components.scoring.intervals import intervals, resampling
from components.scoring.lesions import lesion_labels, lesion_means
from components.scoring.metrics import Scored, classification_metrics, roc_points

# KFP keeps ROC points in the run's metadata: enough for a smooth curve, no more.
MAX_ROC_POINTS = 200


@dataclass
class Evaluation:
    metrics: dict
    y_true: np.ndarray
    probs: np.ndarray
    # (title, PNG file name in the output folder)
    pictures: list[tuple[str, str]] = field(default_factory=list)
    # the model's per-class offsets of its decision (components.scoring.decisions), if it has them
    decision_bias: list[float] | None = None

    @property
    def predicted(self) -> np.ndarray:
        return decide_classes(self.probs, self.decision_bias)


def make_pictures(model, images_at, ev: Evaluation, classes: list[str], cfg: EvaluateConfig, out: Path) -> None:
    """The pictures of ``ev``; ``images_at(indices)`` gives {position: uint8 image} of
    the images at those positions, asked once for the few the pictures show (the worst
    misclassified, the Grad-CAM examples): no other image is held here."""
    m = ev.metrics
    plot_confusion_matrices(m["confusion_matrix"], classes, out / "confusion_matrix.png")
    ev.pictures.append(("Confusion matrix", "confusion_matrix.png"))
    if m["macro_auc"] is not None:
        plot_roc_curves(ev.y_true, ev.probs, classes, m, out / "roc_curves.png")
        ev.pictures.append(("ROC curves", "roc_curves.png"))
    if m["ece"] is not None:
        temperature = m.get("calibration", {}).get("temperature", 1.0)
        before = apply_temperature(ev.probs, 1.0 / temperature) if temperature != 1.0 else None
        plot_reliability(ev.y_true, ev.probs, m["ece"], out / "reliability.png", before)
        ev.pictures.append((f"Reliability diagram (temperature {temperature:.2f})", "reliability.png"))
    if m.get("referral", {}).get("curve"):
        plot_risk_coverage(m["referral"]["curve"], out / "risk_coverage.png")
        ev.pictures.append(("Risk-coverage curve", "risk_coverage.png"))
    predicted = ev.predicted
    worst = worst_misclassified(ev.y_true, ev.probs, cfg.worst_images, predicted)
    mel = classes.index(cfg.melanoma_class) if cfg.melanoma_class in classes else None
    picked = np.zeros(0, int)
    if mel is not None and cfg.gradcam_images:
        members = np.flatnonzero(ev.y_true == mel)
        picked = members[np.argsort(-ev.probs[members, mel], kind="stable")][: cfg.gradcam_images]
    shown = sorted(set(worst.tolist()) | set(picked.tolist()))
    images = images_at(shown)
    if len(worst):
        captions = [
            f"true {classes[ev.y_true[i]]}\npred {classes[predicted[i]]} ({ev.probs[i, predicted[i]]:.2f})"
            for i in worst
        ]
        plot_image_grid([images[i] for i in worst], captions, out / "worst_misclassified.png")
        ev.pictures.append(
            ("Worst misclassified test images (lowest probability on the true class)", "worst_misclassified.png")
        )
    if len(picked):
        heat = gradcam(model, np.stack([images[i] for i in picked]).astype(np.float32), mel)
        plot_image_grid(
            [images[i] for i in picked],
            [f"melanoma, p(melanoma) {ev.probs[i, mel]:.2f}" for i in picked],
            out / "gradcam_melanoma.png",
            overlays=list(heat),
        )
        ev.pictures.append(("Grad-CAM on test melanomas (where the melanoma score looks)", "gradcam_melanoma.png"))


# ---- evaluation -----------------------------------------------------------------


def metrics_with_intervals(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    cfg: EvaluateConfig,
    decision_bias: list[float] | None = None,
    groups: list[str] | None = None,
    unit: str = "",
) -> dict:
    """classification_metrics with their ``intervals``, resampling ``groups`` (one id per
    image, '' for none; ``unit`` names them, e.g. "lesions"), and where they are lesions,
    ``per_lesion``: the same metrics of each lesion's mean probabilities."""

    def scored(y, p, ids, what) -> dict:
        metrics = classification_metrics(y, p, classes, cfg.melanoma_class, decision_bias)
        plan = resampling(ids, len(y), what, cfg.bootstrap_resamples, cfg.bootstrap_seed)
        metrics["intervals"] = intervals(plan, y, p, classes, cfg.melanoma_class, decision_bias)
        return metrics

    metrics = scored(y_true, probs, groups, unit)
    if unit == "lesions" and groups is not None and any(groups):
        names, mean_probs, _ = lesion_means(probs, groups)
        metrics["per_lesion"] = scored(lesion_labels(y_true, groups, len(classes)), mean_probs, names, "lesions")
    return metrics


def evaluate_predictions(
    loaded,
    y_true: np.ndarray,
    probs: np.ndarray,
    images_at,
    cfg: EvaluateConfig,
    output_dir: str | Path,
    synthetic: bool = False,
    groups: list[str] | None = None,
    unit: str = "",
    view_probs: np.ndarray | None = None,
    metadata: list[dict[str, str]] | None = None,
) -> Evaluation:
    """Metrics and pictures of a loaded model's (components.scoring.inference.LoadedModel)
    calibrated probabilities ``probs`` (with ``cfg.tta`` if made so; ``view_probs``: each
    view's) on labelled images, whose uint8 pixels ``images_at(indices)`` gives for the
    pictures as {position: image} (see make_pictures); writes metrics.json,
    predictions.npz and the PNGs to ``output_dir``. ``synthetic``: the images are;
    ``groups``, ``unit``: what the intervals resample (see metrics_with_intervals);
    ``metadata``: each image's source metadata, for the subgroups (components.evaluation.clinical)."""
    from components.evaluation.clinical import clinical_metrics

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes, decision_bias = loaded.classes, loaded.decision_bias
    metrics = metrics_with_intervals(y_true, probs, classes, cfg, decision_bias, groups, unit)
    metrics.update(tta=cfg.tta, synthetic=synthetic, model_synthetic=loaded.synthetic)
    metrics.update(clinical_metrics(loaded, y_true, probs, view_probs, cfg, groups, unit, metadata))
    ev = Evaluation(metrics, np.asarray(y_true, dtype=int), probs, decision_bias=decision_bias)
    (out / filenames.METRICS).write_text(json.dumps(metrics, indent=2))
    np.savez_compressed(out / filenames.PREDICTIONS, y_true=ev.y_true, probs=probs)
    if metrics.get("subgroups"):
        (out / filenames.SUBGROUPS_TABLE).write_text(subgroup_table(metrics["subgroups"]))
    make_pictures(loaded.model, images_at, ev, classes, cfg, out)
    (out / PICTURES_FILE).write_text(json.dumps(ev.pictures))
    return ev


def evaluate(
    model_path: str | Path, normalized_dir: str | Path, cfg: EvaluateConfig, output_dir: str | Path
) -> Evaluation:
    """The pipeline's evaluation: the model (with what was fitted with it on validation:
    components.scoring.inference.load_model) on the normalized test split, streamed from
    its shards in batches (labels and probabilities are what it holds of the split)."""
    from components.scoring.inference import load_model

    loaded = load_model(str(model_path))
    meta = tfrecords.read_meta(normalized_dir)
    if loaded.classes != meta["classes"]:
        loaded.classes = list(meta["classes"])  # a bare .keras file names no classes
    paths, size = tfrecords.shard_paths(normalized_dir, "test"), meta["image_size"]
    labels, uris = tfrecords.read_labels(paths)
    groups, unit = tfrecords.read_test_groups(normalized_dir, uris)
    probs, views = loaded.predict_with_views(tfrecords.image_dataset(paths, size, len(labels)), cfg.batch_size, cfg.tta)
    return evaluate_predictions(
        loaded,
        labels,
        probs,
        lambda indices: dict(tfrecords.images_at(paths, size, indices)),
        cfg,
        output_dir,
        bool(meta.get("synthetic", False)),  # the model was trained on the same data
        groups,
        unit,
        views,
        tfrecords.read_test_metadata(normalized_dir, uris),
    )


def load_scored(evaluation_dir: str | Path) -> Scored:
    """What evaluate wrote to ``evaluation_dir``: the test split's labels, the model's
    probabilities and its metrics (the champion gate compares them with the champion's)."""
    folder = Path(evaluation_dir)
    saved = np.load(folder / filenames.PREDICTIONS)
    return Scored(saved["y_true"], saved["probs"], json.loads((folder / filenames.METRICS).read_text()))


def evaluate_source(loaded, source_uri: str, data: DataConfig, cfg: EvaluateConfig, out_path: str | Path) -> dict:
    """``lesionpipe evaluate``: every labelled image ingest accepts from ``source_uri``,
    scored by a loaded model (components.scoring.inference.LoadedModel) with the pipeline's metrics
    and report. Images of classes the model does not know are counted, not scored."""
    from components.core.errors import UserError
    from components.data.ingest import ingest
    from components.data.labels import GROUP_UNITS
    from components.scoring.inference import load_images

    ingested = ingest(source_uri, data)
    manifest = ingested.manifest
    usable = manifest[manifest.status == "ingested"]
    known = usable[usable.label.isin(loaded.classes)]
    unknown = sorted(set(usable.label) - set(loaded.classes))
    if known.empty:
        raise UserError(f"no image of {source_uri} has a class the model knows ({', '.join(loaded.classes)})")
    uris = known.uri.tolist()
    probs, views, errors = loaded.scores_of_files(uris, cfg.batch_size, cfg.tta)
    if any(errors):
        raise UserError(f"unreadable image: {next(e for e in errors if e)}")
    labels = known.label.map({c: i for i, c in enumerate(loaded.classes)}).to_numpy()
    out = Path(out_path)
    folder = out.parent / (out.stem + "_report")

    def images_at(indices: list[int]) -> dict[int, np.ndarray]:
        return dict(zip(indices, load_images([uris[i] for i in indices], loaded.image_size, loaded.resize_mode)[0]))

    ev = evaluate_predictions(
        loaded,
        labels,
        probs,
        images_at,
        cfg,
        folder,
        synthetic=source_uri == "",
        groups=known.group_id.fillna("").tolist(),
        unit=GROUP_UNITS.get(ingested.report["format"], "groups"),
        view_probs=views,
        metadata=source_metadata(known),
    )
    ev.metrics["model_uri"] = loaded.uri
    ev.metrics["data"] = source_uri
    report = write_report(ev, folder, f"Evaluation of {loaded.uri} on {source_uri}", source_uri == "")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(ev.metrics, indent=2))
    return {
        "metrics": ev.metrics,
        "report": str(report),
        "skipped": int(len(usable) - len(known)),
        "skipped_reason": f"classes unknown to the model: {', '.join(unknown)}" if unknown else "",
    }


def source_metadata(manifest) -> list[dict[str, str]]:
    """Each manifest row's source metadata (components.data.labels.METADATA_COLUMNS it has)."""
    from components.data.labels import METADATA_COLUMNS

    columns = [c for c in METADATA_COLUMNS if c in manifest.columns]
    rows = manifest[columns].fillna("").astype(str).to_dict("records")
    return [{k: v for k, v in row.items() if v} for row in rows]


def headline_metrics(metrics: dict) -> dict[str, float]:
    """Flat name -> value for MLflow and KFP Metrics (undefined values left out): each
    metric, its interval as ``<name>_ci_low`` and ``<name>_ci_high``, and the per-lesion
    ones prefixed ``lesion_``."""
    flat = {k: metrics[k] for k in HEADLINE if metrics.get(k) is not None}
    flat.update(clinical_headline(metrics))
    flat.update({f"recall_{c}": r for c, r in metrics["per_class_recall"].items()})
    flat.update({f"auc_{c}": v["auc"] for c, v in metrics["per_class"].items() if v["auc"] is not None})
    for name, (low, high) in metrics.get("intervals", {}).get("values", {}).items():
        flat.update({f"{name}_ci_low": low, f"{name}_ci_high": high})
    if metrics.get("per_lesion"):
        flat.update({f"lesion_{k}": v for k, v in headline_metrics(metrics["per_lesion"]).items()})
        flat["lesion_n"] = metrics["per_lesion"]["n"]
    return flat


def thinned_roc(
    y_true: np.ndarray, probs: np.ndarray, class_index: int
) -> tuple[list[float], list[float], list[float]]:
    fpr, tpr, thresholds = roc_points(y_true, probs, class_index)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), MAX_ROC_POINTS)).round().astype(int))
    return [fpr[i] for i in keep], [tpr[i] for i in keep], [thresholds[i] for i in keep]


def log_to_mlflow(tracking_uri: str, run_id: str, metrics: dict, eval_dir: Path) -> None:
    """Test metrics (``test_*``) and the evaluation folder (report, pictures) into the run;
    the metrics also against the model the run logged, so that its page in MLflow shows them."""
    import mlflow

    from components.core import tracking

    model_id = tracking.logged_model_id(tracking_uri, run_id)
    with tracking.logging_into(tracking_uri, run_id):
        mlflow.log_metrics({f"test_{k}": v for k, v in headline_metrics(metrics).items()}, model_id=model_id)
        mlflow.log_artifacts(str(eval_dir), artifact_path="evaluation")


def evaluate_step(
    model: dsl.Input[dsl.Model],
    normalized: dsl.Input[dsl.Dataset],
    evaluate: dict,
    experiment: str,
    tracking_uri: str,
    kfp_run_name: str,
    kfp_run_id: str,
    metrics: dsl.Output[dsl.Metrics],
    classification: dsl.Output[dsl.ClassificationMetrics],
    report: dsl.Output[dsl.HTML],
    evaluation: dsl.Output[dsl.Dataset],
):
    """KFP wrapper: the evaluate step (test metrics, pictures, report; logged to MLflow)."""
    import shutil
    from pathlib import Path

    from components.core import filenames, tracking
    from components.core.errors import user_errors
    from components.core.settings import EvaluateConfig, load_section
    from components.evaluation.evaluate import evaluate as score
    from components.evaluation.evaluate import headline_metrics, log_to_mlflow, thinned_roc
    from components.evaluation.report_html import PIPELINE_REPORT_TITLE, write_report

    eval_dir = Path(evaluation.path)
    with user_errors():
        cfg = load_section(EvaluateConfig, evaluate, "evaluate.")
        result = score(Path(model.path) / filenames.MODEL, normalized.path, cfg, eval_dir)
    write_report(result, eval_dir, PIPELINE_REPORT_TITLE, result.metrics["synthetic"])
    shutil.copyfile(eval_dir / filenames.EVALUATION_REPORT, report.path)
    run_id = tracking.pipeline_run(tracking_uri, experiment, kfp_run_name, kfp_run_id)
    log_to_mlflow(tracking_uri, run_id, result.metrics, eval_dir)

    for name, value in headline_metrics(result.metrics).items():
        metrics.log_metric(name, value)
    classification.log_confusion_matrix(result.metrics["classes"], result.metrics["confusion_matrix"])
    if cfg.melanoma_class in result.metrics["classes"]:
        fpr, tpr, thresholds = thinned_roc(
            result.y_true, result.probs, result.metrics["classes"].index(cfg.melanoma_class)
        )
        classification.log_roc_curve(fpr, tpr, thresholds)

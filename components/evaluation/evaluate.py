"""Evaluate: score a model on held-out images, write every metric and the pictures
people look at (confusion matrices, ROC curves, reliability diagram, worst
misclassified images, Grad-CAM on melanomas) into one self-contained HTML report, and,
in the pipeline, log them to the pipeline's MLflow run. Registering the model and the
champion decision are the next step's (components.registry.register)."""

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from kfp import dsl

from components.core import filenames
from components.core.settings import DataConfig, EvaluateConfig
from components.data import tfrecords
from components.scoring.decisions import decide
from components.scoring.metrics import classification_metrics, reliability_bins, roc_points

HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "melanoma_auc",
            "melanoma_sensitivity_at_80_specificity", "melanoma_sensitivity_at_90_specificity", "ece")
# KFP keeps ROC points in the run's metadata: enough for a smooth curve, no more.
MAX_ROC_POINTS = 200
# (title, PNG file) of every picture made, so the report can be rendered again from the folder.
PICTURES_FILE = "pictures.json"
PIPELINE_REPORT_TITLE = "Evaluation on the held-out test split"


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
        return decide(self.probs, self.decision_bias)


# ---- pictures -----------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrices(matrix: list[list[int]], classes: list[str], path: Path) -> None:
    """Counts and row-normalised (each true class's recall on the diagonal), side by side."""
    plt = _pyplot()
    counts = np.asarray(matrix)
    normalised = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = max(4.0, 0.7 * len(classes) + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    for ax, values, title, fmt in ((axes[0], counts, "counts", "{:d}"), (axes[1], normalised, "normalised by true class", "{:.2f}")):
        ax.imshow(values, cmap="Blues")
        ax.set_title(title)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if values[i, j] > values.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_roc_curves(y_true: np.ndarray, probs: np.ndarray, classes: list[str], metrics: dict, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    for i, c in enumerate(classes):
        auc = metrics["per_class"][c]["auc"]
        if auc is None:
            continue
        fpr, tpr, _ = roc_points(y_true, probs, i)
        ax.plot(fpr, tpr, lw=2.5 if c == "melanoma" else 1.2, label=f"{c} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC, one class vs rest")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_reliability(y_true: np.ndarray, probs: np.ndarray, ece: float, path: Path) -> None:
    plt = _pyplot()
    bins = reliability_bins(y_true, probs)
    fig, ax = plt.subplots(figsize=(6, 6))
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    ax.bar(centres, [b["accuracy"] or 0 for b in bins], width=0.09, edgecolor="k", label="accuracy in bin")
    ax.plot([0, 1], [0, 1], "r--", label="perfect calibration")
    for x, b in zip(centres, bins):
        if b["count"]:
            ax.text(x, 0.02, str(b["count"]), ha="center", fontsize=7, rotation=90)
    ax.set_xlabel("confidence (top class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram (ECE {ece:.3f}); numbers: images per bin")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def worst_misclassified(y_true: np.ndarray, probs: np.ndarray, count: int,
                        predicted: np.ndarray | None = None) -> np.ndarray:
    """Indices of wrong predictions (``predicted``, else the argmax), lowest probability
    on the true class first."""
    wrong = np.flatnonzero((probs.argmax(1) if predicted is None else predicted) != y_true)
    true_prob = probs[wrong, y_true[wrong]]
    return wrong[np.argsort(true_prob, kind="stable")][:count]


def plot_image_grid(images: list[np.ndarray], captions: list[str], path: Path, overlays: list[np.ndarray] | None = None) -> None:
    plt = _pyplot()
    columns = min(4, len(images))
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (image, caption) in enumerate(zip(images, captions)):
        ax = axes.flat[k]
        ax.imshow(image.astype(np.uint8))
        if overlays is not None:
            ax.imshow(overlays[k], cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_title(caption, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def gradcam(model, images: np.ndarray, class_index: int) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017): the last feature map weighted by the pooled
    gradient of the class probability, ReLU, scaled to [0, 1] and resized to the image.
    For an ensemble, its first member's."""
    import keras
    import tensorflow as tf

    def feature_maps(model) -> list:
        return [layer for layer in model.layers
                if len(layer.output.shape) == 4 and not isinstance(layer, keras.layers.InputLayer)]

    while not feature_maps(model):  # an ensemble: the heatmap of its first member
        model = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    feature_layer = feature_maps(model)[-1]
    grad_model = keras.Model(model.inputs, [feature_layer.output, model.output])
    x = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        features, probs = grad_model(x, training=False)
        score = probs[:, class_index]
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(tf.cast(features, tf.float32) * weights, axis=-1))[..., None]
    cam = tf.image.resize(cam, images.shape[1:3])[..., 0].numpy()
    peak = cam.reshape(len(cam), -1).max(1)[:, None, None]
    return cam / np.maximum(peak, 1e-8)


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
        plot_reliability(ev.y_true, ev.probs, m["ece"], out / "reliability.png")
        ev.pictures.append(("Reliability diagram", "reliability.png"))
    predicted = ev.predicted
    worst = worst_misclassified(ev.y_true, ev.probs, cfg.worst_images, predicted)
    mel = classes.index(cfg.melanoma_class) if cfg.melanoma_class in classes else None
    picked = np.zeros(0, int)
    if mel is not None and cfg.gradcam_images:
        members = np.flatnonzero(ev.y_true == mel)
        picked = members[np.argsort(-ev.probs[members, mel], kind="stable")][:cfg.gradcam_images]
    shown = sorted(set(worst.tolist()) | set(picked.tolist()))
    images = images_at(shown)
    if len(worst):
        captions = [f"true {classes[ev.y_true[i]]}\npred {classes[predicted[i]]} ({ev.probs[i, predicted[i]]:.2f})"
                    for i in worst]
        plot_image_grid([images[i] for i in worst], captions, out / "worst_misclassified.png")
        ev.pictures.append(("Worst misclassified test images (lowest probability on the true class)",
                            "worst_misclassified.png"))
    if len(picked):
        heat = gradcam(model, np.stack([images[i] for i in picked]).astype(np.float32), mel)
        plot_image_grid([images[i] for i in picked], [f"melanoma, p(melanoma) {ev.probs[i, mel]:.2f}" for i in picked],
                        out / "gradcam_melanoma.png", overlays=list(heat))
        ev.pictures.append(("Grad-CAM on test melanomas (where the melanoma score looks)", "gradcam_melanoma.png"))


# ---- evaluation -----------------------------------------------------------------


def evaluate_predictions(model, classes: list[str], y_true: np.ndarray, probs: np.ndarray, images_at,
                         cfg: EvaluateConfig, output_dir: str | Path, synthetic: bool = False,
                         model_synthetic: bool = False, decision_bias: list[float] | None = None) -> Evaluation:
    """Metrics and pictures of ``model``'s probabilities ``probs`` (with ``cfg.tta`` if
    made so) on labelled images, whose uint8 pixels ``images_at(indices)`` gives for the
    pictures as {position: image} (see make_pictures); writes metrics.json,
    predictions.npz and the PNGs to ``output_dir``. ``synthetic``: the images are;
    ``model_synthetic``: the model was trained on synthetic images; ``decision_bias``: the
    model's offsets of its decision (components.scoring.decisions)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = classification_metrics(y_true, probs, classes, cfg.melanoma_class, decision_bias)
    metrics.update(tta=cfg.tta, synthetic=synthetic, model_synthetic=model_synthetic)
    ev = Evaluation(metrics, np.asarray(y_true, dtype=int), probs, decision_bias=decision_bias)
    (out / filenames.METRICS).write_text(json.dumps(metrics, indent=2))
    np.savez_compressed(out / filenames.PREDICTIONS, y_true=ev.y_true, probs=probs)
    make_pictures(model, images_at, ev, classes, cfg, out)
    (out / PICTURES_FILE).write_text(json.dumps(ev.pictures))
    return ev


def evaluate(model_path: str | Path, normalized_dir: str | Path, cfg: EvaluateConfig,
             output_dir: str | Path) -> Evaluation:
    """The pipeline's evaluation: the model on the normalized test split, streamed from
    its shards in batches (labels and probabilities are what it holds of the split)."""
    import keras

    from components.scoring.decisions import in_class_order, saved_decision_bias
    from components.scoring.inference import predict_probabilities

    model = keras.models.load_model(model_path, compile=False)
    meta = tfrecords.read_meta(normalized_dir)
    decision_bias = in_class_order(saved_decision_bias(Path(model_path).parent), meta["classes"])
    paths, size = tfrecords.shard_paths(normalized_dir, "test"), meta["image_size"]
    labels, _ = tfrecords.read_labels(paths)
    probs = predict_probabilities(model, tfrecords.image_dataset(paths, size, len(labels)), cfg.batch_size, cfg.tta)
    synthetic = bool(meta.get("synthetic", False))  # the model was trained on the same data
    return evaluate_predictions(model, meta["classes"], labels, probs,
                                lambda indices: dict(tfrecords.images_at(paths, size, indices)), cfg, output_dir,
                                synthetic, synthetic, decision_bias)


def evaluate_source(loaded, source_uri: str, data: DataConfig, cfg: EvaluateConfig, out_path: str | Path) -> dict:
    """``lesionpipe evaluate``: every labelled image ingest accepts from ``source_uri``,
    scored by a loaded model (components.scoring.inference.LoadedModel) with the pipeline's metrics
    and report. Images of classes the model does not know are counted, not scored."""
    from components.core.errors import UserError
    from components.data.ingest import ingest
    from components.scoring.inference import load_images

    manifest = ingest(source_uri, data).manifest
    usable = manifest[manifest.status == "ingested"]
    known = usable[usable.label.isin(loaded.classes)]
    unknown = sorted(set(usable.label) - set(loaded.classes))
    if known.empty:
        raise UserError(f"no image of {source_uri} has a class the model knows ({', '.join(loaded.classes)})")
    uris = known.uri.tolist()
    probs, errors = loaded.probabilities_of_files(uris, cfg.batch_size, cfg.tta)
    if any(errors):
        raise UserError(f"unreadable image: {next(e for e in errors if e)}")
    labels = known.label.map({c: i for i, c in enumerate(loaded.classes)}).to_numpy()
    out = Path(out_path)
    folder = out.parent / (out.stem + "_report")

    def images_at(indices: list[int]) -> dict[int, np.ndarray]:
        return dict(zip(indices, load_images([uris[i] for i in indices], loaded.image_size, loaded.resize_mode)[0]))

    ev = evaluate_predictions(loaded.model, loaded.classes, labels, probs, images_at, cfg, folder,
                              synthetic=source_uri == "", model_synthetic=loaded.synthetic,
                              decision_bias=loaded.decision_bias)
    ev.metrics["model_uri"] = loaded.uri
    ev.metrics["data"] = source_uri
    report = write_report(ev, folder, f"Evaluation of {loaded.uri} on {source_uri}", source_uri == "")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(ev.metrics, indent=2))
    return {"metrics": ev.metrics, "report": str(report), "skipped": int(len(usable) - len(known)),
            "skipped_reason": f"classes unknown to the model: {', '.join(unknown)}" if unknown else ""}


# ---- report ---------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _gate_section(gate: dict | None) -> str:
    if not gate:
        return ""
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v.get('new'))}</td><td>{_fmt(v.get('champion'))}</td>"
                   f"<td>{_fmt(v.get('minimum'))}</td></tr>" for k, v in gate["comparison"].items())
    return (f"<h2>Champion gate: <span class='{gate['alias']}'>{html.escape(gate['alias'].upper())}</span></h2>"
            f"<p>{html.escape(gate['reason'])}</p><p>Registered as <code>{html.escape(gate.get('model_uri', ''))}</code>"
            f"; current champion before this run: {html.escape(gate.get('previous_champion') or 'none')}.</p>"
            "<table><tr><th>metric (same test split)</th><th>this model</th><th>champion</th><th>minimum</th></tr>"
            f"{rows}</table>")


def render_report(metrics: dict, pictures: list[tuple[str, str]], folder: Path, title: str, synthetic: bool,
                  gate: dict | None = None) -> str:
    """One self-contained HTML page (pictures inlined), readable in MLflow, KFP and a mail."""
    rows = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td><td>{v['f1']:.3f}</td>"
        f"<td>{_fmt(v['auc'])}</td><td>{v['support']}</td></tr>"
        for c, v in metrics["per_class"].items())
    headline = "".join(f"<tr><td>{k.replace('_', ' ')}</td><td>{metrics[k]:.4f}</td></tr>"
                       for k in HEADLINE if metrics.get(k) is not None)
    warning = "<p class='warn'>SYNTHETIC data: these numbers say nothing about real lesions.</p>" if synthetic else ""
    if metrics.get("model_synthetic"):
        warning = ("<p class='warn banner'>SYNTHETIC model: trained on generated images, not medical images. Do not "
                   "use it on patients.</p>") + warning
    images = "".join(
        f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' src='data:image/png;base64,"
        f"{base64.b64encode((folder / name).read_bytes()).decode()}'>" for caption, name in pictures)
    tta = " with test-time augmentation (8 flips/turns averaged)" if metrics.get("tta") else ""
    offsets = metrics.get("decision_bias")
    decision = ("<p>Predicted class: the highest log probability after the model's per-class offsets, fitted on "
                "the validation split for balanced accuracy (AUCs use the probabilities as they are): "
                + ", ".join(f"{html.escape(c)} {b:+.2f}" for c, b in offsets.items()) + "</p>") if offsets else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Evaluation report</title>"
        "<style>body{font-family:sans-serif;max-width:1200px}td,th{border:1px solid #ccc;padding:2px 6px}"
        "table{border-collapse:collapse}.warn{color:#b00;font-weight:bold}.banner{border:3px solid #b00;padding:8px;"
        "font-size:1.4em}.champion{color:#070}"
        ".challenger{color:#b60}img{max-width:100%}</style></head><body>"
        f"<h1>{html.escape(title)} ({metrics['n']} images{tta})</h1>{warning}{_gate_section(gate)}"
        f"<h2>Metrics</h2><table>{headline}</table>{decision}"
        "<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>AUC</th>"
        f"<th>support</th></tr>{rows}</table>{images}</body></html>")


def write_report(ev: Evaluation, folder: str | Path, title: str, synthetic: bool, gate: dict | None = None) -> Path:
    path = Path(folder) / filenames.EVALUATION_REPORT
    path.write_text(render_report(ev.metrics, ev.pictures, Path(folder), title, synthetic, gate))
    return path


def report_with_gate(eval_dir: str | Path, gate: dict, path: str | Path) -> Path:
    """The pipeline's evaluation report, rendered again from its folder with the champion
    gate's decision (the register step's view of it)."""
    folder = Path(eval_dir)
    metrics = json.loads((folder / filenames.METRICS).read_text())
    pictures = [(title, name) for title, name in json.loads((folder / PICTURES_FILE).read_text())]
    Path(path).write_text(render_report(metrics, pictures, folder, PIPELINE_REPORT_TITLE,
                                        bool(metrics.get("synthetic")), gate))
    return Path(path)


def headline_metrics(metrics: dict) -> dict[str, float]:
    """Flat name -> value for MLflow and KFP Metrics (undefined values left out)."""
    flat = {k: metrics[k] for k in HEADLINE if metrics.get(k) is not None}
    flat.update({f"recall_{c}": r for c, r in metrics["per_class_recall"].items()})
    flat.update({f"auc_{c}": v["auc"] for c, v in metrics["per_class"].items() if v["auc"] is not None})
    return flat


def thinned_roc(y_true: np.ndarray, probs: np.ndarray, class_index: int) -> tuple[list[float], list[float], list[float]]:
    fpr, tpr, thresholds = roc_points(y_true, probs, class_index)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), MAX_ROC_POINTS)).round().astype(int))
    return [fpr[i] for i in keep], [tpr[i] for i in keep], [thresholds[i] for i in keep]


def log_to_mlflow(tracking_uri: str, run_id: str, metrics: dict, eval_dir: Path) -> None:
    """Test metrics (``test_*``) and the evaluation folder (report, pictures) into the run."""
    import mlflow

    from components.core import tracking
    with tracking.logging_into(tracking_uri, run_id):
        mlflow.log_metrics({f"test_{k}": v for k, v in headline_metrics(metrics).items()})
        mlflow.log_artifacts(str(eval_dir), artifact_path="evaluation")


def evaluate_step(model: dsl.Input[dsl.Model], normalized: dsl.Input[dsl.Dataset], evaluate: dict, experiment: str,
                  tracking_uri: str, kfp_run_name: str, kfp_run_id: str, metrics: dsl.Output[dsl.Metrics],
                  classification: dsl.Output[dsl.ClassificationMetrics], report: dsl.Output[dsl.HTML],
                  evaluation: dsl.Output[dsl.Dataset]):
    """KFP wrapper: the evaluate step (test metrics, pictures, report; logged to MLflow)."""
    import shutil
    from pathlib import Path

    from components.core import filenames, tracking
    from components.core.errors import user_errors
    from components.core.settings import EvaluateConfig, load_section
    from components.evaluation.evaluate import (
        PIPELINE_REPORT_TITLE,
        headline_metrics,
        log_to_mlflow,
        thinned_roc,
        write_report,
    )
    from components.evaluation.evaluate import evaluate as score

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
        fpr, tpr, thresholds = thinned_roc(result.y_true, result.probs,
                                           result.metrics["classes"].index(cfg.melanoma_class))
        classification.log_roc_curve(fpr, tpr, thresholds)

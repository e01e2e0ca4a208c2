"""The pipeline run's description in MLflow: the verdict in words at the top of the run
page (MLflow shows the run tag ``mlflow.note.content`` there, as Markdown). Test metrics
first, then the champion gate's decision with the registered version and alias, then
where the run came from (the KFP run's page, or the local run folder).

MLflow 3.17's run page lists metrics in the order the store returns them (the order they
were first logged: training epochs before the test metrics), so the test numbers a
reviewer looks for come first here, in the description above that table.

The register step writes it as soon as the decision is made; the report step writes it
again with the data warnings, and alone when the retraining gate skipped training."""

from __future__ import annotations

NOTE_TAG = "mlflow.note.content"
# The headline test metrics in the order a reviewer reads them, with their names in words.
TEST_METRICS = (
    ("balanced_accuracy", "balanced accuracy"),
    ("accuracy", "accuracy"),
    ("macro_f1", "macro-F1"),
    ("melanoma_auc", "melanoma AUC"),
    ("macro_auc", "macro AUC"),
)
SYNTHETIC_WARNING = (
    "**SYNTHETIC data**: this model was trained and tested on generated images "
    "(components/data/synthetic.py), not on medical images; its numbers say nothing about real lesions."
)


def kfp_run_url(kfp_ui_url: str, kfp_run_id: str) -> str:
    """The KFP run's page (``<ui>/#/runs/details/<id>``); '' for a local run (no UI)."""
    if not kfp_ui_url or not kfp_run_id:
        return ""
    return f"{kfp_ui_url.rstrip('/')}/#/runs/details/{kfp_run_id}"


def interval_text(metrics: dict, key: str) -> str:
    """`` [0.89, 0.94]``: the 95 % interval of ``metrics[key]`` (evaluate's ``intervals``),
    '' when it has none."""
    found = metrics.get("intervals", {}).get("values", {}).get(key)
    return f" [{found[0]:.2f}, {found[1]:.2f}]" if found else ""


def scores_text(metrics: dict, bold: str = "", intervals: bool = True) -> str:
    """``balanced accuracy 0.700 [0.65, 0.75], ...``: the headline test metrics, with their
    intervals unless ``intervals`` is False, each value between ``bold`` marks."""
    shown = [
        f"{words} {bold}{metrics[key]:.3f}{bold}{interval_text(metrics, key) if intervals else ''}"
        for key, words in TEST_METRICS
        if metrics.get(key) is not None
    ]
    return ", ".join(shown) if shown else "none defined"


def result_line(metrics: dict) -> str:
    """The console's: ``balanced accuracy 0.700 [0.65, 0.75], ..., melanoma AUC 0.915
    [0.89, 0.94]``, and the same per lesion where scored so."""
    line = scores_text(metrics)
    if metrics.get("per_lesion"):
        line += f"; per lesion ({metrics['per_lesion']['n']} lesions): {scores_text(metrics['per_lesion'])}"
    return line


def test_metrics_line(metrics: dict, label: str = "Test metrics") -> str:
    """The point figures, short: the MLflow UI shows a description's first lines only
    (the verdict and any SYNTHETIC warning must be among them); interval_lines follow."""
    n = f" ({metrics['n']} images)" if metrics.get("n") else ""
    return f"{label}{n}: " + scores_text(metrics, "**", intervals=False)


def interval_lines(metrics: dict) -> list[str]:
    """The test metrics with their 95 % intervals, and the same per lesion where scored
    so (components.scoring.intervals); none for metrics without intervals."""
    found = metrics.get("intervals")
    if not found:
        return []
    lines = [
        f"95 % intervals ({found['resamples']} resamples of {found['units']} {found['unit']}): " + scores_text(metrics)
    ]
    if metrics.get("per_lesion"):
        lines.append(f"Per lesion ({metrics['per_lesion']['n']} lesions): {scores_text(metrics['per_lesion'])}")
    return lines


def gate_lines(gate: dict) -> list[str]:
    name, version, alias = gate["model_name"], gate["version"], gate["alias"]
    verdict = "CHAMPION" if alias == "champion" else "not champion (challenger)"
    return [
        f"Verdict: **{verdict}**: registered model `{name}` version **{version}**, alias **@{alias}** "
        f"(`models:/{name}@{alias}`)",
        f"Champion gate: {gate['reason']}",
    ]


def origin_lines(kfp_url: str, local_run_dir: str) -> list[str]:
    lines = []
    if kfp_url:
        lines.append(f"Kubeflow Pipelines run: [{kfp_url}]({kfp_url})")
    if local_run_dir:
        lines.append(f"Local run folder: `{local_run_dir}`")
    return lines


def trained_description(
    metrics: dict,
    gate: dict,
    synthetic: bool,
    kfp_url: str = "",
    local_run_dir: str = "",
    warnings: list[str] | tuple[str, ...] = (),
) -> str:
    """The verdict of a run that trained: test metrics, gate decision, where it ran."""
    verdict, reason = gate_lines(gate)
    # The UI shows the first few paragraphs, then "Show more": the verdict and any
    # SYNTHETIC warning first, the explanations after.
    lines = [test_metrics_line(metrics), verdict]
    if synthetic:
        lines.append(SYNTHETIC_WARNING)
    lines += interval_lines(metrics)
    lines += origin_lines(kfp_url, local_run_dir)
    lines.append(reason)
    lines += [f"Warning: {w}" for w in warnings]
    return "\n\n".join(lines) + "\n"


def skipped_description(reason: str, champion: dict, kfp_url: str = "", local_run_dir: str = "") -> str:
    """The verdict of a run the retraining gate stopped after ingest."""
    lines = [f"Verdict: **training skipped**: {reason} (`--force-retrain` trains anyway)"]
    if champion:
        lines.append(f"Champion kept: `{champion['model_uri']}`")
        if champion.get("test_metrics"):
            lines.append(test_metrics_line(champion["test_metrics"], "Champion's test metrics"))
    lines += origin_lines(kfp_url, local_run_dir)
    return "\n\n".join(lines) + "\n"


def failed_description(status: str, reason: str, previous: str = "") -> str:
    """A FAILED or KILLED run: the reason on top, whatever was written before below it."""
    return f"Verdict: **{status}**: {reason}\n\n" + previous


def model_version_description(gate: dict, metrics: dict, synthetic: bool, mlflow_run_url: str = "") -> str:
    """The registered version's own description (the model page shows it)."""
    lines = [test_metrics_line(metrics), f"Champion gate: **@{gate['alias']}**: {gate['reason']}"]
    lines += interval_lines(metrics)
    if synthetic:
        lines.insert(0, SYNTHETIC_WARNING)
    if mlflow_run_url:
        lines.append(f"Trained in MLflow run {mlflow_run_url}")
    return "\n\n".join(lines) + "\n"

"""The evaluation report: one self-contained HTML page (pictures inlined), readable in
MLflow, KFP and a mail; rendered by the evaluate step, and again by the register step
with the champion gate's decision."""

from __future__ import annotations

import html
import json
from pathlib import Path

from components.core import filenames
from components.core.html_images import data_uri, img_tag

HEADLINE = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "macro_auc",
    "melanoma_auc",
    "melanoma_sensitivity_at_80_specificity",
    "melanoma_sensitivity_at_90_specificity",
    "ece",
)
# (title, PNG file) of every picture made, so the report can be rendered again from the folder.
PICTURES_FILE = "pictures.json"
PIPELINE_REPORT_TITLE = "Evaluation on the held-out test split"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _interval(metrics: dict, name: str) -> str:
    found = metrics.get("intervals", {}).get("values", {}).get(name)
    return f"[{found[0]:.3f}, {found[1]:.3f}]" if found else ""


def _gate_section(gate: dict | None) -> str:
    if not gate:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_fmt(v.get('new'))}</td><td>{_fmt(v.get('champion'))}</td>"
        f"<td>{_fmt(v.get('minimum'))}</td></tr>"
        for k, v in gate["comparison"].items()
    )
    difference = gate.get("difference")
    if difference:
        rows += (
            f"<tr><td>{html.escape(difference['metric'])}: this model minus champion</td>"
            f"<td colspan='3'>{difference['estimate']:+.4f}, 95 % interval [{difference['low']:+.4f}, "
            f"{difference['high']:+.4f}]</td></tr>"
        )
    return (
        f"<h2>Champion gate: <span class='{gate['alias']}'>{html.escape(gate['alias'].upper())}</span></h2>"
        f"<p>{html.escape(gate['reason'])}</p><p>Registered as <code>{html.escape(gate.get('model_uri', ''))}</code>"
        f"; current champion before this run: {html.escape(gate.get('previous_champion') or 'none')}.</p>"
        "<table><tr><th>metric (same test split)</th><th>this model</th><th>champion</th><th>minimum</th></tr>"
        f"{rows}</table>"
    )


def _headline_table(metrics: dict) -> str:
    rows = "".join(
        f"<tr><td>{k.replace('_', ' ')}</td><td>{metrics[k]:.4f}</td><td>{_interval(metrics, k)}</td></tr>"
        for k in HEADLINE
        if metrics.get(k) is not None
    )
    drawn = metrics.get("intervals")
    how = (
        (
            f"<p>95 % intervals: bootstrap over the {drawn['units']} {html.escape(drawn['unit'])} of the test "
            f"split, {drawn['resamples']} resamples (seed {drawn['seed']}); see docs/metrics.md.</p>"
        )
        if drawn
        else ""
    )
    return f"<table><tr><th>metric</th><th>value</th><th>95 % interval</th></tr>{rows}</table>{how}"


def _per_class_table(metrics: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td>"
        f"<td>{_interval(metrics, 'recall_' + c)}</td><td>{v['f1']:.3f}</td><td>{_fmt(v['auc'])}</td>"
        f"<td>{v['support']}</td></tr>"
        for c, v in metrics["per_class"].items()
    )
    return (
        "<table><tr><th>class</th><th>precision</th><th>recall</th><th>recall 95 % interval</th><th>F1</th>"
        f"<th>AUC</th><th>support</th></tr>{rows}</table>"
    )


def _per_lesion_section(metrics: dict) -> str:
    lesions = metrics.get("per_lesion")
    if not lesions:
        return ""
    return (
        f"<h2>Per lesion ({lesions['n']} lesions)</h2><p>Each lesion's images' probabilities averaged into one "
        "prediction, beside the per-image figures above.</p>" + _headline_table(lesions) + _per_class_table(lesions)
    )


def _ci(values: list[float] | None) -> str:
    return f"[{values[0]:.3f}, {values[1]:.3f}]" if values else ""


def _clinical_sections(metrics: dict) -> str:
    """Calibration, operating points, referral and subgroups (components.evaluation.clinical)."""
    out = ""
    cal = metrics.get("calibration")
    if cal:
        out += (
            f"<h2>Calibration (temperature {cal['temperature']:.3f}, fitted on validation)</h2><table>"
            "<tr><th></th><th>ECE</th><th>Brier score</th></tr>"
            + "".join(
                f"<tr><td>{when} temperature</td><td>{_fmt(cal['ece_' + when])}</td>"
                f"<td>{_fmt(cal['brier_' + when])}</td></tr>"
                for when in ("before", "after")
            )
            + "</table>"
        )
    points = metrics.get("operating_points")
    if points:
        rows = "".join(
            f"<tr><td>{'<b>flag</b> ' if name == points['flag'] else ''}target {name} {p['target']:.2f}</td>"
            f"<td>{p['threshold']:.4f}</td>"
            + "".join(
                f"<td>{_fmt(p['test'][r])} {_ci(p['test'].get(r + '_ci'))}</td>" for r in ("sensitivity", "specificity")
            )
            + "</tr>"
            for name, p in points["points"].items()
        )
        out += (
            f"<h2>Melanoma operating points (chosen on validation)</h2><table><tr><th>point</th>"
            f"<th>threshold on p({html.escape(points['melanoma_class'])})</th><th>test sensitivity [95 %]</th>"
            f"<th>test specificity [95 %]</th></tr>{rows}</table>"
        )
    ref = metrics.get("referral")
    if ref and ref.get("at"):
        rows = "".join(
            f"<tr><td>{c} %</td><td>{f['kept']}</td><td>{_fmt(f['accuracy'])}</td>"
            f"<td>{_fmt(f.get('melanoma_sensitivity'))}</td><td>{f.get('melanomas_referred', '')}</td></tr>"
            for c, f in ref["at"].items()
        )
        fitted = (
            f"<p>predict refers images with uncertainty above {ref['threshold']:.4f} (fitted on validation for "
            f"{ref['coverage_fitted']:.0%} coverage; {_fmt(ref['coverage_on_test'])} of test images kept).</p>"
            if ref.get("threshold") is not None
            else ""
        )
        out += (
            "<h2>Referral (the most uncertain images referred)</h2><table><tr><th>coverage</th><th>kept</th>"
            f"<th>accuracy</th><th>melanoma sensitivity (flag)</th><th>melanomas referred</th></tr>{rows}</table>"
            + fitted
        )
    return out + _subgroup_section(metrics.get("subgroups"))


def _subgroup_section(rows: list[dict] | None) -> str:
    if not rows:
        return ""
    names = ("balanced_accuracy", "melanoma_auc", "melanoma_sensitivity", "melanoma_specificity")
    body = "".join(
        f"<tr{' class=small' if r['small'] else ''}><td>{html.escape(r['attribute'])}</td>"
        f"<td>{html.escape(r['value'])}</td><td>{r['level']}</td><td>{r['n']}</td><td>{r['melanomas']}</td>"
        + "".join(f"<td>{_fmt(r.get(n))} {_ci(r.get(n + '_ci'))}</td>" for n in names)
        + f"<td>{'small' if r['small'] else ''}</td></tr>"
        for r in rows
    )
    return (
        "<h2>Subgroups</h2><p>Per subgroup of the test split, 95 % intervals by bootstrap within it; sensitivity "
        "and specificity of the melanoma flag at the stored operating point. <i>small</i>: too few images or "
        "melanomas to act on (shown, not hidden).</p><table><tr><th>attribute</th><th>value</th><th>level</th>"
        "<th>n</th><th>melanomas</th><th>balanced accuracy</th><th>melanoma AUC</th><th>melanoma sensitivity</th>"
        f"<th>melanoma specificity</th><th></th></tr>{body}</table>"
    )


def render_report(
    metrics: dict, pictures: list[tuple[str, str]], folder: Path, title: str, synthetic: bool, gate: dict | None = None
) -> str:
    """One self-contained HTML page (pictures inlined), readable in MLflow, KFP and a mail."""
    warning = "<p class='warn'>SYNTHETIC data: these numbers say nothing about real lesions.</p>" if synthetic else ""
    if metrics.get("model_synthetic"):
        warning = (
            "<p class='warn banner'>SYNTHETIC model: trained on generated images, not medical images. Do not "
            "use it on patients.</p>"
        ) + warning
    images = "".join(
        f"<h2>{html.escape(caption)}</h2>" + img_tag(data_uri((folder / name).read_bytes(), "image/png"), caption)
        for caption, name in pictures
    )
    tta = " with test-time augmentation (8 flips/turns averaged)" if metrics.get("tta") else ""
    offsets = metrics.get("decision_bias")
    decision = (
        (
            "<p>Predicted class: the highest log probability after the model's per-class offsets, fitted on "
            "the validation split for balanced accuracy (AUCs use the probabilities as they are): "
            + ", ".join(f"{html.escape(c)} {b:+.2f}" for c, b in offsets.items())
            + "</p>"
        )
        if offsets
        else ""
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Evaluation report</title>"
        "<style>body{font-family:sans-serif;max-width:1200px}td,th{border:1px solid #ccc;padding:2px 6px}"
        "table{border-collapse:collapse}.warn{color:#b00;font-weight:bold}.banner{border:3px solid #b00;padding:8px;"
        "font-size:1.4em}.champion{color:#070}"
        ".challenger{color:#b60}.small{color:#888}img{max-width:100%}</style></head><body>"
        f"<h1>{html.escape(title)} ({metrics['n']} images{tta})</h1>{warning}{_gate_section(gate)}"
        f"<h2>Metrics</h2>{_headline_table(metrics)}{decision}"
        f"<h2>Per class</h2>{_per_class_table(metrics)}{_per_lesion_section(metrics)}{_clinical_sections(metrics)}"
        f"{images}</body></html>"
    )


def write_report(ev, folder: str | Path, title: str, synthetic: bool, gate: dict | None = None) -> Path:
    """The report of ``ev`` (components.evaluation.evaluate.Evaluation: its metrics and
    pictures, which are in ``folder``), written there."""
    path = Path(folder) / filenames.EVALUATION_REPORT
    path.write_text(render_report(ev.metrics, ev.pictures, Path(folder), title, synthetic, gate))
    return path


def report_with_gate(eval_dir: str | Path, gate: dict, path: str | Path) -> Path:
    """The pipeline's evaluation report, rendered again from its folder with the champion
    gate's decision (the register step's view of it)."""
    folder = Path(eval_dir)
    metrics = json.loads((folder / filenames.METRICS).read_text())
    pictures = [(title, name) for title, name in json.loads((folder / PICTURES_FILE).read_text())]
    Path(path).write_text(
        render_report(metrics, pictures, folder, PIPELINE_REPORT_TITLE, bool(metrics.get("synthetic")), gate)
    )
    return Path(path)

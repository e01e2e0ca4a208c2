"""A model card for every registered version, as JSON (Model Card Toolkit's field names
where they fit: model_details, model_parameters, quantitative_analysis, considerations)
and as Markdown: what the model is for and not for, what it was trained on, how it did on
the test split (overall with intervals, per lesion, subgroups, calibration, operating
points, referral), the champion gate's decision, and its limitations. The register step
writes it, logs it into the pipeline's MLflow run (MODEL_CARD_ARTIFACTS) and links it from
the version's description; ``lesionpipe card --model URI`` prints it."""

from __future__ import annotations

import json
from pathlib import Path

from components.core import filenames

MODEL_CARD_ARTIFACTS = "model_card"
INTENDED_USES = [
    "Research and evaluation of dermoscopic skin-lesion classification by clinical ML teams.",
    "A second reader that ranks dermoscopic images by melanoma probability for a dermatologist, "
    "at the stored operating point, referring its most uncertain images to a person.",
]
OUT_OF_SCOPE = [
    "Diagnosis without a clinician; any use as a medical device without regulatory clearance.",
    "Clinical (non-dermoscopic) photographs, smartphone pictures, histology, or lesions outside the training classes.",
    "Populations unlike the training data's (see limitations): its figures do not carry over untested.",
]
LIMITATIONS = [
    "HAM10000's source images are 200x150 px dermoscopy from two sites (Vienna, Austria; Queensland, Australia): "
    "mostly fair-skinned European and Australian patients.",
    "No skin-tone (Fitzpatrick) data in the sources: performance on darker skin is unknown.",
    "Follow-up and consensus-confirmed cases are mostly easy naevi; the histopathology-confirmed subgroup says "
    "more about hard cases.",
    "Thresholds, temperature and referral are fitted on the validation split of the same source; a new site "
    "needs them checked again.",
    "Subgroups marked small have intervals too wide to act on.",
]


def _metric(kind: str, value, ci=None, slice_: str = "", threshold: float | None = None) -> dict:
    out: dict = {"type": kind, "value": None if value is None else round(float(value), 4)}
    if ci:
        out["confidence_interval"] = {"lower_bound": round(ci[0], 4), "upper_bound": round(ci[1], 4)}
    if slice_:
        out["slice"] = slice_
    if threshold is not None:
        out["threshold"] = round(float(threshold), 4)
    return out


def performance_metrics(metrics: dict) -> list[dict]:
    """quantitative_analysis.performance_metrics: overall, per lesion, operating points,
    calibration, referral and subgroups, each figure with its 95 % interval."""
    headline = ("accuracy", "balanced_accuracy", "macro_auc", "melanoma_auc")
    found = []
    for level, m in (("", metrics), ("per lesion", metrics.get("per_lesion"))):
        for k in headline:
            if m and m.get(k) is not None:
                found.append(_metric(k, m[k], m.get("intervals", {}).get("values", {}).get(k), level))
    for name, p in ((metrics.get("operating_points") or {}).get("points") or {}).items():
        for rate in ("sensitivity", "specificity"):
            found.append(
                _metric(
                    f"melanoma_{rate}",
                    p["test"].get(rate),
                    p["test"].get(f"{rate}_ci"),
                    f"target {name} {p['target']}",
                    p["threshold"],
                )
            )
    for k, v in (metrics.get("calibration") or {}).items():
        found.append(_metric(k, v, slice_="calibration"))
    for coverage, f in ((metrics.get("referral") or {}).get("at") or {}).items():
        for k in ("accuracy", "melanoma_sensitivity"):
            found.append(_metric(k, f.get(k), slice_=f"{coverage} % coverage (referral)"))
    for r in metrics.get("subgroups") or []:
        where = (
            f"{r['attribute']}={r['value']} ({r['level']}s, n={r['n']}, {r['melanomas']} melanomas"
            f"{', small' if r['small'] else ''})"
        )
        for k in ("balanced_accuracy", "melanoma_auc", "melanoma_sensitivity", "melanoma_specificity"):
            if r.get(k) is not None:
                found.append(_metric(k, r[k], r.get(f"{k}_ci"), where))
    return found


def build_card(name: str, version: str, model_uri: str, metrics: dict, gate: dict, data: dict) -> dict:
    """The card (JSON). ``data``: source, format, fingerprint, classes and counts per
    class and subset (normalize's dataset meta), model architecture, where known."""
    counts = data.get("class_counts") or {}
    classes = metrics.get("classes", [])
    return {
        "schema_version": "0.0.2",
        "model_details": {
            "name": name,
            "version": {"name": str(version)},
            "overview": f"Dermoscopic skin-lesion classifier ({len(classes)} classes: {', '.join(classes)}).",
            "path": model_uri,
        },
        "model_parameters": {
            "model_architecture": data.get("model", ""),
            "input_format": f"RGB dermoscopic image, {data.get('image_size', '?')} px ({data.get('resize_mode', '')})",
            "output_format": "calibrated class probabilities, the predicted class, a melanoma flag, "
            "an uncertainty and a refer flag",
            "data": [
                {
                    "name": f"{subset} split",
                    "description": f"source {data.get('source') or 'n/a'} (format {data.get('format') or 'n/a'}), "
                    f"data fingerprint {data.get('fingerprint') or 'n/a'}",
                    "counts_per_class": dict(zip(data.get("classes", classes), counts.get(subset, []))),
                }
                for subset in ("train", "val", "test")
                if subset in counts
            ],
        },
        "quantitative_analysis": {"performance_metrics": performance_metrics(metrics)},
        "considerations": {
            "use_cases": [{"description": d} for d in INTENDED_USES],
            "out_of_scope_uses": [{"description": d} for d in OUT_OF_SCOPE],
            "limitations": [{"description": d} for d in LIMITATIONS]
            + (
                [{"description": "Trained on SYNTHETIC images: says nothing about real lesions."}]
                if metrics.get("synthetic")
                else []
            ),
        },
        "gate": {"alias": gate.get("alias"), "reason": gate.get("reason"), "difference": gate.get("difference")},
    }


def _cell(m: dict) -> str:
    if m["value"] is None:
        return "n/a"
    ci = m.get("confidence_interval")
    return f"{m['value']:.3f}" + (f" [{ci['lower_bound']:.3f}, {ci['upper_bound']:.3f}]" if ci else "")


def _metrics_table(found: list[dict]) -> list[str]:
    """One row per slice, one column per metric type: value [95 % interval]."""
    slices = list(dict.fromkeys(m.get("slice", "overall") or "overall" for m in found))
    kinds = list(dict.fromkeys(m["type"] for m in found))
    cells = {(m.get("slice", "overall") or "overall", m["type"]): _cell(m) for m in found}
    lines = ["| slice | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    lines += [f"| {s} | " + " | ".join(cells.get((s, k), "") for k in kinds) + " |" for s in slices]
    return lines


def card_markdown(card: dict) -> str:
    details, params = card["model_details"], card["model_parameters"]
    found = card["quantitative_analysis"]["performance_metrics"]
    lines = [f"# Model card: {details['name']} version {details['version']['name']}", "", details["overview"], ""]
    lines += [
        f"Model: `{details['path']}`; architecture {params['model_architecture'] or 'n/a'}; "
        f"input {params['input_format']}.",
        "",
    ]
    for title, key in (("Intended use", "use_cases"), ("Out of scope", "out_of_scope_uses")):
        lines += [f"## {title}", ""] + [f"- {u['description']}" for u in card["considerations"][key]] + [""]
    lines += ["## Training data", ""]
    for d in params["data"]:
        lines.append(
            f"- {d['name']}: {sum(d['counts_per_class'].values())} images ({d['description']}); per class: "
            + ", ".join(f"{c} {n}" for c, n in d["counts_per_class"].items())
        )
    groups = (
        ("Overall and per lesion (95 % intervals, bootstrap over lesions)", lambda s: s in ("", "per lesion")),
        ("Melanoma operating points (chosen on validation, test figures)", lambda s: s.startswith("target")),
        ("Calibration (test split)", lambda s: s == "calibration"),
        ("Referral (the most uncertain images referred)", lambda s: s.endswith("(referral)")),
    )
    lines += ["", "## Evaluation on the held-out test split", ""]
    shown = set()
    for title, wanted in groups:
        part = [m for m in found if wanted(m.get("slice", ""))]
        shown.update(id(m) for m in part)
        if part:
            lines += [f"### {title}", ""] + _metrics_table(part) + [""]
    subgroups = [m for m in found if id(m) not in shown]
    if subgroups:
        lines += ["### Subgroups (small: too few images or melanomas to act on)", ""] + _metrics_table(subgroups) + [""]
    gate = card["gate"]
    lines += ["## Champion gate", "", f"**@{gate['alias']}**: {gate['reason']}", "", "## Limitations", ""]
    lines += [f"- {u['description']}" for u in card["considerations"]["limitations"]]
    return "\n".join(lines) + "\n"


def write_card(folder: str | Path, card: dict) -> tuple[Path, Path]:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / filenames.MODEL_CARD_JSON).write_text(json.dumps(card, indent=1))
    (out / filenames.MODEL_CARD_MD).write_text(card_markdown(card))
    return out / filenames.MODEL_CARD_MD, out / filenames.MODEL_CARD_JSON


def card_of_model(model_uri: str, tracking_uri: str, as_json: bool = False) -> str:
    """The Markdown (or ``as_json``: JSON) card of a registered version (models:/<name>/<version>,
    models:/<name>@<alias>), of the run that logged it (runs:/<run>/...), or a local file
    or folder holding model_card.md."""
    import mlflow

    from components.core import tracking
    from components.core.errors import UserError

    file_name = filenames.MODEL_CARD_JSON if as_json else filenames.MODEL_CARD_MD
    local = Path(model_uri).expanduser()
    if not model_uri.startswith(("models:/", "runs:/")):
        path = local / file_name if local.is_dir() else local
        if not path.is_file():
            raise UserError(f"no model card at {model_uri}")
        return path.read_text()
    client = tracking.client(tracking_uri)
    try:
        if model_uri.startswith("runs:/"):
            run_id = model_uri[len("runs:/") :].split("/")[0]
        else:
            name, _, rest = model_uri[len("models:/") :].partition("@")
            if rest:
                version = client.get_model_version_by_alias(name, rest)
            else:
                name, _, number = name.partition("/")
                version = client.get_model_version(name, number)
            run_id = version.run_id
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"{MODEL_CARD_ARTIFACTS}/{file_name}", tracking_uri=tracking_uri
        )
    except mlflow.exceptions.MlflowException as exc:
        raise UserError(f"no model card for {model_uri}: {exc.message.splitlines()[0]}") from None
    return Path(path).read_text()


def publish_card(
    tracking_uri: str,
    run_id: str,
    model_name: str,
    gate: dict,
    metrics: dict,
    normalized_dir: str | Path,
    data_fingerprint: str,
    out: str | Path,
) -> str:
    """The register step's card: built from the evaluation's ``metrics``, the gate's
    decision, the normalized data's classes and counts and the run's data and train
    params; written to ``out``, logged into the run ``run_id`` (MODEL_CARD_ARTIFACTS)
    and tagged on the version. Returns the line the version's description links it with."""
    import mlflow

    from components.core import tracking
    from components.data import tfrecords

    params = tracking.client(tracking_uri).get_run(run_id).data.params
    data = {
        **tfrecords.read_meta(normalized_dir),
        "fingerprint": data_fingerprint,
        "source": params.get("data.source", ""),
        "format": params.get("data.format", ""),
        "model": params.get("train.model", ""),
    }
    card = build_card(model_name, gate["version"], gate["model_uri"], metrics, gate, data)
    md, js = write_card(out, card)
    with tracking.logging_into(tracking_uri, run_id):
        mlflow.log_artifact(str(md), artifact_path=MODEL_CARD_ARTIFACTS)
        mlflow.log_artifact(str(js), artifact_path=MODEL_CARD_ARTIFACTS)
    where = f"runs:/{run_id}/{MODEL_CARD_ARTIFACTS}/{filenames.MODEL_CARD_MD}"
    tracking.client(tracking_uri).set_model_version_tag(model_name, gate["version"], "model_card", where)
    return f"Model card: {where} (`lesionpipe card --model models:/{model_name}/{gate['version']}`)"

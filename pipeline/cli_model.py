"""``lesionpipe predict`` (score image files with a model), ``lesionpipe serve`` (answer
images over HTTP) and ``lesionpipe ui`` (review runs and models in the MLflow UI)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import click

from components.core import filenames
from components.core.settings import EvaluateConfig
from components.core.tracking import resolve_tracking_uri
from pipeline.cli_options import DEFAULT_OUTPUT_DIR

MODEL_URI_HELP = "Model URI: models:/<name>@champion, models:/<name>/<version>, runs:/<run>/model, or a local path."


@click.command()
@click.option("--model", "model_uri", required=True, help=MODEL_URI_HELP)
@click.argument("images", nargs=-1, required=True, metavar="IMAGE_OR_DIR...")
@click.option(
    "--out",
    "out_path",
    default="predictions.csv",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="CSV: one row per image, every class's (calibrated) probability, the melanoma probability, "
    "melanoma_flag (at the model's stored operating point), uncertainty, refer (above the model's "
    "referral threshold, fitted with --tta), errors, and synthetic_model (true: trained on synthetic data).",
)
@click.option(
    "--melanoma-class",
    default=EvaluateConfig().melanoma_class,
    show_default=True,
    help="The class whose probability is the melanoma_probability column.",
)
@click.option("--tta", is_flag=True, help="Average over 8 flips/turns of each image.")
@click.option(
    "--lesions",
    "lesions_csv",
    type=click.Path(dir_okay=False),
    help="CSV naming the lesion each image shows: an image column (image, image_id or image_name: the "
    "file name without extension) and a lesion column (lesion or lesion_id); HAM10000's metadata CSV "
    "works as is. Also writes OUT with _lesions before its extension: one row per lesion, its "
    "images' probabilities averaged, the class predicted from them, and its number of images.",
)
@click.option(
    "--tracking-uri",
    help="MLflow tracking URI for models:/ and runs:/ URIs (default: "
    "$MLFLOW_TRACKING_URI, else mlflow.db in the working folder).",
)
def predict(model_uri, images, out_path, melanoma_class, tta, lesions_csv, tracking_uri):
    """Every class's probability and the melanoma probability for each IMAGE_OR_DIR (CSV);
    with --lesions, per lesion too."""
    from components.evaluation.predict import find_images, predict_files, write_csv, write_lesions
    from components.scoring.inference import load_model

    loaded = load_model(model_uri, resolve_tracking_uri(tracking_uri))
    if loaded.synthetic:
        click.echo(loaded.synthetic_warning(), err=True)
    if loaded.refer_threshold is not None and (loaded.referral or {}).get("tta_views") and not tta:
        click.echo("note: the referral threshold was fitted with 8 flips/turns: use --tta for refer", err=True)
    rows = predict_files(loaded, find_images(list(images)), melanoma_class, tta=tta)
    write_csv(rows, out_path)
    failed = sum(1 for r in rows if r["error"])
    click.echo(
        f"{len(rows)} images -> {out_path}"
        + (f" ({failed} unreadable, see the error column)" if failed else "")
        + (" (SYNTHETIC model: see the synthetic_model column)" if loaded.synthetic else "")
    )
    if lesions_csv:
        click.echo(write_lesions(rows, loaded, lesions_csv, out_path, melanoma_class))


@click.command()
@click.option("--model", "model_uri", required=True, help=MODEL_URI_HELP)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8080, show_default=True, help="Port of POST /invocations and GET /health.")
@click.option("--workers", default=1, show_default=True, help="Server processes (each holds the model).")
@click.option(
    "--tracking-uri",
    help="MLflow tracking URI for models:/ and runs:/ URIs (default: $MLFLOW_TRACKING_URI, else mlflow.db "
    "in the working folder).",
)
def serve(model_uri, host, port, workers, tracking_uri):
    """Answer images over HTTP: `mlflow models serve` of MODEL, its alias resolved once, at
    start (restart to serve a new champion); each answer names the version."""
    from components.scoring.inference import registered_version
    from components.scoring.served_model import VERSION

    uri = resolve_tracking_uri(tracking_uri)
    version = registered_version(model_uri, uri) if model_uri.startswith("models:/") else ""
    served = version or model_uri
    config = json.loads(os.environ.get("SERVING_MODEL_CONFIG") or "{}") | ({VERSION: version} if version else {})
    env = os.environ | {
        "MLFLOW_TRACKING_URI": uri,
        "SERVING_MODEL_CONFIG": json.dumps(config),  # read by MLflow's scoring server as the model_config
        # MLflow starts `uvicorn` from PATH: this environment's, even when it is not activated.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", served, "--env-manager", "local"]
    cmd += ["--host", host, "--port", str(port), "--workers", str(workers)]
    click.echo(f"serving {served} ({model_uri}) on http://{host}:{port}/invocations; Ctrl-C to stop", err=True)
    os.execve(sys.executable, cmd, env)


@click.command()
@click.option("--model", "model_uri", required=True, help=MODEL_URI_HELP + " (or a folder holding model_card.md)")
@click.option("--json", "as_json", is_flag=True, help="Print the card's JSON instead of its Markdown.")
@click.option(
    "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else mlflow.db in the working folder)."
)
def card(model_uri, as_json, tracking_uri):
    """Print the model card of a registered version (Markdown)."""
    from components.registry.model_card import card_of_model

    click.echo(card_of_model(model_uri, resolve_tracking_uri(tracking_uri), as_json), nl=False)


def recorded_store(output_dir: str | Path) -> tuple[str, Path] | None:
    """The tracking URI the newest finished run under ``output_dir`` recorded in its
    summary.json, and that file; None when there is none."""
    summaries = sorted(Path(output_dir).glob(f"*/{filenames.SUMMARY}"), key=lambda p: p.stat().st_mtime)
    for path in reversed(summaries):
        try:
            uri = json.loads(path.read_text()).get("tracking_uri")
        except (OSError, ValueError):
            continue
        if uri:
            return uri, path
    return None


@click.command()
@click.option(
    "--tracking-uri",
    help="Store to show. Default: the store the newest run under --output-dir "
    "recorded (its summary.json), else $MLFLOW_TRACKING_URI, else mlflow.db in "
    "the working folder.",
)
@click.option(
    "--output-dir",
    default=DEFAULT_OUTPUT_DIR,
    show_default=True,
    type=click.Path(file_okay=False),
    help="The runs' folder (lesionpipe run --output-dir) whose newest summary.json names the store.",
)
@click.option("--port", default=5000, show_default=True, help="Port of the UI on 127.0.0.1.")
def ui(tracking_uri, output_dir, port):
    """Open the MLflow UI on the store your runs logged to."""
    recorded = None if tracking_uri else recorded_store(output_dir)
    uri = recorded[0] if recorded else resolve_tracking_uri(tracking_uri)
    if urlparse(uri).scheme in ("http", "https"):
        click.echo(f"the runs are on the tracking server {uri}: open it in a browser")
        return
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    where = f", as {recorded[1]} records" if recorded else ""
    click.echo(
        f"MLflow UI on http://127.0.0.1:{port} (store {uri}{where}; the sidebar's 'Model training' switch "
        "shows runs tables, and the links lesionpipe prints open there); Ctrl-C to stop",
        err=True,
    )
    os.execv(sys.executable, cmd)

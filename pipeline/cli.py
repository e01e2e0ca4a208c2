"""``lesionpipe``: the command group, and the commands that run on this machine: the
whole pipeline, ingest alone, evaluate a model. The cluster commands are in
pipeline.cli_cluster, predict, serve and ui in pipeline.cli_model, config in pipeline.cli_config."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from components.core.run_descriptions import result_line
from components.core.settings import DATA_FORMATS
from components.core.tracking import resolve_tracking_uri, ui_command
from pipeline.cli_cluster import compile_, schedule, submit
from pipeline.cli_config import config
from pipeline.cli_model import MODEL_URI_HELP, card, predict, serve, ui
from pipeline.cli_options import (
    DEFAULT_OUTPUT_DIR,
    TRACKING_PRECEDENCE,
    LesionCLI,
    config_options,
    exit_interrupted,
    load_config,
)

# TensorFlow's C++ start-up chatter hides the pipeline's progress; warnings still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block: native libraries write there
    directly, past sys.stderr. Python exceptions still propagate."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def decision_rule(metrics: dict) -> str:
    """How the predicted classes behind ``metrics`` were decided, when not by plain argmax."""
    return " (classes decided with the model's validation-fitted offsets)" if metrics.get("decision_bias") else ""


@click.group(cls=LesionCLI, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lesion-pipeline")
def main() -> None:
    """Dermoscopic images in; a trained, evaluated, registered classifier out, tracked in MLflow."""


@main.command()
@config_options(set_example="train.epochs=3 --set data.image_size=96")
@click.option(
    "--data",
    help="Images: a folder, a .zip, or gs://bucket/prefix (class subfolders, Kaggle "
    "Train/Test, or CSV + images). Default: the config's data.source, else a small "
    "SYNTHETIC dataset.",
)
@click.option(
    "--output-dir",
    default=DEFAULT_OUTPUT_DIR,
    show_default=True,
    type=click.Path(file_okay=False),
    help="Each run gets a folder here (summary.json, logs); 'latest' links the newest. The same "
    "command with the same folder resumes a killed training.",
)
@click.option("--tracking-uri", help=f"MLflow tracking URI (default: {TRACKING_PRECEDENCE}).")
@click.option(
    "--force-retrain", is_flag=True, help="Train even when the data is the data the current champion was trained on."
)
@click.option("--verbose", "-v", is_flag=True, help="Show every line the steps print (always in the run's logs/).")
@click.option(
    "--runner",
    type=click.Choice(["subprocess", "container"]),
    default="subprocess",
    show_default=True,
    help="subprocess: every step in this Python environment; container: every step in its image "
    "(images.cpu, images.gpu) over Docker or Podman, logging to an MLflow server from images.mlflow "
    "(docs/containers.md).",
)
def run(config_path, overrides, data, output_dir, tracking_uri, force_retrain, verbose, runner):
    """Run the whole pipeline on this machine (KFP local runner)."""
    from components.core.tracking import check_reachable, ensure_store
    from components.data.sources import open_source
    from pipeline.containers import prepare
    from pipeline.local import PipelineFailed, Terminated, run_local

    with native_stderr_silenced():  # TensorFlow's C++ start-up lines, printed whatever the log level
        from components.training.models import check_model_name, check_weights
    cfg = load_config(config_path, overrides, data)
    check_model_name(cfg.train.model, cfg.train.stochastic_depth)
    check_weights(cfg.train.model, cfg.train.weights)  # missing weights fail here, before any step starts
    open_source(cfg.data.source, cfg.data)  # a missing folder fails here, before any step starts
    containers = None
    if runner == "container":  # no engine, no image: one line now, before any step starts
        cfg, containers, tracking_uri = prepare(cfg, Path(output_dir), tracking_uri or cfg.mlflow.tracking_uri)
    uri = resolve_tracking_uri(tracking_uri, cfg.mlflow.tracking_uri)
    check_reachable(uri)  # a server that is down is found now, not after minutes of retries in a step
    ensure_store(uri)
    source = cfg.data.source or "SYNTHETIC demo data (generated, not medical images)"
    click.echo(f"lesionpipe: config {cfg.name!r}, data {source}, tracking {uri}", err=True)
    try:
        summary = run_local(
            cfg,
            cfg.data.source,
            output_dir,
            uri,
            force_retrain,
            echo=lambda line: click.echo(line, err=True),
            verbose=verbose,
            containers=containers,
        )
    except PipelineFailed as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated): the shell's exit status for each
        said, signum = (
            ("Terminated (SIGTERM)", signal.SIGTERM)
            if isinstance(exc, Terminated)
            else ("Interrupted (Ctrl-C)", signal.SIGINT)
        )
        click.echo(
            f"{said}: the MLflow run is marked KILLED; the same command resumes the training from its last epoch.",
            err=True,
        )
        exit_interrupted(128 + signum)
    click.echo("")
    if summary["skipped"]:
        click.echo(f"skipped: {summary['skip_reason']} (--force-retrain trains anyway)")
        kept = summary.get("champion") or {}
        if kept:
            scores = kept.get("test_metrics", {})
            click.echo(
                f"champion kept: {kept['model_uri']}"
                + (
                    f" (test balanced accuracy {scores['balanced_accuracy']:.3f})"
                    if "balanced_accuracy" in scores
                    else ""
                )
            )
    else:
        m = summary["metrics"]
        click.echo(
            f"test {result_line(m)}" + decision_rule(m) + (" (SYNTHETIC data)" if summary["data"]["synthetic"] else "")
        )
        gate = summary.get("gate")
        if gate:
            click.echo(f"registered:    {gate['model_uri']} -> {gate['alias']} ({gate['reason']})")
        for warning in summary.get("warnings", []):
            click.echo(f"warning: {warning}")
    click.echo(f"summary:       {summary['summary_path']}")
    click.echo(f"logs:          {Path(summary['run_dir']) / 'logs'}")
    click.echo(f"mlflow run:    {summary['mlflow_run_url']}")
    click.echo(f"open the UI:   {ui_command(uri)}")
    if containers and containers.server:
        click.echo(f"mlflow server: container {containers.server}, left running (`docker rm -f` stops it)")


@main.command()
@config_options(
    config_help="YAML run config whose data section ingest reads (default: the built-in data settings).",
    set_example="data.min_image_size=64",
)
@click.option(
    "--data",
    required=True,
    help="Source to ingest: a folder, a .zip, or gs://bucket/prefix (class folders, Kaggle Train/Test, "
    "or CSV + images).",
)
@click.option(
    "--output-dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Where manifest.parquet and the reports (report.html, report.md, report.json) go.",
)
@click.option(
    "--format",
    "data_format",
    type=click.Choice(["auto", *DATA_FORMATS]),
    help="Source layout (default: the config's data.format, auto-detected).",
)
def ingest(config_path, overrides, data, output_dir, data_format):
    """Run the ingest step alone: manifest.parquet, report.json, report.md, report.html."""
    from components.data.ingest import ingest as run_ingest

    cfg = load_config(config_path, overrides, data)
    if data_format:
        cfg = cfg.with_overrides([f"data.format={data_format}"])
    result = run_ingest(data, cfg.data, output_dir)
    r = result.report
    click.echo(
        f"files found {r['files_found']}: ingested {r['ingested']}, quarantined {r['quarantined']}, "
        f"ignored {r['ignored']}; {len(r['classes'])} classes"
    )
    click.echo(f"report: {Path(output_dir, 'report.html')}")


@main.command()
@config_options(
    config_help="YAML run config whose data and evaluate sections are used (default: the evaluate "
    "settings of the pipeline run that logged the model, else the built-in ones).",
    set_example="evaluate.tta=true",
)
@click.option("--model", "model_uri", required=True, help=MODEL_URI_HELP)
@click.option("--data", required=True, help="Labelled images: any source ingest reads (an external test set).")
@click.option(
    "--out",
    "out_path",
    default="metrics.json",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Metrics JSON; report.html and the pictures go beside it.",
)
@click.option(
    "--tracking-uri", help=f"MLflow tracking URI for models:/ and runs:/ URIs (default: {TRACKING_PRECEDENCE})."
)
def evaluate(config_path, overrides, model_uri, data, out_path, tracking_uri):
    """Score a model on every labelled image of a source: same metrics and report as the pipeline.
    Without --config, with the evaluate settings (TTA included) of the pipeline run that
    logged the model, where there is one; --set evaluate.KEY=VALUE overrides them."""
    from components.core.settings import EvaluateConfig
    from components.core.tracking import run_params
    from components.evaluation.evaluate import evaluate_source
    from components.scoring.inference import load_model

    cfg = load_config(config_path, overrides, data)
    uri = resolve_tracking_uri(tracking_uri, cfg.mlflow.tracking_uri)
    loaded = load_model(model_uri, uri)
    if not config_path and loaded.run_id:
        ran_with = {
            k: v
            for k, v in run_params(uri, loaded.run_id, "evaluate.").items()
            if k.removeprefix("evaluate.") in EvaluateConfig.model_fields
        }
        if ran_with:
            cfg = load_config(None, (*(f"{k}={v}" for k, v in sorted(ran_with.items())), *overrides), data)
            click.echo(
                f"evaluate settings of the model's run {loaded.run_id} (tta {str(cfg.evaluate.tta).lower()})", err=True
            )
    if loaded.synthetic:
        click.echo(loaded.synthetic_warning(), err=True)
    result = evaluate_source(loaded, data, cfg.data, cfg.evaluate, out_path)
    m = result["metrics"]
    click.echo(
        f"{m['n']} images: {result_line(m)}" + decision_rule(m) + (" (SYNTHETIC model)" if loaded.synthetic else "")
    )
    if result["skipped"]:
        click.echo(f"not scored: {result['skipped']} images ({result['skipped_reason']})", err=True)
    click.echo(f"metrics: {out_path}")
    click.echo(f"report:  {result['report']}")


for command in (compile_, submit, schedule, predict, serve, card, ui, config):
    main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    main()

"""``lesionpipe``: run the pipeline locally, compile, submit and schedule it on a
Kubeflow Pipelines cluster, ingest alone, open the MLflow UI."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Iterator

import click

from components.core.errors import UserError
from components.core.run_descriptions import result_line
from components.core.settings import DATA_FORMATS, EvaluateConfig
from components.core.tracking import resolve_tracking_uri, ui_command
from pipeline.config import Config

DEFAULT_OUTPUT_DIR = "lesion_outputs"
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


def exit_interrupted(status: int) -> None:
    """Exit at once after Ctrl-C or SIGTERM: with TensorFlow loaded the interpreter's own
    clean-up takes seconds (4.7 s measured on a busy 2-core machine) and has nothing left
    to save (the steps are gone, the MLflow run is ended)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


class LesionCLI(click.Group):
    """Turns user mistakes into one ``Error:`` line and exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:  # Ctrl-C: the shell's status for SIGINT, not click's "Aborted!" and 1
            click.echo("Interrupted (Ctrl-C).", err=True)
            exit_interrupted(128 + signal.SIGINT)


def config_options(func):
    func = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="Override a config value, e.g. --set train.epochs=3 (repeatable).")(func)
    func = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                        help="YAML run config (default: built-in defaults, synthetic data).")(func)
    return func


def load_config(config_path: str | None, overrides: tuple[str, ...], data: str | None = None) -> Config:
    cfg = Config.load(config_path, overrides)
    if data is not None:
        cfg = cfg.with_overrides([f"data.source={data}"])
    return cfg


def decision_rule(metrics: dict) -> str:
    """How the predicted classes behind ``metrics`` were decided, when not by plain argmax."""
    return " (classes decided with the model's validation-fitted offsets)" if metrics.get("decision_bias") else ""


@click.group(cls=LesionCLI, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lesion-pipeline")
def main() -> None:
    """Dermoscopic images in; a trained, evaluated, registered classifier out, tracked in MLflow."""


@main.command()
@config_options
@click.option("--data", help="Images: a folder, a .zip, or gs://bucket/prefix (class subfolders, Kaggle "
                             "Train/Test, or CSV + images). Default: the config's data.source, else a small "
                             "SYNTHETIC dataset.")
@click.option("--output-dir", default=DEFAULT_OUTPUT_DIR, show_default=True, type=click.Path(file_okay=False),
              help="Each run gets a folder here (summary.json, logs); 'latest' links the newest. The same "
                   "command with the same folder resumes a killed training.")
@click.option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db).")
@click.option("--force-retrain", is_flag=True,
              help="Train even when the data is the data the current champion was trained on.")
@click.option("--verbose", "-v", is_flag=True, help="Show every line the steps print (always in the run's logs/).")
def run(config_path, overrides, data, output_dir, tracking_uri, force_retrain, verbose):
    """Run the whole pipeline on this machine (KFP local runner)."""
    from components.core.tracking import check_reachable, ensure_store
    from components.data.sources import open_source
    from pipeline.local import PipelineFailed, Terminated, run_local

    with native_stderr_silenced():  # TensorFlow's C++ start-up lines, printed whatever the log level
        from components.training.models import check_model_name, check_weights
    cfg = load_config(config_path, overrides, data)
    check_model_name(cfg.train.model, cfg.train.stochastic_depth)
    check_weights(cfg.train.model, cfg.train.weights)  # missing weights fail here, before any step starts
    open_source(cfg.data.source, cfg.data)  # a missing folder fails here, before any step starts
    uri = resolve_tracking_uri(tracking_uri, cfg.mlflow.tracking_uri)
    check_reachable(uri)  # a server that is down is found now, not after minutes of retries in a step
    ensure_store(uri)
    source = cfg.data.source or "SYNTHETIC demo data (generated, not medical images)"
    click.echo(f"lesionpipe: config {cfg.name!r}, data {source}, tracking {uri}", err=True)
    try:
        summary = run_local(cfg, cfg.data.source, output_dir, uri, force_retrain,
                            echo=lambda line: click.echo(line, err=True), verbose=verbose)
    except PipelineFailed as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated): the shell's exit status for each
        said, signum = ("Terminated (SIGTERM)", signal.SIGTERM) if isinstance(exc, Terminated) else \
            ("Interrupted (Ctrl-C)", signal.SIGINT)
        click.echo(f"{said}: the MLflow run is marked KILLED; the same command resumes the training from its "
                   "last epoch.", err=True)
        exit_interrupted(128 + signum)
    click.echo("")
    if summary["skipped"]:
        click.echo(f"skipped: {summary['skip_reason']} (--force-retrain trains anyway)")
        kept = summary.get("champion") or {}
        if kept:
            scores = kept.get("test_metrics", {})
            click.echo(f"champion kept: {kept['model_uri']}"
                       + (f" (test balanced accuracy {scores['balanced_accuracy']:.3f})"
                          if "balanced_accuracy" in scores else ""))
    else:
        m = summary["metrics"]
        click.echo(f"test {result_line(m)}" + decision_rule(m)
                   + (" (SYNTHETIC data)" if summary["data"]["synthetic"] else ""))
        gate = summary.get("gate")
        if gate:
            click.echo(f"registered:    {gate['model_uri']} -> {gate['alias']} ({gate['reason']})")
        for warning in summary.get("warnings", []):
            click.echo(f"warning: {warning}")
    click.echo(f"summary:       {summary['summary_path']}")
    click.echo(f"logs:          {Path(summary['run_dir']) / 'logs'}")
    click.echo(f"mlflow run:    {summary['mlflow_run_url']}")
    click.echo(f"open the UI:   {ui_command(uri)}")


@main.command()
@config_options
@click.option("--data", required=True,
              help="Source to ingest: a folder, a .zip, or gs://bucket/prefix (class folders, Kaggle Train/Test, "
                   "or CSV + images).")
@click.option("--output-dir", required=True, type=click.Path(file_okay=False),
              help="Where manifest.parquet and the reports (report.html, report.md, report.json) go.")
@click.option("--format", "data_format", type=click.Choice(["auto", *DATA_FORMATS]),
              help="Source layout (default: the config's data.format, auto-detected).")
def ingest(config_path, overrides, data, output_dir, data_format):
    """Run the ingest step alone: manifest.parquet, report.json, report.md, report.html."""
    from components.data.ingest import ingest as run_ingest

    cfg = load_config(config_path, overrides, data)
    if data_format:
        cfg = cfg.with_overrides([f"data.format={data_format}"])
    result = run_ingest(data, cfg.data, output_dir)
    r = result.report
    click.echo(f"files found {r['files_found']}: ingested {r['ingested']}, quarantined {r['quarantined']}, "
               f"ignored {r['ignored']}; {len(r['classes'])} classes")
    click.echo(f"report: {Path(output_dir, 'report.html')}")


@main.command()
@config_options
@click.option("--model", "model_uri", required=True,
              help="Model URI: models:/<name>@champion, models:/<name>/<version>, runs:/<run>/model, or a local path.")
@click.option("--data", required=True, help="Labelled images: any source ingest reads (an external test set).")
@click.option("--out", "out_path", default="metrics.json", show_default=True, type=click.Path(dir_okay=False),
              help="Metrics JSON; report.html and the pictures go beside it.")
@click.option("--tracking-uri", help="MLflow tracking URI for models:/ and runs:/ URIs.")
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
        ran_with = {k: v for k, v in run_params(uri, loaded.run_id, "evaluate.").items()
                    if k.removeprefix("evaluate.") in EvaluateConfig.model_fields}
        if ran_with:
            cfg = load_config(None, (*(f"{k}={v}" for k, v in sorted(ran_with.items())), *overrides), data)
            click.echo(f"evaluate settings of the model's run {loaded.run_id} (tta {str(cfg.evaluate.tta).lower()})",
                       err=True)
    if loaded.synthetic:
        click.echo(loaded.synthetic_warning(), err=True)
    result = evaluate_source(loaded, data, cfg.data, cfg.evaluate, out_path)
    m = result["metrics"]
    click.echo(f"{m['n']} images: {result_line(m)}" + decision_rule(m)
               + (" (SYNTHETIC model)" if loaded.synthetic else ""))
    if result["skipped"]:
        click.echo(f"not scored: {result['skipped']} images ({result['skipped_reason']})", err=True)
    click.echo(f"metrics: {out_path}")
    click.echo(f"report:  {result['report']}")


@main.command()
@click.option("--model", "model_uri", required=True,
              help="Model URI: models:/<name>@champion, models:/<name>/<version>, runs:/<run>/model, or a local path.")
@click.argument("images", nargs=-1, required=True)
@click.option("--out", "out_path", default="predictions.csv", show_default=True, type=click.Path(dir_okay=False),
              help="CSV: one row per image, every class's probability, the melanoma probability, errors, and "
                   "synthetic_model (true: trained on synthetic data).")
@click.option("--melanoma-class", default=EvaluateConfig().melanoma_class, show_default=True,
              help="The class whose probability is the melanoma_probability column.")
@click.option("--tta", is_flag=True, help="Average over 8 flips/turns of each image.")
@click.option("--lesions", "lesions_csv", type=click.Path(dir_okay=False),
              help="CSV naming the lesion each image shows: an image column (image, image_id or image_name: the "
                   "file name without extension) and a lesion column (lesion or lesion_id); HAM10000's metadata CSV "
                   "works as is. Also writes OUT with _lesions before its extension: one row per lesion, its "
                   "images' probabilities averaged, the class predicted from them, and its number of images.")
@click.option("--tracking-uri", help="MLflow tracking URI for models:/ and runs:/ URIs.")
def predict(model_uri, images, out_path, melanoma_class, tta, lesions_csv, tracking_uri):
    """Every class's probability and the melanoma probability for each IMAGE_OR_DIR (CSV);
    with --lesions, per lesion too."""
    from components.evaluation.predict import find_images, predict_files, write_csv, write_lesions
    from components.scoring.inference import load_model

    loaded = load_model(model_uri, resolve_tracking_uri(tracking_uri))
    if loaded.synthetic:
        click.echo(loaded.synthetic_warning(), err=True)
    rows = predict_files(loaded, find_images(list(images)), melanoma_class, tta=tta)
    write_csv(rows, out_path)
    failed = sum(1 for r in rows if r["error"])
    click.echo(f"{len(rows)} images -> {out_path}" + (f" ({failed} unreadable, see the error column)" if failed else "")
               + (" (SYNTHETIC model: see the synthetic_model column)" if loaded.synthetic else ""))
    if lesions_csv:
        click.echo(write_lesions(rows, loaded, lesions_csv, out_path, melanoma_class))


@main.command("compile")
@config_options
@click.option("-o", "--output", "output", default="pipeline.yaml", show_default=True, type=click.Path(dir_okay=False),
              help="Where the KFP IR YAML goes.")
def compile_(config_path, overrides, output):
    """Compile the pipeline to KFP IR YAML for a cluster."""
    from kfp import compiler

    from pipeline.pipeline import create_pipeline

    cfg = load_config(config_path, overrides)
    compiler.Compiler().compile(create_pipeline(cfg), output)
    click.echo(f"pipeline written to {output}")


def cluster_options(func):
    """How to reach Kubeflow Pipelines (KF_PIPELINES_ENDPOINT, KF_PIPELINES_TOKEN as fallbacks)."""
    func = click.option("--namespace", help="Kubernetes namespace of a multi-user Kubeflow (your profile).")(func)
    func = click.option("--token", envvar="KF_PIPELINES_TOKEN", show_envvar=True,
                        help="Bearer token (default: none, or the pod's service-account token in the cluster).")(func)
    func = click.option("--host", envvar="KF_PIPELINES_ENDPOINT", show_envvar=True,
                        help="Kubeflow Pipelines API URL, e.g. http://localhost:8080 after a port-forward.")(func)
    return func


def experiment_option(func):
    return click.option("--experiment", help="KFP experiment, created if missing (default: the config's "
                                             "mlflow.experiment).")(func)


@main.command()
@config_options
@cluster_options
@experiment_option
@click.option("--run-name", help="Run name (default: lesion-pipeline-<config name>).")
@click.option("--no-cache", is_flag=True, help="Run every step even where KFP has cached outputs.")
@click.option("--force-retrain", is_flag=True,
              help="Train even when the data is the data the current champion was trained on.")
def submit(config_path, overrides, host, token, namespace, experiment, run_name, no_cache, force_retrain):
    """Compile the pipeline and start one run on a Kubeflow Pipelines cluster."""
    from pipeline import kfp_client

    cfg = load_config(config_path, overrides)
    cfg = kfp_client.without_caching(cfg) if no_cache else cfg
    kfp_client.check_ready_for_cluster(cfg)  # before connecting: a config mistake should not wait on the network
    conn = kfp_client.connect(host, token, namespace)
    run = kfp_client.submit(conn, cfg, experiment or cfg.mlflow.experiment, namespace, run_name, force_retrain)
    click.echo(f"run {run.run_id} started: {run.url}")


@main.group(invoke_without_command=True)
@config_options
@cluster_options
@experiment_option
@click.option("--cron", help='Six fields, seconds first: "0 0 3 * * 0" is Sundays at 03:00.')
@click.option("--name", "schedule_name", help="Schedule name (default: lesion-pipeline-<config name>-retrain).")
@click.option("--no-cache", is_flag=True, help="Scheduled runs run every step even where KFP has cached outputs.")
@click.pass_context
def schedule(ctx, config_path, overrides, host, token, namespace, experiment, cron, schedule_name, no_cache):
    """Schedule retraining (a recurring run, one at a time, no catch-up); or list, pause, resume, delete."""
    from pipeline import kfp_client

    ctx.obj = {"host": host, "token": token, "namespace": namespace}
    if ctx.invoked_subcommand is not None:
        return
    if not cron:
        raise UserError('--cron is required to create a schedule, e.g. --cron "0 0 3 * * 0"')
    kfp_client.validate_cron(cron)  # before connecting: a typo should not wait on the network
    cfg = load_config(config_path, overrides)
    cfg = kfp_client.without_caching(cfg) if no_cache else cfg
    kfp_client.check_ready_for_cluster(cfg)
    conn = kfp_client.connect(host, token, namespace)
    created = kfp_client.create_schedule(conn, cfg, cron, experiment or cfg.mlflow.experiment, namespace,
                                         schedule_name)
    click.echo(f"schedule {created.recurring_run_id} ({created.name}) created, cron {created.cron!r}: {created.url}")


def schedule_connection(ctx: click.Context, host, token, namespace):
    """Options given after the subcommand win over those given before it."""
    from pipeline import kfp_client

    parent = ctx.obj or {}
    return kfp_client.connect(host or parent.get("host"), token or parent.get("token"),
                              namespace or parent.get("namespace"))


@schedule.command("list")
@cluster_options
@click.pass_context
def schedule_list(ctx, host, token, namespace):
    """List recurring runs."""
    from pipeline import kfp_client

    conn = schedule_connection(ctx, host, token, namespace)
    schedules = kfp_client.list_schedules(conn, namespace=namespace or (ctx.obj or {}).get("namespace"))
    if not schedules:
        click.echo("no schedules")
    for s in schedules:
        click.echo(f"{s.recurring_run_id}  {s.status:<9} {s.cron!r:<18} {s.name}")


def _schedule_action(verb: str, help_text: str, act: Callable) -> None:
    @schedule.command(verb, help=help_text)
    @click.argument("recurring_run_id")
    @cluster_options
    @click.pass_context
    def command(ctx, recurring_run_id, host, token, namespace):
        act(schedule_connection(ctx, host, token, namespace), recurring_run_id)
        click.echo(f"schedule {recurring_run_id}: {verb}d")


def _register_schedule_actions() -> None:
    from pipeline import kfp_client

    _schedule_action("pause", "Stop starting runs (the schedule is kept).",
                     lambda conn, rid: kfp_client.set_schedule_enabled(conn, rid, False))
    _schedule_action("resume", "Start runs again; missed times are not caught up.",
                     lambda conn, rid: kfp_client.set_schedule_enabled(conn, rid, True))
    _schedule_action("delete", "Delete the schedule (runs it started are kept).", kfp_client.delete_schedule)


_register_schedule_actions()


@main.command()
@click.option("--tracking-uri", help="Store to show (default: $MLFLOW_TRACKING_URI, else ./mlflow.db).")
@click.option("--port", default=5000, show_default=True, help="Port of the UI on 127.0.0.1.")
def ui(tracking_uri, port):
    """Open the MLflow UI on the local store."""
    uri = resolve_tracking_uri(tracking_uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    click.echo(f"MLflow UI on http://127.0.0.1:{port} (store {uri}; the sidebar's 'Model training' switch shows "
               "runs tables, and the links lesionpipe prints open there); Ctrl-C to stop", err=True)
    os.execv(sys.executable, cmd)


if __name__ == "__main__":  # pragma: no cover
    main()

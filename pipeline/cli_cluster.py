"""``lesionpipe compile``, ``submit`` and ``schedule``: the pipeline on a Kubeflow Pipelines cluster."""

from __future__ import annotations

from collections.abc import Callable

import click

from components.core.errors import UserError
from pipeline.cli_options import LesionCLI, config_options, load_config


@click.command("compile")
@config_options()
@click.option(
    "-o",
    "--output",
    "output",
    default="pipeline.yaml",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Where the KFP IR YAML goes.",
)
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
    func = click.option(
        "--token",
        envvar="KF_PIPELINES_TOKEN",
        show_envvar=True,
        help="Bearer token (default: none, or the pod's service-account token in the cluster).",
    )(func)
    func = click.option(
        "--host",
        envvar="KF_PIPELINES_ENDPOINT",
        show_envvar=True,
        help="Kubeflow Pipelines API URL, e.g. http://localhost:8080 after a port-forward.",
    )(func)
    return func


def experiment_option(func):
    return click.option(
        "--experiment", help="KFP experiment, created if missing (default: the config's mlflow.experiment)."
    )(func)


@click.command()
@config_options()
@cluster_options
@experiment_option
@click.option("--run-name", help="Run name (default: lesion-pipeline-<config name>).")
@click.option("--no-cache", is_flag=True, help="Run every step even where KFP has cached outputs.")
@click.option(
    "--force-retrain", is_flag=True, help="Train even when the data is the data the current champion was trained on."
)
def submit(config_path, overrides, host, token, namespace, experiment, run_name, no_cache, force_retrain):
    """Compile the pipeline and start one run on a Kubeflow Pipelines cluster."""
    from pipeline import kfp_client

    cfg = load_config(config_path, overrides)
    cfg = kfp_client.without_caching(cfg) if no_cache else cfg
    kfp_client.check_ready_for_cluster(cfg)  # before connecting: a config mistake should not wait on the network
    conn = kfp_client.connect(host, token, namespace)
    run = kfp_client.submit(conn, cfg, experiment or cfg.mlflow.experiment, namespace, run_name, force_retrain)
    click.echo(f"run {run.run_id} of {kfp_client.PIPELINE_NAME} version {run.version} started: {run.url}")


@click.group(cls=LesionCLI, invoke_without_command=True)
@config_options()
@cluster_options
@experiment_option
@click.option("--cron", help='Six fields, seconds first: "0 0 3 * * 0" is Sundays at 03:00.')
@click.option("--name", "schedule_name", help="Schedule name (default: lesion-pipeline-<config name>-retrain).")
@click.option("--no-cache", is_flag=True, help="Scheduled runs run every step even where KFP has cached outputs.")
@click.option(
    "--update", is_flag=True, help="Move the schedule named --name to the current pipeline version (same cron)."
)
@click.pass_context
def schedule(ctx, config_path, overrides, host, token, namespace, experiment, cron, schedule_name, no_cache, update):
    """Schedule retraining (a recurring run of the current pipeline version, one at a time, no
    catch-up); --update moves a schedule to the current version; or list, pause, resume, delete."""
    from pipeline import kfp_client, kfp_schedules

    ctx.obj = {"host": host, "token": token, "namespace": namespace}
    if ctx.invoked_subcommand is not None:
        return
    if not cron and not update:
        raise UserError('--cron is required to create a schedule, e.g. --cron "0 0 3 * * 0"')
    if cron:
        kfp_schedules.validate_cron(cron)  # before connecting: a typo should not wait on the network
    cfg = load_config(config_path, overrides)
    cfg = kfp_client.without_caching(cfg) if no_cache else cfg
    kfp_client.check_ready_for_cluster(cfg)
    conn = kfp_client.connect(host, token, namespace)
    experiment = experiment or cfg.mlflow.experiment
    if update:
        old, new = kfp_schedules.update_schedule(conn, cfg, experiment, namespace, schedule_name)
        moved = "already on" if new is old else f"moved from {old.version or old.version_id or 'its own package'} to"
        click.echo(f"schedule {new.recurring_run_id} ({new.name}) {moved} version {new.version}: {new.url}")
        return
    created = kfp_schedules.create_schedule(conn, cfg, cron, experiment, namespace, schedule_name)
    click.echo(
        f"schedule {created.recurring_run_id} ({created.name}) created, cron {created.cron!r}, "
        f"version {created.version}: {created.url}"
    )


def schedule_connection(ctx: click.Context, host, token, namespace):
    """Options given after the subcommand win over those given before it."""
    from pipeline import kfp_client

    parent = ctx.obj or {}
    return kfp_client.connect(
        host or parent.get("host"), token or parent.get("token"), namespace or parent.get("namespace")
    )


@schedule.command("list")
@cluster_options
@click.pass_context
def schedule_list(ctx, host, token, namespace):
    """List recurring runs, each with the pipeline version it runs."""
    from pipeline import kfp_schedules

    conn = schedule_connection(ctx, host, token, namespace)
    schedules = kfp_schedules.list_schedules(conn, namespace=namespace or (ctx.obj or {}).get("namespace"))
    if not schedules:
        click.echo("no schedules")
    for s in kfp_schedules.with_version_names(conn, schedules):
        click.echo(f"{s.recurring_run_id}  {s.status:<9} {s.cron!r:<18} {s.version or '(own package)':<22} {s.name}")


def _schedule_action(verb: str, help_text: str, act: Callable) -> None:
    @schedule.command(verb, help=help_text)
    @click.argument("recurring_run_id")
    @cluster_options
    @click.pass_context
    def command(ctx, recurring_run_id, host, token, namespace):
        act(schedule_connection(ctx, host, token, namespace), recurring_run_id)
        click.echo(f"schedule {recurring_run_id}: {verb}d")


def _register_schedule_actions() -> None:
    from pipeline import kfp_schedules

    _schedule_action(
        "pause",
        "Stop starting runs (the schedule is kept).",
        lambda conn, rid: kfp_schedules.set_schedule_enabled(conn, rid, False),
    )
    _schedule_action(
        "resume",
        "Start runs again; missed times are not caught up.",
        lambda conn, rid: kfp_schedules.set_schedule_enabled(conn, rid, True),
    )
    _schedule_action("delete", "Delete the schedule (runs it started are kept).", kfp_schedules.delete_schedule)


_register_schedule_actions()

"""Schedules (KFP recurring runs) of the pipeline: create one on the current pipeline version,
move one to it (``schedule --update``), list them with their versions, pause, resume,
delete; each failure reported as one line."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

from components.core.errors import UserError
from pipeline.config import RunConfig
from pipeline.kfp_client import (
    Connection,
    PipelineVersion,
    check_ready_for_cluster,
    current_version,
    experiment_id_of,
    pipeline_arguments,
)
from pipeline.pipeline import PIPELINE_NAME

# KFP's cron: six fields, seconds first (github.com/robfig/cron), e.g. "0 0 3 * * 0".
CRON_FIELDS = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 6),
)
CRON_NAMES = {
    "month": {"JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"},
    "day of week": {"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"},
}


@dataclass(frozen=True)
class Schedule:
    recurring_run_id: str
    name: str
    cron: str
    status: str
    url: str
    pipeline_id: str = ""
    version_id: str = ""
    version: str = ""  # the pipeline version's name ("" for a schedule with its own package)


def validate_cron(expression: str) -> str:
    """The expression with single spaces; a UserError naming the bad field otherwise."""
    parts = expression.split()
    example = 'e.g. "0 0 3 * * 0" (Sundays 03:00:00)'
    if len(parts) != len(CRON_FIELDS):
        raise UserError(
            f"cron {expression!r} has {len(parts)} fields; KFP needs 6, seconds first: "
            f"second minute hour day-of-month month day-of-week, {example}"
        )
    for value, (name, low, high) in zip(parts, CRON_FIELDS):
        if not _cron_field_ok(value, name, low, high):
            raise UserError(
                f"cron {expression!r}: bad {name} field {value!r} (allowed {low}-{high}, *, ?, lists, "
                f"ranges and /steps), {example}"
            )
    return " ".join(parts)


def _cron_field_ok(field: str, name: str, low: int, high: int) -> bool:
    for item in field.split(","):
        base, slash, step = item.partition("/")
        if slash and not (step.isdigit() and int(step) > 0):
            return False
        if base in ("*", "?"):
            continue
        for bound in base.split("-", 1):
            named = bound.upper() in CRON_NAMES.get(name, ())
            if not named and not (bound.isdigit() and low <= int(bound) <= high):
                return False
    return True


def create_schedule(
    conn: Connection, cfg: RunConfig, cron: str, experiment: str, namespace: str | None = None, name: str | None = None
) -> Schedule:
    """A recurring run of the current pipeline version: at most one run at a time, and no
    backfill of missed times."""
    cron = validate_cron(cron)
    check_ready_for_cluster(cfg)
    name = name or f"{PIPELINE_NAME}-{cfg.name}-retrain"
    experiment_id = experiment_id_of(conn, experiment, namespace)
    clash = [s for s in list_schedules(conn, experiment_id) if s.name == name]
    if clash:
        raise UserError(
            f"a schedule named {name!r} already exists ({clash[0].recurring_run_id}): delete it first, "
            "pass --name, or move it to this version with --update"
        )
    version = current_version(conn, cfg, namespace)
    return _create_recurring_run(conn, cfg, experiment_id, name, cron, version, enabled=True)


def _create_recurring_run(
    conn: Connection, cfg: RunConfig, experiment_id: str, name: str, cron: str, version: PipelineVersion, enabled: bool
) -> Schedule:
    created = conn.call(
        lambda: conn.client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=name,
            cron_expression=cron,
            max_concurrency=1,
            no_catchup=True,
            params=pipeline_arguments(cfg, kfp_ui_url=conn.ui_base),
            pipeline_id=version.pipeline_id,
            version_id=version.version_id,
            enabled=enabled,
            service_account=cfg.cluster.service_account or None,
        )
    )
    return _schedule(conn, created, version.name)


def update_schedule(
    conn: Connection, cfg: RunConfig, experiment: str, namespace: str | None = None, name: str | None = None
) -> tuple[Schedule, Schedule]:
    """Move the schedule named ``name`` to the current pipeline version: (old, new). KFP's
    v2beta1 API cannot change a recurring run, so a new one is created with the same name,
    cron, experiment and enabled state, then the old one deleted (its runs are kept)."""
    check_ready_for_cluster(cfg)
    name = name or f"{PIPELINE_NAME}-{cfg.name}-retrain"
    experiment_id = experiment_id_of(conn, experiment, namespace)
    found = [s for s in list_schedules(conn, experiment_id) if s.name == name]
    if not found:
        raise UserError(f"no schedule named {name!r} in experiment {experiment!r}: create it with --cron")
    old = with_version_names(conn, found[:1])[0]
    version = current_version(conn, cfg, namespace)
    if old.version_id == version.version_id:
        return old, old
    new = _create_recurring_run(conn, cfg, experiment_id, name, old.cron, version, enabled=old.status == "ENABLED")
    delete_schedule(conn, old.recurring_run_id)
    return old, new


def _schedule(conn: Connection, recurring_run, version: str = "") -> Schedule:
    trigger = recurring_run.trigger
    cron = trigger.cron_schedule.cron if trigger and trigger.cron_schedule else ""
    reference = recurring_run.pipeline_version_reference
    return Schedule(
        recurring_run.recurring_run_id,
        recurring_run.display_name or "",
        cron,
        str(recurring_run.status or recurring_run.mode or ""),
        f"{conn.ui_base}/#/recurringrun/details/{recurring_run.recurring_run_id}",
        reference.pipeline_id or "" if reference else "",
        reference.pipeline_version_id or "" if reference else "",
        version,
    )


def with_version_names(conn: Connection, schedules: list[Schedule]) -> list[Schedule]:
    """Each schedule with its pipeline version's name (one lookup per version)."""
    names: dict[tuple[str, str], str] = {}
    for key in {(s.pipeline_id, s.version_id) for s in schedules if s.version_id}:
        names[key] = conn.call(lambda key=key: conn.client.get_pipeline_version(*key)).display_name or key[1]
    return [replace(s, version=names.get((s.pipeline_id, s.version_id), s.version)) for s in schedules]


def list_schedules(conn: Connection, experiment_id: str | None = None, namespace: str | None = None) -> list[Schedule]:
    schedules: list[Schedule] = []
    page_token = ""
    while True:
        page = conn.call(
            partial(
                conn.client.list_recurring_runs,
                page_token=page_token,
                page_size=100,
                experiment_id=experiment_id,
                namespace=namespace,
            )
        )
        schedules += [_schedule(conn, r) for r in page.recurring_runs or []]
        page_token = page.next_page_token or ""
        if not page_token:
            return schedules


def set_schedule_enabled(conn: Connection, recurring_run_id: str, enabled: bool) -> None:
    action = conn.client.enable_recurring_run if enabled else conn.client.disable_recurring_run
    conn.call(lambda: action(recurring_run_id=recurring_run_id))


def delete_schedule(conn: Connection, recurring_run_id: str) -> None:
    conn.call(lambda: conn.client.delete_recurring_run(recurring_run_id=recurring_run_id))

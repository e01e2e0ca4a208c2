"""Submit and schedule the pipeline on a Kubeflow Pipelines cluster: plain functions over
``kfp.Client`` (KFP v2beta1 REST API), each failure reported as one line."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from components.core.errors import UserError
from pipeline.config import RunConfig
from pipeline.pipeline import PIPELINE_NAME, create_pipeline

ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"
UI_ENDPOINT_ENV = "KF_PIPELINES_UI_ENDPOINT"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
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

T = TypeVar("T")


class ClusterError(UserError):
    """The cluster could not be reached or refused a request: one line for the user."""


@dataclass(frozen=True)
class Connection:
    client: Any  # kfp.Client
    host: str  # for messages and links

    def call(self, what: Callable[[], T]) -> T:
        return _call(self.host, what)

    @property
    def ui_base(self) -> str:
        return (os.environ.get(UI_ENDPOINT_ENV) or self.host).rstrip("/")


@dataclass(frozen=True)
class SubmittedRun:
    run_id: str
    experiment_id: str
    url: str


@dataclass(frozen=True)
class Schedule:
    recurring_run_id: str
    name: str
    cron: str
    status: str
    url: str


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


def pipeline_arguments(cfg: RunConfig, force_retrain: bool = False, kfp_ui_url: str = "") -> dict[str, Any]:
    """The run's parameters, all from the config (the compiled defaults say the same; sending
    them makes the run's page show what it ran with), and the KFP UI the run is submitted
    to, from which the MLflow run's description links back to the run's page."""
    return {
        "data_uri": cfg.data.source,
        "tracking_uri": cfg.mlflow.tracking_uri,
        "force_retrain": force_retrain,
        "kfp_ui_url": kfp_ui_url if kfp_ui_url.startswith(("http://", "https://")) else "",
    }


def check_ready_for_cluster(cfg: RunConfig) -> None:
    """Settings without which a cluster run would fail late or lose its results."""
    if not cfg.mlflow.tracking_uri.startswith(("http://", "https://")):
        raise UserError(
            "mlflow.tracking_uri must be the tracking server's http(s) URL for a cluster run "
            f"(got {cfg.mlflow.tracking_uri!r}); e.g. --set mlflow.tracking_uri=http://mlflow.mlflow:5000"
        )
    if not cfg.cluster.pipeline_root:
        raise UserError(
            "cluster.pipeline_root is not set (e.g. gs://BUCKET/lesion-pipeline): KFP stores every step's outputs there"
        )


@contextlib.contextmanager
def compiled_package(cfg: RunConfig) -> Iterator[str]:
    from kfp import compiler

    with tempfile.TemporaryDirectory(prefix="lesionpipe-") as tmp:
        path = str(Path(tmp) / "pipeline.yaml")
        compiler.Compiler().compile(create_pipeline(cfg), path)
        yield path


def _call(host: str, what: Callable[[], T]) -> T:
    """Run a client call quietly (kfp prints links and warnings of its own) and turn any
    transport or API failure into one ClusterError line."""
    import kfp_server_api
    import urllib3

    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return what()
    except kfp_server_api.ApiException as exc:
        detail = (exc.body or "").strip().replace("\n", " ")[:300] if isinstance(exc.body, str) else ""
        raise ClusterError(
            f"Kubeflow Pipelines at {host} answered {exc.status} {exc.reason}" + (f": {detail}" if detail else "")
        ) from None
    except (urllib3.exceptions.HTTPError, OSError, TimeoutError) as exc:
        reason = str(getattr(exc, "reason", None) or exc).splitlines()[0]
        raise ClusterError(f"cannot reach Kubeflow Pipelines at {host}: {reason}") from None


def connect(host: str | None, token: str | None = None, namespace: str | None = None) -> Connection:
    """A ``kfp.Client``: host from the argument or KF_PIPELINES_ENDPOINT (inside the cluster
    KFP finds its own service); a bearer token from the argument or KF_PIPELINES_TOKEN, else
    the pod's projected service-account token when there is one."""
    import kfp
    from kfp.client import KF_PIPELINES_SA_TOKEN_ENV, KF_PIPELINES_SA_TOKEN_PATH, ServiceAccountTokenVolumeCredentials

    host = host or os.environ.get(ENDPOINT_ENV, "")
    token = token or os.environ.get(TOKEN_ENV) or None
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    if not host and not in_cluster:
        raise UserError(f"no Kubeflow Pipelines host: pass --host URL or set {ENDPOINT_ENV}")
    sa_token = os.environ.get(KF_PIPELINES_SA_TOKEN_ENV, KF_PIPELINES_SA_TOKEN_PATH)
    credentials = ServiceAccountTokenVolumeCredentials() if not token and Path(sa_token).is_file() else None
    # kfp.Client asks the server's healthz on construction, so an unreachable host fails here.
    client = _call(
        host or "the in-cluster endpoint",
        lambda: kfp.Client(
            host=host or None, existing_token=token, credentials=credentials, namespace=namespace or "kubeflow"
        ),
    )
    return Connection(client, host or "the in-cluster endpoint")


def _experiment_id(conn: Connection, name: str, namespace: str | None) -> str:
    """The experiment's id; kfp's create_experiment looks it up by name first."""
    return conn.call(lambda: conn.client.create_experiment(name=name, namespace=namespace)).experiment_id


def without_caching(cfg: RunConfig) -> RunConfig:
    """The per-run switch. Compiled in rather than kfp.Client's enable_caching, which only
    reaches the tasks of the pipeline's top level, not those inside its If branch."""
    return cfg.with_overrides(["cluster.caching=false"])


def submit(
    conn: Connection,
    cfg: RunConfig,
    experiment: str,
    namespace: str | None = None,
    run_name: str | None = None,
    force_retrain: bool = False,
) -> SubmittedRun:
    """Compile, create or reuse the experiment, start one run."""
    check_ready_for_cluster(cfg)
    experiment_id = _experiment_id(conn, experiment, namespace)
    with compiled_package(cfg) as package:
        result = conn.call(
            lambda: conn.client.create_run_from_pipeline_package(
                package,
                arguments=pipeline_arguments(cfg, force_retrain, conn.ui_base),
                run_name=run_name or f"{PIPELINE_NAME}-{cfg.name}",
                experiment_id=experiment_id,
                service_account=cfg.cluster.service_account or None,
            )
        )
    return SubmittedRun(result.run_id, experiment_id, f"{conn.ui_base}/#/runs/details/{result.run_id}")


def create_schedule(
    conn: Connection, cfg: RunConfig, cron: str, experiment: str, namespace: str | None = None, name: str | None = None
) -> Schedule:
    """A recurring run: at most one run at a time, and no backfill of missed times."""
    cron = validate_cron(cron)
    check_ready_for_cluster(cfg)
    name = name or f"{PIPELINE_NAME}-{cfg.name}-retrain"
    experiment_id = _experiment_id(conn, experiment, namespace)
    clash = [s for s in list_schedules(conn, experiment_id) if s.name == name]
    if clash:
        raise UserError(
            f"a schedule named {name!r} already exists ({clash[0].recurring_run_id}): delete it first or pass --name"
        )
    with compiled_package(cfg) as package:
        created = conn.call(
            lambda: conn.client.create_recurring_run(
                experiment_id=experiment_id,
                job_name=name,
                cron_expression=cron,
                max_concurrency=1,
                no_catchup=True,
                params=pipeline_arguments(cfg, kfp_ui_url=conn.ui_base),
                pipeline_package_path=package,
                service_account=cfg.cluster.service_account or None,
            )
        )
    return _schedule(conn, created)


def _schedule(conn: Connection, recurring_run) -> Schedule:
    trigger = recurring_run.trigger
    cron = trigger.cron_schedule.cron if trigger and trigger.cron_schedule else ""
    return Schedule(
        recurring_run.recurring_run_id,
        recurring_run.display_name or "",
        cron,
        str(recurring_run.status or recurring_run.mode or ""),
        f"{conn.ui_base}/#/recurringrun/details/{recurring_run.recurring_run_id}",
    )


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

"""Submit and schedule the pipeline on a Kubeflow Pipelines cluster: plain functions over
``kfp.Client`` (KFP v2beta1 REST API), each failure reported as one line."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from components.core.errors import UserError
from pipeline.config import RunConfig
from pipeline.pipeline import PIPELINE_DESCRIPTION, PIPELINE_NAME, create_pipeline

ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"
UI_ENDPOINT_ENV = "KF_PIPELINES_UI_ENDPOINT"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
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
    version: str = ""  # the pipeline version it runs


@dataclass(frozen=True)
class PipelineVersion:
    pipeline_id: str
    version_id: str
    name: str


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


def experiment_id_of(conn: Connection, name: str, namespace: str | None) -> str:
    """The experiment's id; kfp's create_experiment looks it up by name first."""
    return conn.call(lambda: conn.client.create_experiment(name=name, namespace=namespace)).experiment_id


def without_caching(cfg: RunConfig) -> RunConfig:
    """The per-run switch. Compiled in rather than kfp.Client's enable_caching, which only
    reaches the tasks of the pipeline's top level, not those inside its If branch."""
    return cfg.with_overrides(["cluster.caching=false"])


def version_name(package: str) -> str:
    """Our package version and the compiled package's content hash: the same package is the
    same version, and a version's name says which release it came from."""
    from importlib.metadata import version

    digest = hashlib.sha256(Path(package).read_bytes()).hexdigest()[:12]
    return f"{version('lesion-pipeline')}-{digest}"


def _equals(key: str, value: str) -> str:
    """KFP's JSON filter of one EQUALS predicate (operation 1), as kfp.Client writes its own."""
    return json.dumps({"predicates": [{"operation": 1, "key": key, "stringValue": value}]})


def upload_version(conn: Connection, package: str, namespace: str | None = None) -> PipelineVersion:
    """The compiled package as a version of the one pipeline named PIPELINE_NAME (created on
    first use): found by name when this package was uploaded before, uploaded otherwise."""
    name = version_name(package)
    pipeline_id = conn.call(lambda: conn.client.get_pipeline_id(PIPELINE_NAME))
    if pipeline_id is None:
        created = conn.call(
            lambda: conn.client.upload_pipeline(
                package, pipeline_name=PIPELINE_NAME, description=PIPELINE_DESCRIPTION, namespace=namespace
            )
        )
        pipeline_id = created.pipeline_id
    found = conn.call(
        lambda: conn.client.list_pipeline_versions(pipeline_id, page_size=1, filter=_equals("display_name", name))
    )
    if found.pipeline_versions:
        return PipelineVersion(pipeline_id, found.pipeline_versions[0].pipeline_version_id, name)
    uploaded = conn.call(
        lambda: conn.client.upload_pipeline_version(package, pipeline_version_name=name, pipeline_id=pipeline_id)
    )
    return PipelineVersion(pipeline_id, uploaded.pipeline_version_id, name)


def current_version(conn: Connection, cfg: RunConfig, namespace: str | None = None) -> PipelineVersion:
    with compiled_package(cfg) as package:
        return upload_version(conn, package, namespace)


def submit(
    conn: Connection,
    cfg: RunConfig,
    experiment: str,
    namespace: str | None = None,
    run_name: str | None = None,
    force_retrain: bool = False,
) -> SubmittedRun:
    """Compile, upload as a pipeline version (or find it), create or reuse the experiment,
    start one run of that version."""
    check_ready_for_cluster(cfg)
    experiment_id = experiment_id_of(conn, experiment, namespace)
    version = current_version(conn, cfg, namespace)
    result = conn.call(
        lambda: conn.client.run_pipeline(
            experiment_id=experiment_id,
            job_name=run_name or f"{PIPELINE_NAME}-{cfg.name}",
            params=pipeline_arguments(cfg, force_retrain, conn.ui_base),
            pipeline_id=version.pipeline_id,
            version_id=version.version_id,
            service_account=cfg.cluster.service_account or None,
        )
    )
    return SubmittedRun(result.run_id, experiment_id, f"{conn.ui_base}/#/runs/details/{result.run_id}", version.name)

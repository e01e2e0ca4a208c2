"""MLflow helpers: where the tracking store is, the one MLflow run of a pipeline run, and
logging a Keras model into it.

Steps find the pipeline's MLflow run by the KFP run id tag (creating it on first use),
so no step needs another's output to log, and a cached step never points at a stale run.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from components.core.errors import UserError

DEFAULT_DB_NAME = "mlflow.db"
KFP_RUN_ID_TAG = "kfp.run_id"
KFP_RUN_NAME_TAG = "kfp.run_name"
# MLflow 3's UI opens an experiment by this tag: the runs table for classic model
# training, the GenAI overview (traces, "Detect Issues") for "genai_development".
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"


def client(tracking_uri: str):
    """An MlflowClient on one store, model registry included. MLflow keeps the registry URI
    apart from the tracking URI (a process-wide setting): naming only the tracking URI
    would leave registry calls on whatever store was set before."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri, registry_uri=tracking_uri)


def is_not_found(exc: Exception) -> bool:
    """MLflow's two ways of saying that a thing does not exist: RESOURCE_DOES_NOT_EXIST (no
    such model, version or run), or INVALID_PARAMETER_VALUE "... not found" (no such alias,
    e.g. "Registered model alias champion not found.")."""
    code = getattr(exc, "error_code", "")
    message = getattr(exc, "message", str(exc))
    return code == "RESOURCE_DOES_NOT_EXIST" or (code == "INVALID_PARAMETER_VALUE" and "not found" in message)


def metrics_at(values: dict[str, float], step: int = 0) -> list:
    """``values`` as mlflow Metric entities of one timestamp and step, for log_batch."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, float(value), now, step) for key, value in values.items()]


def use_store(tracking_uri: str) -> None:
    """Point mlflow's fluent API (start_run, register_model, models:/ URIs) at one store."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


@contextmanager
def logging_into(tracking_uri: str, run_id: str) -> Iterator[None]:
    """mlflow's fluent API (log_metrics, log_artifact, ...) writing into one run of one store."""
    import mlflow

    use_store(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        yield


def resolve_tracking_uri(explicit: str | None = None, configured: str = "") -> str:
    """``--tracking-uri``, else the config's, else ``MLFLOW_TRACKING_URI``, else an SQLite
    file in the working folder (absolute, so subprocess steps all find the same store)."""
    uri = explicit or configured or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / DEFAULT_DB_NAME}"


# Long enough for a busy server to answer /health, short enough that a wrong URL or a
# server that is down is reported in seconds, not after the client's minutes of retries.
HEALTH_TIMEOUT_S = 5.0


class TrackingUnavailable(UserError):
    """The MLflow tracking server does not answer: one line, before any step starts."""


def check_reachable(tracking_uri: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """An http(s) tracking server must answer ``GET /health`` within ``timeout``."""
    import urllib.error
    import urllib.request

    if urlparse(tracking_uri).scheme not in ("http", "https"):
        return
    url = f"{tracking_uri.rstrip('/')}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        problem = f"HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError) as exc:
        problem = str(getattr(exc, "reason", exc))
    raise TrackingUnavailable(
        f"MLflow tracking server {tracking_uri} does not answer ({problem} from {url} within "
        f"{timeout:g} s): start it, or leave out --tracking-uri to use ./{DEFAULT_DB_NAME}"
    )


def ensure_store(tracking_uri: str) -> None:
    """Create a local SQLite store once, under a file lock: two runs that start together
    on a new store would otherwise both run MLflow's schema migration, and one fails
    ("Online migration expected to match one row")."""
    import fcntl
    import logging

    from mlflow.tracking import MlflowClient

    if not tracking_uri.startswith("sqlite:///"):
        return
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        migrations = logging.getLogger("mlflow.store.db.utils")
        level = migrations.level
        migrations.setLevel(logging.WARNING)  # "Creating initial MLflow database tables...": not news
        try:
            MlflowClient(tracking_uri).search_experiments(max_results=1)  # creates and migrates the tables
        finally:
            migrations.setLevel(level)


def _artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Next to a local SQLite store, not wherever the creating process happened to run."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        return (db.parent / "mlartifacts" / experiment).as_uri()
    return None


def ensure_experiment(tracking_uri: str, experiment: str) -> str:
    """The experiment's id, created if needed as a model-training experiment (the tag
    ``mlflow.experimentKind``), so that MLflow's UI opens it on its runs table; an existing
    experiment without the tag gets it."""
    from mlflow.exceptions import MlflowException

    store = client(tracking_uri)
    found = store.get_experiment_by_name(experiment)
    if found is None:
        try:
            return store.create_experiment(
                experiment,
                artifact_location=_artifact_location(tracking_uri, experiment),
                tags={EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT},
            )
        except MlflowException:  # created meanwhile by a parallel step
            found = store.get_experiment_by_name(experiment)
    if EXPERIMENT_KIND_TAG not in found.tags:
        try:
            store.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)
        except MlflowException as exc:  # someone else's experiment, read-only to us: only the UI's view is lost
            sys.stderr.write(
                f"warning: could not tag experiment {experiment!r} as model training: "
                f"{exc.message.splitlines()[0] if exc.message else exc}\n"
            )
    return found.experiment_id


def pipeline_run(
    tracking_uri: str,
    experiment: str,
    kfp_run_name: str,
    kfp_run_id: str,
    params: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """The id of the MLflow run for this KFP run, created (with params and tags) if needed."""
    from mlflow.entities import Param

    store = client(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri, experiment)
    found = store.search_runs([experiment_id], filter_string=f"tags.`{KFP_RUN_ID_TAG}` = '{kfp_run_id}'", max_results=1)
    if found:
        return found[0].info.run_id
    run = store.create_run(
        experiment_id,
        run_name=kfp_run_name,
        tags={KFP_RUN_ID_TAG: kfp_run_id, KFP_RUN_NAME_TAG: kfp_run_name, **(tags or {})},
    )
    if params:
        store.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in params.items()])
    return run.info.run_id


def end_pipeline_run(tracking_uri: str, experiment: str, kfp_run_name: str, status: str, reason: str) -> None:
    """End a pipeline's MLflow run that is still RUNNING as ``status`` (FAILED, KILLED),
    with the reason as the tag ``lesion.end_reason`` and on top of its description."""
    from components.core.run_descriptions import NOTE_TAG, failed_description

    store = client(tracking_uri)
    found = store.get_experiment_by_name(experiment)
    if found is None:
        return
    for run in store.search_runs([found.experiment_id], filter_string=f"tags.`{KFP_RUN_NAME_TAG}` = '{kfp_run_name}'"):
        if run.info.status == "RUNNING":
            store.set_tag(run.info.run_id, "lesion.end_reason", reason[:5000])
            store.set_tag(
                run.info.run_id,
                NOTE_TAG,
                failed_description(status, reason[:5000], run.data.tags.get(NOTE_TAG, ""))[:60000],
            )
            store.set_terminated(run.info.run_id, status)


def set_description(tracking_uri: str, run_id: str, text: str) -> None:
    """The run's description: the note MLflow shows on top of the run page (Markdown)."""
    from components.core.run_descriptions import NOTE_TAG

    client(tracking_uri).set_tag(run_id, NOTE_TAG, text[:60000])


def run_params(tracking_uri: str, run_id: str, prefix: str = "") -> dict[str, str]:
    """The params of an MLflow run whose names start with ``prefix`` ({} if the run is gone)."""
    from mlflow.exceptions import MlflowException

    try:
        params = client(tracking_uri).get_run(run_id).data.params
    except MlflowException:
        return {}
    return {k: v for k, v in params.items() if k.startswith(prefix)}


# MLflow 3.17's UI shows every experiment as the sidebar's switch says ("GenAI", the
# default, or "Model training"), whatever its mlflow.experimentKind tag; this query in a
# link opens the "Model training" view: the runs table, and run pages without GenAI tabs.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def ui_base(tracking_uri: str) -> str:
    """The UI's address: the tracking server's, or for a local store the one `lesionpipe ui` serves."""
    scheme = urlparse(tracking_uri).scheme
    return tracking_uri.rstrip("/") if scheme in ("http", "https") else "http://127.0.0.1:5000"


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    """A browser URL of the experiment's runs table."""
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}?{MODEL_TRAINING_VIEW}"


def run_url(tracking_uri: str, run_id: str) -> str:
    """A browser URL for the run (for a local store: the URL `lesionpipe ui` serves)."""
    experiment_id = client(tracking_uri).get_run(run_id).info.experiment_id
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}"


def ui_command(tracking_uri: str) -> str:
    if urlparse(tracking_uri).scheme in ("http", "https"):
        return f"open {tracking_uri}"
    return f"lesionpipe ui --tracking-uri {tracking_uri}"


def log_model(
    model_path: str,
    image_size: int,
    tracking_uri: str,
    run_id: str,
    classes: list[str],
    resize_mode: str = "pad",
    synthetic: bool = False,
    decision_bias: dict[str, float] | None = None,
    fitted_on_validation: dict[str, dict] | None = None,
) -> str:
    """Log the Keras model to the MLflow run with signature and input example; return its URI.
    Its metadata says whether it was trained on synthetic data, so every later use of it
    (predict, evaluate) can say so, and carries its decision offsets by class
    (components.scoring.decisions), if it has them, and what else was fitted on
    validation (file name -> content: filenames.FITTED_ON_VALIDATION)."""
    import keras
    import mlflow
    import numpy as np
    from mlflow.models import infer_signature

    model = keras.models.load_model(model_path, compile=False)
    example = np.full((1, image_size, image_size, 3), 128.0, dtype=np.float32)
    signature = infer_signature(example, model.predict(example, verbose=0))
    with logging_into(tracking_uri, run_id):
        info = mlflow.tensorflow.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example,
            metadata={
                "classes": classes,
                "image_size": image_size,
                "resize_mode": resize_mode,
                "synthetic": synthetic,
                **({"decision_bias": decision_bias} if decision_bias else {}),
                **({"fitted_on_validation": fitted_on_validation} if fitted_on_validation else {}),
            },
        )
    return info.model_uri

"""Run the pipeline on this machine with the KFP local runner: no cluster, same pipeline."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from components.core import filenames
from pipeline.config import Config
from pipeline.console import RunConsole
from pipeline.pipeline import PIPELINE_NAME, create_pipeline

# Cluster settings that would change what a local run does: retries would repeat a
# failing step (with backoff), and the GCS key path exists only in the cluster's pods.
LOCAL_CLUSTER_OVERRIDES = ("cluster.retries=0", "cluster.secrets.gcs=")
CHECKPOINTS_DIR = "checkpoints"
LATEST_LINK = "latest"


class PipelineFailed(RuntimeError):
    """A step failed: the message is its cause in words and where its whole log is."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a container stopping, `timeout`, a scheduler cancelling) ends a run the
    way Ctrl-C does. Python's default SIGTERM ends this process at once and leaves the
    running step's process training on, its MLflow run RUNNING forever."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def run_local(cfg: Config, data_uri: str, output_dir: str | Path, tracking_uri: str, force_retrain: bool = False,
              echo: Callable[[str], None] | None = None, verbose: bool = False) -> dict:
    """Run every step through ``kfp.local.SubprocessRunner`` in a folder of its own,
    ``<output_dir>/<config name>-<time>/`` (``<output_dir>/latest`` points at the newest):
    summary.json, pipeline.log and each task's log. ``echo`` shows the progress lines
    (default: stderr); ``verbose`` shows every line the tasks print instead."""
    from kfp import local

    # The local runner warns that it ignores base_image, display names and the pods'
    # resources: expected here.
    warnings.filterwarnings("ignore", message=".*(non-Python base image|have no effect in the current local runner).*")
    cfg = cfg.with_overrides(LOCAL_CLUSTER_OVERRIDES)
    out = Path(output_dir).resolve()
    run_dir = _new_run_dir(out, cfg.name)
    pipeline_root = out / "pipeline_root"
    # Training checkpoints outlive a killed run (each run has its own pipeline_root
    # folder), so the same command started again resumes; a finished run removes them.
    checkpoints = out / CHECKPOINTS_DIR
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True)
    lesion_pipeline = create_pipeline(cfg)
    console = RunConsole(run_dir, expected_tasks(cfg), echo or _to_stderr, verbose, terminal=sys.stdout)
    on_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with contextlib.redirect_stdout(console):
            task = lesion_pipeline(data_uri=data_uri, tracking_uri=tracking_uri, force_retrain=force_retrain,
                                   checkpoint_root=str(checkpoints), local_run_dir=str(run_dir))
    except RuntimeError as exc:
        cause = console.failure() or str(exc).strip().splitlines()[0]
        _end_mlflow_run(tracking_uri, cfg, pipeline_root, "FAILED", cause)
        raise PipelineFailed(cause) from None
    except KeyboardInterrupt as exc:
        _kill_child_processes()
        reason = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"
        _end_mlflow_run(tracking_uri, cfg, pipeline_root, "KILLED", reason)
        raise
    finally:
        signal.signal(signal.SIGTERM, on_sigterm)
        console.finish()
    summary = json.loads(task.output)
    shutil.rmtree(checkpoints, ignore_errors=True)
    summary["pipeline_run_dir"] = str(_newest_pipeline_run(pipeline_root))
    summary["config_name"] = cfg.name
    summary["run_dir"] = str(run_dir)
    summary_path = run_dir / filenames.SUMMARY
    summary_path.write_text(json.dumps(summary, indent=2))
    summary["summary_path"] = str(summary_path)
    return summary


def expected_tasks(cfg: Config) -> int:
    """Tasks of a run that trains: list, the ingest shards, merge, gate, split, the
    normalize shards, gather, augment, train, evaluate, register, report."""
    return 10 + cfg.data.ingest_shards + cfg.data.num_shards


def _to_stderr(text: str) -> None:
    # Not print(): while a task runs, the local runner replaces builtins.print with one
    # that indents onto sys.stdout, which is the run's console.
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _new_run_dir(out: Path, config_name: str) -> Path:
    """``<out>/<config>-<YYYYmmdd-HHMMSS>`` (never an existing one), and ``<out>/latest``
    pointing at it."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = out / f"{config_name}-{stamp}"
    copy = 1
    while run_dir.exists():
        copy += 1
        run_dir = out / f"{config_name}-{stamp}-{copy}"
    run_dir.mkdir()
    latest = out / LATEST_LINK
    partial = out / f".{LATEST_LINK}.partial"
    partial.unlink(missing_ok=True)
    partial.symlink_to(run_dir.name, target_is_directory=True)
    os.replace(partial, latest)  # the link moves in one step: readers never see none
    return run_dir


def _newest_pipeline_run(pipeline_root: Path) -> Path | None:
    """<pipeline_root>/<pipeline>-<timestamp>/: the newest run folder is this run's."""
    runs = list(pipeline_root.glob(f"{PIPELINE_NAME}-*"))
    return max(runs, key=lambda p: p.name) if runs else None


def _end_mlflow_run(tracking_uri: str, cfg: Config, pipeline_root: Path, status: str, reason: str) -> None:
    """Mark this run's MLflow run FAILED or KILLED with the reason, so it does not stay
    RUNNING; best effort (the store may be what failed)."""
    from components.core import tracking
    run_folder = _newest_pipeline_run(pipeline_root)
    if run_folder is None:
        return
    try:
        tracking.end_pipeline_run(tracking_uri, cfg.mlflow.experiment, run_folder.name, status, reason)
    except Exception as exc:  # noqa: BLE001 - reporting the run's own failure matters more
        _to_stderr(f"(could not mark the MLflow run {status}: {str(exc).splitlines()[0]})")


def _kill_child_processes() -> None:
    """SIGKILL every process this one started (the running tasks and theirs), so none
    outlives an interrupted run. Linux (/proc); elsewhere the tasks get the terminal's
    Ctrl-C themselves."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, seen = [os.getpid()], []
    while todo:
        for child in children.get(todo.pop(), []):
            seen.append(child)
            todo.append(child)
    for pid in seen:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass

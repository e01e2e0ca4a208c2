"""Run the pipeline on this machine with the KFP local runner: no cluster, same pipeline."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from components.core import filenames
from pipeline.config import RunConfig
from pipeline.console import RunConsole
from pipeline.containers import ContainerRun
from pipeline.pipeline import create_pipeline

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


class _Stopper:
    """The SIGINT/SIGTERM handler of a local run. It kills the steps' processes before it
    raises, because the KFP local runner waits for a step inside ``with subprocess.Popen``,
    whose exit waits without a limit for anything but a plain KeyboardInterrupt, and joins
    a ParallelFor's threads, each waiting on its step: a signal sent to this process alone
    (`timeout`, systemd, a container stop; unlike a terminal's Ctrl-C, which reaches the
    whole process group) would end the run only when the step next printed, minutes into a
    silent epoch. Raising a plain KeyboardInterrupt instead would not release the
    ParallelFor's threads. While the runner unwinds, the ParallelFor tasks still queued
    start: a thread goes on killing every new process until ``stop``."""

    def __init__(self):
        self.signum: int | None = None
        self._done = threading.Event()

    def __call__(self, signum, frame) -> None:
        if self.signum is not None:  # a second Ctrl-C must not cut the MLflow run's ending short
            return
        self.signum = signum
        _kill_child_processes()
        threading.Thread(target=self._keep_killing, name="kill-steps", daemon=True).start()
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    def _keep_killing(self) -> None:
        while not self._done.wait(0.1):
            _kill_child_processes()

    def stop(self) -> None:
        """Called when the run ends, however it ends; kills only after a signal. A run that
        ends by itself has no step left, and the caller's own other processes (a server a
        notebook or a test started) are not the run's to kill."""
        self._done.set()
        if self.signum is not None:
            _kill_child_processes()


def run_local(
    cfg: RunConfig,
    data_uri: str,
    output_dir: str | Path,
    tracking_uri: str,
    force_retrain: bool = False,
    echo: Callable[[str], None] | None = None,
    verbose: bool = False,
    containers: ContainerRun | None = None,
) -> dict:
    """Run every step through ``kfp.local.SubprocessRunner``, or in its image with
    ``containers`` (pipeline.containers.prepare), in a folder of its own,
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
    # folder), so the same command started again resumes; a finished run removes its own.
    checkpoints = out / CHECKPOINTS_DIR
    runner = containers.runner() if containers else local.SubprocessRunner(use_venv=False)
    local.init(runner=runner, pipeline_root=str(pipeline_root), raise_on_error=True)
    lesion_pipeline = create_pipeline(cfg, note_unpinned=False)
    console = RunConsole(
        run_dir, expected_tasks(cfg), echo or _to_stderr, verbose, terminal=sys.stdout, pipeline_root=pipeline_root
    )
    stopper = _Stopper()
    previous = {signum: signal.signal(signum, stopper) for signum in _stop_signals()}
    in_images = containers.active(run_dir) if containers else contextlib.nullcontext()
    try:
        with contextlib.redirect_stdout(console), in_images:
            lesion_pipeline(
                data_uri=data_uri,
                tracking_uri=tracking_uri,
                force_retrain=force_retrain,
                checkpoint_root=str(checkpoints),
                local_run_dir=str(run_dir),
            )
    except RuntimeError as exc:
        cause = console.failure() or str(exc).strip().splitlines()[0]
        # The exit task has ended the MLflow run FAILED; kfp.local's final status named only
        # the exit handler's group, and the console knows the failed task and its cause.
        _end_mlflow_run(tracking_uri, cfg, console.pipeline_run, "FAILED", *console.failed_task())
        raise PipelineFailed(cause) from None
    except KeyboardInterrupt as exc:
        stopper.stop()
        reason = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"
        _end_mlflow_run(tracking_uri, cfg, console.pipeline_run, "KILLED", "", reason)
        raise
    finally:
        stopper.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        console.finish()
    summary = json.loads(_report_of(console.pipeline_run))
    if own_checkpoints := _checkpoints_of(console.pipeline_run):
        from components.training.checkpoints import remove_unless_held

        remove_unless_held(own_checkpoints)
    summary["pipeline_run_dir"] = str(console.pipeline_run)
    summary["config_name"] = cfg.name
    summary["run_dir"] = str(run_dir)
    summary_path = run_dir / filenames.SUMMARY
    summary_path.write_text(json.dumps(summary, indent=2))
    summary["summary_path"] = str(summary_path)
    return summary


def expected_tasks(cfg: RunConfig) -> int:
    """Tasks of a run that trains: list, the ingest shards, merge, gate, split, the
    normalize shards, gather, augment, train, evaluate, register, report, finish_run."""
    return 11 + cfg.data.ingest_partitions + cfg.data.num_shards


def _report_of(run_folder: Path | None) -> str:
    """The report task's JSON (the trained or the data-unchanged branch's): the summary. Not
    the pipeline's output: KFP takes a pipeline's outputs only from outside its exit handler."""
    reports = sorted(run_folder.glob("report-step*/executor_output.json")) if run_folder else []
    if len(reports) != 1:
        raise PipelineFailed(f"expected one report task's output in {run_folder}, found {len(reports)}")
    return json.loads(reports[0].read_text())["parameterValues"]["Output"]


def _to_stderr(text: str) -> None:
    # Not print(): while a task runs, the local runner replaces builtins.print with one
    # that indents onto sys.stdout, which is the run's console.
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _new_run_dir(out: Path, config_name: str) -> Path:
    """``<out>/<config>-<YYYYmmdd-HHMMSS>`` (never an existing one, nor one another run
    started in the same second makes: mkdir is the claim), and ``<out>/latest`` pointing
    at it."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = out / f"{config_name}-{stamp}"
    copy = 1
    while True:
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            copy += 1
            run_dir = out / f"{config_name}-{stamp}-{copy}"
    latest = out / LATEST_LINK
    partial = out / f".{LATEST_LINK}-{run_dir.name}.partial"  # this run's own: runs may link at once
    partial.unlink(missing_ok=True)
    partial.symlink_to(run_dir.name, target_is_directory=True)
    os.replace(partial, latest)  # the link moves in one step: readers never see none
    return run_dir


def _stop_signals() -> list[int]:
    """SIGTERM, and SIGINT unless it is ignored (a job started in the background with
    `&` or nohup is not to be stopped by the terminal's Ctrl-C)."""
    return [signal.SIGTERM] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else [])


def _checkpoints_of(run_folder: Path | None) -> Path | None:
    """The checkpoint folder this run's train step used (the train step's model
    artifact's metadata); None when it did not train. Another run's checkpoints in the
    same output folder are its resume point: never removed here."""
    executor_output = run_folder / "train-step" / "executor_output.json" if run_folder else None
    if executor_output is None or not executor_output.is_file():
        return None
    (model,) = json.loads(executor_output.read_text())["artifacts"]["model"]["artifacts"]
    folder = model.get("metadata", {}).get("checkpoints")
    return Path(folder) if folder else None


def _end_mlflow_run(
    tracking_uri: str, cfg: RunConfig, run_folder: Path | None, status: str, failed_task: str, reason: str
) -> None:
    """Mark this run's MLflow run (named after its pipeline folder) FAILED or KILLED with the
    failed task and the reason, as the exit task does (components.core.run_status), so it
    does not stay RUNNING: an interrupted run's exit task never runs, and a failed run's
    knew only kfp.local's final status. Best effort (the store may be what failed)."""
    from components.core.run_status import finish_pipeline_run

    if run_folder is None:  # no task started: no MLflow run either
        return
    try:
        finish_pipeline_run(
            tracking_uri, cfg.mlflow.experiment, run_folder.name, status=status, failed_task=failed_task, error=reason
        )
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

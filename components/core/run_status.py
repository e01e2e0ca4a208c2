"""How the pipeline's MLflow run ends: FINISHED when every step did, FAILED or KILLED with the
failed task's name and its error's last line. Steps leave the run RUNNING
(tracking.logging_into); the pipeline's final task (components/registry/run_end.py, a KFP
exit handler) and the local runner end it here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from components.core.tracking import KFP_RUN_NAME_TAG, client, pipeline_run

FAILED_TASK_TAG = "lesion.failed_task"
END_REASON_TAG = "lesion.end_reason"
STEP_ERROR_TAG = "lesion.step_error"  # the failing step's own last line, when it could write it


@contextmanager
def failure_recorded(tracking_uri: str, run_id: str, task: str) -> Iterator[None]:
    """A step's body: if it fails, its name and its error's last line go on the run for the
    final task (best effort: the tracking server may be what failed)."""
    try:
        yield
    except Exception as exc:
        from components.core.errors import last_line

        try:
            store = client(tracking_uri)
            store.set_tag(run_id, FAILED_TASK_TAG, task)
            store.set_tag(run_id, STEP_ERROR_TAG, last_line(exc)[:5000])
        except Exception:  # noqa: BLE001, S110 - the step's own error is the one to show
            pass
        raise


def finish_pipeline_run(
    tracking_uri: str,
    experiment: str,
    kfp_run_name: str,
    kfp_run_id: str = "",
    status: str = "FINISHED",
    failed_task: str = "",
    error: str = "",
) -> str | None:
    """End the pipeline's MLflow run as ``status`` (FINISHED, FAILED, KILLED); return its id.
    A failed or killed run gets the failed task's name (tag ``lesion.failed_task``) and
    the reason, ``<task> failed: <error's last line>`` (tag ``lesion.end_reason``, and on
    top of its description). What the failing step recorded itself (failure_recorded)
    wins over ``failed_task``/``error``, which name it as the orchestrator saw it. Called
    again on an ended run (the local runner, which knows the failed task better than
    kfp.local's final status), it rewrites the reason the step did not record itself.
    Found by the KFP run id, else (the local runner, which knows only the run's folder)
    by the KFP run name among the experiment's RUNNING runs; created with the id when no
    step created it (a failure before the retraining gate)."""
    from components.core.run_descriptions import NOTE_TAG, failed_description

    store = client(tracking_uri)
    run_id = _pipeline_run_id(tracking_uri, experiment, kfp_run_name, kfp_run_id)
    if run_id is None:
        return None
    run = store.get_run(run_id)
    tags = run.data.tags
    if status != "FINISHED" and not (run.info.status != "RUNNING" and STEP_ERROR_TAG in tags):
        task = tags.get(FAILED_TASK_TAG) if STEP_ERROR_TAG in tags else failed_task or tags.get(FAILED_TASK_TAG)
        reason = tags.get(STEP_ERROR_TAG) or error or "it ended with an error (see its log)"
        reason = f"{task} failed: {reason}" if task else reason
        previous = tags.get(NOTE_TAG, "")
        if previous.startswith("Verdict: **") and tags.get(END_REASON_TAG):  # our own earlier ending
            previous = previous.partition("\n\n")[2]
        store.set_tag(run_id, FAILED_TASK_TAG, task or "")
        store.set_tag(run_id, END_REASON_TAG, reason[:5000])
        store.set_tag(run_id, NOTE_TAG, failed_description(status, reason[:5000], previous)[:60000])
    if run.info.status == "RUNNING":
        store.set_terminated(run_id, status)
    return run_id


def _pipeline_run_id(tracking_uri: str, experiment: str, kfp_run_name: str, kfp_run_id: str) -> str | None:
    if kfp_run_id:
        return pipeline_run(tracking_uri, experiment, kfp_run_name, kfp_run_id)
    store = client(tracking_uri)
    found = store.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = store.search_runs(
        [found.experiment_id], filter_string=f"tags.`{KFP_RUN_NAME_TAG}` = '{kfp_run_name}'", max_results=1
    )
    return runs[0].info.run_id if runs else None

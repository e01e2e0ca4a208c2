"""How the pipeline's MLflow run ends: steps leave it RUNNING, finish_pipeline_run ends it with
the failed task and its error's last line (the step's own record first)."""

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from components.core import tracking
from components.core.errors import UserError
from components.core.run_status import END_REASON_TAG, FAILED_TASK_TAG, failure_recorded, finish_pipeline_run


@pytest.fixture
def store(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def new_run(store: str, name: str = "lesion-pipeline-1") -> str:
    return tracking.pipeline_run(store, "lesion-test", name, f"kfp-{name}")


def test_a_step_logging_into_the_run_leaves_it_running(store):
    """Was: FINISHED after every step (mlflow.start_run's context), whatever came next."""
    run_id = new_run(store)
    with tracking.logging_into(store, run_id):
        mlflow.log_metric("epoch_loss", 1.0)
    assert MlflowClient(store).get_run(run_id).info.status == "RUNNING"
    assert mlflow.active_run() is None
    with pytest.raises(RuntimeError), tracking.logging_into(store, run_id):
        raise RuntimeError("out of memory")
    assert MlflowClient(store).get_run(run_id).info.status == "RUNNING"  # was: FAILED, by the step alone


def test_a_run_whose_tasks_all_succeeded_ends_finished(store):
    run_id = new_run(store)
    assert finish_pipeline_run(store, "lesion-test", "lesion-pipeline-1", "kfp-lesion-pipeline-1") == run_id
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "FINISHED" and FAILED_TASK_TAG not in run.data.tags


def test_the_failed_steps_own_record_names_it(store):
    run_id = new_run(store)
    with pytest.raises(UserError), failure_recorded(store, run_id, "train"):
        raise UserError("train.model: mobilenet_v2 has no alpha 0.3\n(one of 0.35, 0.5, 1.0)")
    finish_pipeline_run(
        store, "lesion-test", "lesion-pipeline-1", "kfp-lesion-pipeline-1", "FAILED", "exit-handler-1", "failed"
    )
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[FAILED_TASK_TAG] == "train"
    assert run.data.tags[END_REASON_TAG] == "train failed: (one of 0.35, 0.5, 1.0)"
    assert run.data.tags["mlflow.note.content"].startswith("Verdict: **FAILED**: train failed: (one of")


def test_a_failure_before_any_step_logged_still_gets_a_failed_run(store):
    """A data step that fails before the retraining gate created the run: the final task creates it."""
    run_id = finish_pipeline_run(store, "lesion-test", "run-7", "kfp-7", "FAILED", "split", "too few images")
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags[END_REASON_TAG] == "split failed: too few images"
    assert run.data.tags[tracking.KFP_RUN_ID_TAG] == "kfp-7"


def test_the_local_runner_names_the_task_kfp_local_did_not(store):
    """kfp.local's final status names the exit handler's group; the local runner, which knows the
    failed task, rewrites the reason once (no second verdict line on the description)."""
    run_id = new_run(store)
    tracking.set_description(store, run_id, "Data: 40 images")
    finish_pipeline_run(
        store, "lesion-test", "lesion-pipeline-1", "kfp-lesion-pipeline-1", "FAILED", "exit-handler-1", "failed."
    )
    finish_pipeline_run(store, "lesion-test", "lesion-pipeline-1", status="FAILED", failed_task="split", error="bad")
    tags = MlflowClient(store).get_run(run_id).data.tags
    assert tags[FAILED_TASK_TAG] == "split" and tags[END_REASON_TAG] == "split failed: bad"
    assert tags["mlflow.note.content"] == "Verdict: **FAILED**: split failed: bad\n\nData: 40 images"

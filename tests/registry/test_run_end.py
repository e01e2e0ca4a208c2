"""The exit task under the real KFP local runner: it runs after a failed step and ends the
MLflow run FAILED; after a pipeline that succeeded, FINISHED."""

import pytest
from kfp import dsl, local
from mlflow.tracking import MlflowClient

from components.core.run_status import FAILED_TASK_TAG
from components.registry.run_end import finish_run_step, mlflow_status


def body_step(fail: bool):
    if fail:
        raise RuntimeError("evaluate: killed")


@pytest.mark.parametrize("fail, status", [(True, "FAILED"), (False, "FINISHED")])
def test_the_exit_task_ends_the_mlflow_run(tmp_path, fail, status):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"), raise_on_error=False
    )
    finish = dsl.component(finish_run_step, install_kfp_package=False)
    body = dsl.component(body_step, install_kfp_package=False)

    @dsl.pipeline(name="exit-test")
    def exit_test(tracking_uri: str, fail: bool):
        end = finish(
            tracking_uri=tracking_uri,
            experiment="lesion-test",
            kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        with dsl.ExitHandler(end):
            body(fail=fail)

    exit_test(tracking_uri=store, fail=fail)
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("lesion-test").experiment_id])
    assert run.info.status == status  # was: no run at all, or RUNNING for ever
    # kfp.local's final status names the exit handler's group, not the step (the local runner
    # names it from the step's log: tests/pipeline/test_local.py).
    assert run.data.tags.get(FAILED_TASK_TAG) == ("exit-handler-1" if fail else None)


def test_kfp_states_map_to_mlflow_statuses():
    assert [mlflow_status(s) for s in ("SUCCEEDED", "FAILED", "CANCELLED", "CANCELED", "SYSTEM_ERROR")] == [
        "FINISHED",
        "FAILED",
        "KILLED",
        "KILLED",
        "FAILED",
    ]

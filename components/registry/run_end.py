"""The pipeline's final task (a KFP exit handler): it runs however the other tasks ended and
ends the pipeline's MLflow run FINISHED, FAILED or KILLED (components.core.run_status)."""

from kfp import dsl

# KFP's final states (PipelineTaskFinalStatus.state) -> MLflow's.
MLFLOW_STATUS = {"SUCCEEDED": "FINISHED", "FAILED": "FAILED", "CANCELLED": "KILLED", "CANCELED": "KILLED"}


def mlflow_status(kfp_state: str) -> str:
    """FINISHED only for a run that succeeded; a state KFP may add later counts as FAILED."""
    return MLFLOW_STATUS.get(kfp_state.upper(), "FAILED")


def finish_run_step(
    status: dsl.PipelineTaskFinalStatus, tracking_uri: str, experiment: str, kfp_run_name: str, kfp_run_id: str
) -> str:
    """KFP wrapper: the exit task. KFP names the failed task as it sees it (the exit
    handler's group and its error, on a cluster and in kfp.local); a step that could
    write to MLflow has recorded its own name and error, which win. Returns the status."""
    from components.core.run_status import finish_pipeline_run
    from components.registry.run_end import mlflow_status

    ended = mlflow_status(status.state)
    finish_pipeline_run(
        tracking_uri,
        experiment,
        kfp_run_name,
        kfp_run_id,
        ended,
        failed_task=status.pipeline_task_name or "",
        error=status.error_message or "",
    )
    print(f"MLflow run of {kfp_run_name}: {ended}", flush=True)
    return ended

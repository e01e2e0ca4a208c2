"""Run the pipeline on this machine with the KFP local runner: no cluster, same pipeline."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

from components import artifacts
from pipeline.config import Config
from pipeline.pipeline import PIPELINE_NAME, create_pipeline

# Cluster settings that would change what a local run does: retries would repeat a
# failing step (with backoff), and the GCS key path exists only in the cluster's pods.
LOCAL_CLUSTER_OVERRIDES = ("cluster.retries=0", "cluster.secrets.gcs=")
CHECKPOINTS_DIR = "checkpoints"


class PipelineFailed(RuntimeError):
    """A step failed; its own log (printed above) says why."""


def run_local(cfg: Config, data_uri: str, output_dir: str | Path, tracking_uri: str,
              force_retrain: bool = False) -> dict:
    """Run every step through ``kfp.local.SubprocessRunner``; write and return summary.json."""
    from kfp import local

    # The local runner warns that it ignores base_image, display names and the pods'
    # resources: expected here.
    warnings.filterwarnings("ignore", message=".*(non-Python base image|have no effect in the current local runner).*")
    cfg = cfg.with_overrides(LOCAL_CLUSTER_OVERRIDES)
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    pipeline_root = out / "pipeline_root"
    # Training checkpoints outlive a killed run (each run has its own pipeline_root
    # folder), so the same command started again resumes; a finished run removes them.
    checkpoints = out / CHECKPOINTS_DIR
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True)
    lesion_pipeline = create_pipeline(cfg)
    try:
        task = lesion_pipeline(data_uri=data_uri, tracking_uri=tracking_uri, force_retrain=force_retrain,
                               checkpoint_root=str(checkpoints))
    except RuntimeError as exc:
        raise PipelineFailed(str(exc).strip().splitlines()[0]) from None
    summary = json.loads(task.output)
    shutil.rmtree(checkpoints, ignore_errors=True)
    # <pipeline_root>/<pipeline>-<timestamp>/<task>/<output>: the newest run folder is this run's.
    summary["pipeline_run_dir"] = str(max(pipeline_root.glob(f"{PIPELINE_NAME}-*"), key=lambda p: p.name))
    summary["config_name"] = cfg.name
    summary_path = out / artifacts.SUMMARY
    summary_path.write_text(json.dumps(summary, indent=2))
    summary["summary_path"] = str(summary_path)
    return summary

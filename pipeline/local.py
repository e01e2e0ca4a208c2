"""Run the pipeline on this machine with the KFP local runner: no cluster, same pipeline."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from pipeline.config import Config
from pipeline.pipeline import create_pipeline

SUMMARY_FILE = "summary.json"


class PipelineFailed(RuntimeError):
    """A step failed; its own log (printed above) says why."""


def run_local(cfg: Config, data_uri: str, output_dir: str | Path, tracking_uri: str) -> dict:
    """Run every step through ``kfp.local.SubprocessRunner``; write and return summary.json."""
    from kfp import local

    # The local runner warns that it ignores base_image and display names: expected here.
    warnings.filterwarnings("ignore", message=".*(non-Python base image|have no effect in the current local runner).*")
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out / "pipeline_root"),
               raise_on_error=True)
    lesion_pipeline = create_pipeline(cfg)
    try:
        task = lesion_pipeline(data_uri=data_uri, config=cfg.to_dict(), tracking_uri=tracking_uri)
    except RuntimeError as exc:
        raise PipelineFailed(str(exc).strip().splitlines()[0]) from None
    summary_artifact = Path(task.output.path)
    summary = json.loads(summary_artifact.read_text())
    # <pipeline_root>/<pipeline>-<timestamp>/<task>/<output>
    summary["pipeline_run_dir"] = str(summary_artifact.parent.parent)
    summary["config_name"] = cfg.name
    summary_path = out / SUMMARY_FILE
    summary_path.write_text(json.dumps(summary, indent=2))
    summary["summary_path"] = str(summary_path)
    return summary

"""``python -m components.training.train_job``: the train step outside KFP, for a TFJob.

The Kubeflow Training Operator starts one process per worker and sets TF_CONFIG; the
strategy (MultiWorkerMirroredStrategy for several workers, see
``components.training.devices.configure_devices`` and ``components.training.distributed``) comes from it.
Inputs are a pipeline run's normalize and augment outputs (local paths or gs://
prefixes); only the chief writes the model to ``--output-dir`` and logs to MLflow, the
other workers train into scratch folders. Every worker prints a summary with a
checksum of its final weights: the same on all workers of a job.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path

from components.core.errors import UserError


def is_chief() -> bool:
    """No TF_CONFIG, the ``chief`` task, or worker 0 of a cluster without a chief (a TFJob
    with Worker replicas only)."""
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = tf_config.get("task")
    if not task or task.get("type") == "chief":
        return True
    return (
        task.get("type") == "worker" and int(task.get("index", 0)) == 0 and "chief" not in tf_config.get("cluster", {})
    )


def weights_checksum(model_path: str | Path) -> str:
    """SHA-256 of a saved model's weights, in order: equal for the workers of one job."""
    import keras

    digest = hashlib.sha256()
    for weights in keras.models.load_model(model_path, compile=False).get_weights():
        digest.update(weights.tobytes())
    return digest.hexdigest()


def run(
    normalized: str,
    augmented: str,
    config_path: str,
    output_dir: str,
    tracking_uri: str = "",
    run_id_tag: str = "",
    wait_for_workers_minutes: float = 15.0,
) -> dict:
    from components.core import tracking
    from components.core.config_base import flat_params, load_section, read_yaml_mapping, resolve_relative_paths
    from components.core.settings import MlflowConfig, TrainConfig
    from components.data.sources.gcs_folders import download_folder, upload_folder
    from components.training.devices import tf_config_workers
    from components.training.distributed import wait_for_workers
    from components.training.train import train
    from components.training.trained_model import log_trained_model

    # The run config's sections this job reads; the others belong to the pipeline's steps.
    sections = resolve_relative_paths(read_yaml_mapping(config_path), Path(config_path).parent)
    # The train section gets the run's melanoma_class, as pipeline.config.RunConfig gives it.
    melanoma_class = sections.get("melanoma_class", TrainConfig().melanoma_class)
    train_settings = load_section(
        TrainConfig, {**(sections.get("train") or {}), "melanoma_class": melanoma_class}, "train."
    )
    mlflow_settings = load_section(MlflowConfig, sections.get("mlflow") or {}, "mlflow.")
    chief = is_chief()
    with tempfile.TemporaryDirectory(prefix="lesion-train-job-") as scratch:
        normalized_dir = download_folder(normalized, Path(scratch, "normalized"))
        augmented_dir = download_folder(augmented, Path(scratch, "augmented")) if augmented else None
        if tf_config_workers() > 1:
            wait_for_workers(wait_for_workers_minutes * 60)
        remote_output = output_dir.startswith("gs://")
        out = Path(output_dir) if chief and not remote_output else Path(scratch, "model")
        run_id = ""
        if chief and tracking_uri:
            job_id = run_id_tag or f"tfjob-{uuid.uuid4().hex[:12]}"
            run_id = tracking.pipeline_run(
                tracking_uri,
                mlflow_settings.experiment,
                f"lesion-train-job-{job_id}",
                job_id,
                flat_params({"train": train_settings.to_dict()}),
                tags={"lesion.trainer": "tfjob"},
            )
        result = train(
            normalized_dir,
            augmented_dir,
            train_settings,
            out,
            tracking_uri=tracking_uri if run_id else "",
            mlflow_run_id=run_id,
        )
        summary = {
            "chief": chief,
            "device": result.device,
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "weights_sha256": weights_checksum(result.model_path),
            "mlflow_run_id": run_id,
            "model_uri": "",
        }
        if chief:
            if run_id:
                summary["model_uri"] = log_trained_model(out, tracking_uri, run_id)
            if remote_output:
                upload_folder(out, output_dir)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m components.training.train_job", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--normalized", required=True, help="normalize step output (folder or gs:// prefix)")
    parser.add_argument("--augmented", default="", help="augment step output (folder or gs:// prefix)")
    parser.add_argument("--config", required=True, help="run config YAML")
    parser.add_argument("--output-dir", required=True, help="where the chief writes the model (folder or gs://)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", ""))
    parser.add_argument("--run-id", default="", help="the KFP run id whose MLflow run to log into (default: new run)")
    parser.add_argument(
        "--wait-for-workers-minutes",
        type=float,
        default=15.0,
        help="several workers: how long to wait for all to be up before giving up (default: 15)",
    )
    args = parser.parse_args(argv)
    try:
        summary = run(
            args.normalized,
            args.augmented,
            args.config,
            args.output_dir,
            args.tracking_uri,
            args.run_id,
            args.wait_for_workers_minutes,
        )
    except (UserError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

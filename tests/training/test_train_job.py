"""`python -m components.training.train_job`, the TFJob's entry point: inputs and outputs on GCS
(the emulator), and two real workers on 127.0.0.1 under MultiWorkerMirroredStrategy."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from mlflow.tracking import MlflowClient

from components.data.sources.gcs import GcsSource
from components.data.sources.gcs_folders import upload_folder
from components.training.callbacks import read_epoch_log
from components.training.train_job import weights_checksum
from tests.helpers import write_class_folder
from tests.helpers.servers import worker_environments
from tests.helpers.tiny_data import make_tiny_shards, tiny_config


def write_config(path: Path, **train) -> Path:
    cfg = tiny_config(**{"epochs": 1, **train})
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def job(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "components.training.train_job", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        **popen,
    )


def test_single_worker_reads_and_writes_gcs_and_logs_to_mlflow(tmp_path, gcs_emulator):
    from google.cloud import storage

    storage.Client().create_bucket("job-bucket")
    upload_folder(make_tiny_shards(tmp_path), "gs://job-bucket/run-1/normalized")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = job(
        "--normalized",
        "gs://job-bucket/run-1/normalized",
        "--config",
        str(write_config(tmp_path / "c.yaml")),
        "--output-dir",
        "gs://job-bucket/run-1/model",
        "--tracking-uri",
        tracking,
        "--run-id",
        "kfp-run-7",
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["chief"] is True and summary["epochs_run"] == 1
    written = {f.relpath for f in GcsSource("gs://job-bucket/run-1/model").list_files()}
    assert {"model.keras", "classes.json", "history.json"} <= written
    run = MlflowClient(tracking).get_run(summary["mlflow_run_id"])
    assert run.data.tags["kfp.run_id"] == "kfp-run-7" and run.data.tags["lesion.trainer"] == "tfjob"
    assert summary["model_uri"].startswith("models:/")


def test_two_workers_train_one_model_that_only_the_chief_writes_and_logs(tmp_path):
    import keras

    normalized = make_tiny_shards(tmp_path)
    # small_resnet: batch normalization, whose moving statistics each worker updates from
    # its own images; class weights: per-image weights in the loss.
    config = write_config(tmp_path / "c.yaml", model="small_resnet", epochs=2, imbalance="class_weight")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [
        job(
            "--normalized",
            str(normalized),
            "--config",
            str(config),
            "--output-dir",
            str(tmp_path / f"out{i}"),
            "--tracking-uri",
            tracking,
            env=env,
        )
        for i, env in enumerate(worker_environments(2))
    ]
    summaries = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    chief, other = summaries
    assert chief["chief"] and not other["chief"]
    assert chief["device"] == other["device"] == "2 workers (MultiWorkerMirroredStrategy), CPU"
    assert chief["epochs_run"] == other["epochs_run"] == 2
    # One model: the same final weights on both workers.
    assert chief["weights_sha256"] == other["weights_sha256"]

    model_path = tmp_path / "out0" / "model.keras"
    assert not (tmp_path / "out1").exists()  # the other worker trained in a scratch folder
    assert weights_checksum(model_path) == chief["weights_sha256"]
    probabilities = keras.models.load_model(model_path, compile=False).predict(
        np.full((2, 32, 32, 3), 128.0, np.float32), verbose=0
    )
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    assert [e["epoch"] for e in read_epoch_log(tmp_path / "out0")] == [0, 1]
    client = MlflowClient(tracking)
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.run_id == chief["mlflow_run_id"] and other["mlflow_run_id"] == ""
    assert chief["model_uri"].startswith("models:/") and other["model_uri"] == ""
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_balanced_accuracy")] == [0, 1]


def test_a_worker_whose_peer_never_comes_up_stops_with_one_error_line(tmp_path):
    config = write_config(tmp_path / "c.yaml")
    lonely = worker_environments(2)[1]
    proc = job(
        "--normalized",
        str(make_tiny_shards(tmp_path)),
        "--config",
        str(config),
        "--output-dir",
        str(tmp_path / "out"),
        "--wait-for-workers-minutes",
        "0.05",
        env=lonely,
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.strip().splitlines()[-1].startswith("error: worker 1 could not reach 127.0.0.1:")
    assert "within 3 s" in err and "Traceback" not in err


def test_chief_is_worker_zero_without_a_chief_task(monkeypatch):
    from components.training.train_job import is_chief

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert is_chief()
    cluster = {"worker": ["a:1", "b:1"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert is_chief()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert not is_chief()
    with_chief = {"chief": ["c:1"], **cluster}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}}))
    assert not is_chief()


def test_a_missing_input_is_one_error_line(tmp_path):
    proc = job(
        "--normalized",
        str(tmp_path / "nope"),
        "--config",
        str(write_config(tmp_path / "c.yaml")),
        "--output-dir",
        str(tmp_path / "out"),
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.strip().splitlines()[-1].startswith("error:") and "Traceback" not in err


def test_the_chief_logs_the_decision_offsets_that_evaluate_then_decides_with(tmp_path, mlflow_server):
    """A TFJob-trained model with train.balance_decisions carries its offsets into MLflow, so
    ``lesionpipe evaluate`` on its URI decides as the train step does, not by plain argmax."""
    import mlflow
    from click.testing import CliRunner

    from components.core.tracking import use_store
    from components.scoring.decisions import decide_classes, in_class_order, saved_decision_bias
    from pipeline.cli import main

    # 48 images a class: 12 validation images each, enough to fit every class's offset
    # (components.scoring.decisions.MIN_IMAGES_TO_FIT).
    cfg = tiny_config(epochs=1, balance_decisions=True).with_overrides(["data.synthetic_images_per_class=48"])
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    proc = job(
        "--normalized",
        str(make_tiny_shards(tmp_path, cfg)),
        "--config",
        str(config),
        "--output-dir",
        str(tmp_path / "model"),
        "--tracking-uri",
        mlflow_server,
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    saved = saved_decision_bias(tmp_path / "model")
    assert saved is not None and any(abs(offset) > 1e-3 for offset in saved.values())

    use_store(mlflow_server)
    assert mlflow.models.get_model_info(summary["model_uri"]).metadata["decision_bias"] == saved

    metrics_path = tmp_path / "metrics.json"
    images = write_class_folder(tmp_path / "images", per_class=3, size=48, seed=5)
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--model",
            summary["model_uri"],
            "--data",
            str(images),
            "--out",
            str(metrics_path),
            "--tracking-uri",
            mlflow_server,
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(metrics_path.read_text())
    assert metrics["decision_bias"] == saved
    scored = np.load(tmp_path / "metrics_report" / "predictions.npz")
    decided = decide_classes(scored["probs"], in_class_order(saved, metrics["classes"]))
    expected = np.zeros((len(metrics["classes"]),) * 2, int)
    np.add.at(expected, (scored["y_true"], decided), 1)
    assert metrics["confusion_matrix"] == expected.tolist()

"""`python -m components.train_job`, the TFJob's entry point: inputs and outputs on GCS
(the emulator), and two real workers on 127.0.0.1 under MultiWorkerMirroredStrategy."""
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from components.sources import GcsSource, upload_folder
from tests.conftest import free_port
from tests.tiny_data import make_tiny_shards, tiny_config


def write_config(path: Path, **train) -> Path:
    cfg = tiny_config(epochs=1, **train)
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def job(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "components.train_job", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, **popen)


def test_single_worker_reads_and_writes_gcs_and_logs_to_mlflow(tmp_path, gcs_emulator):
    from google.cloud import storage

    storage.Client().create_bucket("job-bucket")
    upload_folder(make_tiny_shards(tmp_path), "gs://job-bucket/run-1/normalized")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = job("--normalized", "gs://job-bucket/run-1/normalized", "--config", str(write_config(tmp_path / "c.yaml")),
               "--output-dir", "gs://job-bucket/run-1/model", "--tracking-uri", tracking, "--run-id", "kfp-run-7")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["chief"] is True and summary["epochs_run"] == 1
    written = {f.relpath for f in GcsSource("gs://job-bucket/run-1/model").list_files()}
    assert {"model.keras", "classes.json", "history.json"} <= written
    run = MlflowClient(tracking).get_run(summary["mlflow_run_id"])
    assert run.data.tags["kfp.run_id"] == "kfp-run-7" and run.data.tags["lesion.trainer"] == "tfjob"
    assert summary["model_uri"].startswith("models:/")


def test_several_workers_stop_with_the_reason_before_training(tmp_path):
    """Keras 3's fit does not run under MultiWorkerMirroredStrategy (keras-team/keras#20585):
    a TFJob with two workers must say so, not die inside fit with a PerReplica traceback."""
    normalized = make_tiny_shards(tmp_path)
    config = write_config(tmp_path / "c.yaml")
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    procs = [job("--normalized", str(normalized), "--config", str(config), "--output-dir", str(tmp_path / f"out{i}"),
                 env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
             for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2
        assert "TF_CONFIG names 2 workers" in err and "keras-team/keras#20585" in err and "Traceback" not in err
    assert not (tmp_path / "out0").exists()


def test_chief_is_worker_zero_without_a_chief_task(monkeypatch):
    from components.train_job import is_chief

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
    proc = job("--normalized", str(tmp_path / "nope"), "--config", str(write_config(tmp_path / "c.yaml")),
               "--output-dir", str(tmp_path / "out"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.strip().splitlines()[-1].startswith("error:") and "Traceback" not in err

"""What a model learned from: the record of a normalized folder, the test images the gate
may compare on, and reading a champion's record from MLflow (none, deleted, purged,
logged, or not readable now)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from components.data import tfrecords
from components.registry.training_record import (
    RecordUnavailable,
    TrainingRecord,
    fair_test_images,
    load_record,
    log_record,
)
from tests.helpers.fault_proxy import FaultProxy
from tests.helpers.tiny_data import make_tiny_shards


@pytest.fixture(scope="module")
def normalized(tmp_path_factory):
    return make_tiny_shards(tmp_path_factory.mktemp("record"))


def test_the_record_holds_the_train_and_validation_images_and_nothing_else(normalized, tmp_path):
    record = TrainingRecord.of(normalized)
    subsets = tfrecords.read_images(normalized)["subsets"]
    assert record.md5s == sorted(set(subsets["train"]["md5"]) | set(subsets["val"]["md5"]))
    assert not set(record.md5s) & set(subsets["test"]["md5"])
    assert record.groups == []  # synthetic images have no lesion ids
    assert record.classes == tfrecords.read_meta(normalized)["classes"] and record.synthetic
    assert record.fingerprint == hashlib.sha256("\n".join(record.md5s).encode()).hexdigest()
    assert TrainingRecord.of(tmp_path) is None  # a folder normalized before images.json


def test_fair_test_images_leave_out_what_either_model_saw_by_content_or_lesion(normalized, tmp_path):
    images = tfrecords.read_images(normalized)
    test = images["subsets"]["test"]
    _, uris = tfrecords.read_labels(tfrecords.shard_paths(normalized, "test"))
    # Give two test images a lesion id, as a source with lesion ids would.
    folder = tmp_path / "normalized"
    folder.mkdir()
    test["group_id"] = ["L1" if u in uris[2:4] else g for u, g in zip(test["uri"], test["group_id"])]
    (folder / tfrecords.IMAGES_FILE).write_text(json.dumps(images))
    md5_of = dict(zip(test["uri"], test["md5"]))
    own = TrainingRecord.of(normalized)
    champion = TrainingRecord(own.classes, True, [md5_of[uris[0]], md5_of[uris[1]]], ["L1"], "c" * 64)
    fair = fair_test_images(folder, uris, {"the champion": champion, "this model": own})
    assert list(fair.keep[:4]) == [False] * 4 and fair.keep[4:].all()
    assert fair.left_out == {
        "the champion trained or validated on (the image or its lesion)": 4,
        "this model trained or validated on (the image or its lesion)": 0,
    }
    assert fair.describe() == (
        f"{len(uris) - 4} of {len(uris)} test images compared, left out: "
        "4 the champion trained or validated on (the image or its lesion)"
    )


def test_load_record_none_deleted_purged_and_logged(normalized, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("records", artifact_location=(tmp_path / "artifacts").as_uri())
    assert load_record(uri, "") == (None, "it was registered without an MLflow run")
    run_id = client.create_run(experiment).info.run_id
    assert load_record(uri, run_id) == (
        None,
        f"its MLflow run {run_id} has no training_record.json (logged before records)",
    )
    record = TrainingRecord.of(normalized)
    log_record(uri, run_id, record)
    assert load_record(uri, run_id) == (record, "")
    client.delete_run(run_id)
    assert load_record(uri, run_id) == (None, f"its MLflow run {run_id} was deleted")
    gc = ["gc", "--backend-store-uri", uri, "--tracking-uri", uri, "--run-ids", run_id]
    subprocess.run([sys.executable, "-m", "mlflow", *gc], check=True, capture_output=True, timeout=120)
    assert load_record(uri, run_id) == (None, f"its MLflow run {run_id} was purged")


@pytest.mark.parametrize("fault", ["timeout", "500"])
def test_a_record_that_cannot_be_read_now_is_not_a_missing_one(
    normalized, mlflow_server, quick_mlflow_failures, monkeypatch, fault
):
    """Was (h27): a timed-out download read as "no record" (MLflow reports every failed
    runs:/ download as RESOURCE_DOES_NOT_EXIST; requests' timeouts are OSErrors)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    client = MlflowClient(mlflow_server)
    run_id = client.create_run(client.create_experiment(f"record-fault-{fault}")).info.run_id
    log_record(mlflow_server, run_id, TrainingRecord.of(normalized))
    host, port = mlflow_server.removeprefix("http://").split(":")
    artifacts = "GET /api/2.0/mlflow-artifacts/artifacts"
    proxy = (
        FaultProxy((host, int(port)), delaying=artifacts, delay_s=5.0)
        if fault == "timeout"
        else FaultProxy((host, int(port)), "status", status=500, fail_after_requests=0, counting=artifacts)
    )
    with (
        proxy,
        pytest.raises(RecordUnavailable, match=f"cannot read training_record.json of its MLflow run {run_id} now"),
    ):
        load_record(proxy.url, run_id)

"""The source and its train/val/test subsets as MLflow dataset inputs of the pipeline's
run (the run page's "Datasets" panel), logged the way the report step logs them and read
back from a real MLflow server: names, digests = fingerprints, contexts, source URI,
counts."""

from __future__ import annotations

import json

import pytest

from components.core import filenames, tracking
from components.data.dataset_inputs import source_name
from components.data.ingest import ingest
from components.data.listing import data_fingerprint
from components.data.split import split
from components.evaluation.run_summary import log_data_reports
from tests.helpers.tiny_data import tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset_inputs")
    cfg = tiny_config()
    ingest("", cfg.data, root / "ingest")
    report = split(root / "ingest", cfg.data, root / "split")
    return root, report


def logged_inputs(uri: str, run_id: str) -> dict[str, dict]:
    """context -> the dataset MLflow returns for the run."""
    out = {}
    for item in tracking.client(uri).get_run(run_id).inputs.dataset_inputs:
        [context] = [t.value for t in item.tags if t.key == "mlflow.data.context"]
        d = item.dataset
        out[context] = {
            "name": d.name,
            "digest": d.digest,
            "source_type": d.source_type,
            "source": json.loads(d.source),
            "profile": json.loads(d.profile),
        }
    return out


def test_source_and_subsets_are_the_runs_dataset_inputs(data, mlflow_server):
    root, split_report = data
    run_id = tracking.pipeline_run(mlflow_server, "datasets", "run-datasets", "kfp-datasets", {})
    summary = {"tracking_uri": mlflow_server, "mlflow_run_id": run_id, "data": {"ingested": 64}}
    log_data_reports(summary, {"data": root / "ingest", "split": root / "split"})

    inputs = logged_inputs(mlflow_server, run_id)
    assert sorted(inputs) == ["source", "test", "train", "validation"]
    source_uri = json.loads((root / "ingest" / filenames.INGEST_REPORT).read_text())["source"]
    assert source_uri.startswith("synthetic://") and source_name(source_uri) == "synthetic"
    fingerprint = data_fingerprint(root / "ingest")
    source = inputs["source"]
    assert (source["name"], source["digest"]) == ("synthetic", fingerprint[:12])
    assert source["profile"]["fingerprint"] == fingerprint
    assert (source["source_type"], source["source"]) == ("external", {"url": source_uri})
    assert source["profile"]["images"] == 64 == sum(source["profile"]["classes"].values())
    sizes = split_report["subset_sizes"]
    for subset, context in (("train", "train"), ("val", "validation"), ("test", "test")):
        logged = inputs[context]
        assert logged["name"] == f"synthetic-{subset}"
        assert logged["profile"]["images"] == sizes[subset] == sum(logged["profile"]["classes"].values())
        assert logged["digest"] == logged["profile"]["fingerprint"][:12] != fingerprint[:12]
        assert logged["source"] == {"url": source_uri}
    assert len({i["digest"] for i in inputs.values()}) == 4
    # The run keeps RUNNING: the exit task ends it.
    assert tracking.client(mlflow_server).get_run(run_id).info.status == "RUNNING"


def test_a_run_the_gate_stopped_lists_its_source_only(data, mlflow_server):
    root, _ = data
    run_id = tracking.pipeline_run(mlflow_server, "datasets", "run-skipped", "kfp-skipped", {})
    summary = {"tracking_uri": mlflow_server, "mlflow_run_id": run_id, "data": {"ingested": 64}}
    log_data_reports(summary, {"data": root / "ingest"})
    inputs = logged_inputs(mlflow_server, run_id)
    assert list(inputs) == ["source"] and inputs["source"]["digest"] == data_fingerprint(root / "ingest")[:12]


def test_a_subsets_digest_follows_its_files(data, tmp_path):
    import pandas as pd

    from components.data.dataset_inputs import data_inputs

    root, _ = data
    splits = pd.read_parquet(root / "split" / filenames.SPLITS)
    before = {context: d.digest for d, context in data_inputs(root / "ingest", root / "split")}
    # One test image relabelled: the test subset's digest changes, train's and val's do not.
    changed = tmp_path / "split"
    changed.mkdir()
    first_test = splits.index[splits.subset == "test"][0]
    splits.loc[first_test, "label"] = "melanoma" if splits.loc[first_test, "label"] != "melanoma" else "nevus"
    splits.to_parquet(changed / filenames.SPLITS, index=False)
    after = {context: d.digest for d, context in data_inputs(root / "ingest", changed)}
    assert [c for c in before if before[c] != after[c]] == ["test"]

"""The champion gate: the decision rules, and the real thing on an MLflow server
(register, aliases, re-scoring the champion on the same test split)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.core.tracking import pipeline_run
from components.registry.champion import (
    FINGERPRINT_TAG,
    PROMOTED_AT_TAG,
    SYNTHETIC_TAG,
    RegistryUnavailable,
    find_champion,
)
from components.registry.champion_gate import CHALLENGER, CHAMPION
from components.registry.register import log_gate
from components.registry.training_record import TrainingRecord, log_record
from components.scoring.inference import ModelLoadError, load_model
from tests.helpers.fault_proxy import FaultProxy
from tests.helpers.models import log_keras_model
from tests.helpers.registry import gate_config, promote


def _cfg(**kwargs):
    return gate_config(metric="balanced_accuracy", margin=0.02, **kwargs)


def _retrained(two_models: dict, which: str, tracking_uri: str) -> dict:
    """The same model logged again, as another run that trained it would: a new model URI."""
    model = two_models[which]
    run_id = pipeline_run(tracking_uri, "registry-test", "again", f"kfp-again-{time.time_ns()}")
    return {**model, "uri": log_keras_model(model["path"], 32, tracking_uri, run_id, two_models["classes"])}


def test_first_model_becomes_champion_a_worse_one_challenger(two_models, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    name = f"gate-test-{abs(hash(str(two_models['normalized']))) % 10**6}"
    cfg = _cfg(min_balanced_accuracy=0.1)
    good, bad = two_models["good"], two_models["bad"]
    assert good["metrics"]["balanced_accuracy"] > bad["metrics"]["balanced_accuracy"] + cfg.margin

    first = promote(mlflow_server, name, good["uri"], good["scored"], two_models["normalized"], cfg, "f" * 64)
    assert (first["alias"], first["version"], first["previous_champion"]) == (CHAMPION, "1", None)

    second = promote(mlflow_server, name, bad["uri"], bad["scored"], two_models["normalized"], cfg, "e" * 64)
    assert second["alias"] == CHALLENGER and second["version"] == "2"
    # The champion was re-scored on the same test split: the same numbers it got when evaluated.
    assert second["comparison"]["balanced_accuracy"]["champion"] == pytest.approx(good["metrics"]["balanced_accuracy"])
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    assert client.get_model_version_by_alias(name, CHAMPION).version == "1"
    assert client.get_model_version_by_alias(name, CHALLENGER).version == "2"
    # Every version carries its decision and the fingerprint of its training data.
    assert client.get_model_version(name, "2").tags["gate.alias"] == CHALLENGER
    assert client.get_model_version(name, "1").tags[FINGERPRINT_TAG] == "f" * 64

    # models:/<name>@champion is a model URI like any other.
    champion = load_model(f"models:/{name}@{CHAMPION}", mlflow_server)
    assert champion.classes == two_models["classes"] and champion.image_size == 32
    images = np.zeros((2, 32, 32, 3), np.uint8)
    np.testing.assert_allclose(champion.predict(images).sum(1), 1.0, atol=1e-5)

    # ... also for the CLI in a fresh process (no tracking URI set by earlier calls).
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "predict",
            "--model",
            f"models:/{name}@{CHAMPION}",
            "--tracking-uri",
            mlflow_server,
            str(image),
            "--out",
            str(tmp_path / "p.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "melanoma_probability" in (tmp_path / "p.csv").read_text().splitlines()[0]

    # The decision lands in the pipeline's run too.
    run_id = pipeline_run(mlflow_server, "registry-test", "gate", f"kfp-gate-{name}")
    log_gate(mlflow_server, run_id, second)
    run = client.get_run(run_id)
    assert run.data.tags["gate.alias"] == CHALLENGER and "than the champion" in run.data.tags["gate.reason"]
    assert "% interval [" in run.data.tags["gate.reason"] and "paired bootstrap" in run.data.tags["gate.reason"]
    assert run.data.metrics["gate_champion_balanced_accuracy"] == pytest.approx(good["metrics"]["balanced_accuracy"])
    assert run.data.metrics["gate_difference_ci_low"] <= run.data.metrics["gate_difference"] < 0


def test_bad_model_uris_are_one_line_errors(mlflow_server, tmp_path):
    with pytest.raises(ModelLoadError, match="cannot load model models:/no-such-model@champion"):
        load_model("models:/no-such-model@champion", mlflow_server)
    with pytest.raises(ModelLoadError, match="model not found"):
        load_model(str(tmp_path / "nothing.keras"))
    with pytest.raises(ModelLoadError, match="no model at"):
        load_model(str(tmp_path))


# ---- faults: a registry error never decides the champion ------------------------------------------

ALIAS_PATH = "/api/2.0/mlflow/registered-models/alias"


def _server_address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


@pytest.mark.parametrize("status", [403, 500])
def test_a_registry_error_while_looking_up_the_champion_fails_the_step(
    two_models, mlflow_server, status, quick_mlflow_failures
):
    """Was: any MlflowException meant "no champion yet", and a 0.35 model took @champion."""
    from mlflow.tracking import MlflowClient

    name = f"registry-fault-{status}-{abs(hash(str(two_models['normalized']))) % 10**6}"
    cfg = _cfg()
    good, bad = two_models["good"], two_models["bad"]
    promote(mlflow_server, name, good["uri"], good["scored"], two_models["normalized"], cfg, "f" * 64)
    with FaultProxy(
        _server_address(mlflow_server), "status", status=status, fail_after_requests=0, counting=f"GET {ALIAS_PATH}"
    ) as proxy:
        with pytest.raises(RegistryUnavailable, match=f"cannot look up {name}@champion in {proxy.url}"):
            promote(proxy.url, name, bad["uri"], bad["scored"], two_models["normalized"], cfg, "e" * 64)
        with pytest.raises(RegistryUnavailable):  # the retraining gate's lookup: the same policy
            find_champion(proxy.url, name)
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    assert client.get_model_version_by_alias(name, CHAMPION).version == "1"
    assert [v.version for v in client.search_model_versions(f"name='{name}'")] == ["1"]


def test_a_version_whose_alias_could_not_be_set_still_carries_its_decision_and_fingerprint(
    two_models, mlflow_server, quick_mlflow_failures
):
    from mlflow.tracking import MlflowClient

    name = f"alias-fault-{abs(hash(str(two_models['normalized']))) % 10**6}"
    good = two_models["good"]
    with FaultProxy(
        _server_address(mlflow_server), "status", status=500, fail_after_requests=0, counting=f"POST {ALIAS_PATH}"
    ) as proxy:
        with pytest.raises(RegistryUnavailable, match="registered with its decision and data fingerprint, but"):
            promote(proxy.url, name, good["uri"], good["scored"], two_models["normalized"], _cfg(), "d" * 64)
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    tags = client.get_model_version(name, "1").tags
    assert tags[FINGERPRINT_TAG] == "d" * 64 and tags["gate.alias"] == CHAMPION and "gate.reason" in tags


PROMOTE_IN_A_SUBPROCESS = """
import json, sys
from components.evaluation.evaluate import load_scored
from tests.helpers.registry import gate_config, promote
tracking_uri, name, uri, evaluation, normalized, fingerprint = sys.argv[1:]
gate = promote(tracking_uri, name, uri, load_scored(evaluation), normalized, gate_config(margin=-1.0), fingerprint)
print(json.dumps(gate))
"""


def test_two_runs_promoting_at_once_leave_the_better_model_champion(two_models, mlflow_server, tmp_path):
    """Was: both compared with v1 and both moved @champion; the worse one, whose alias
    write landed last, stayed champion. A margin of -1.0 makes each run's own gate say
    champion; the worse run's alias write is held 8 s by a slow proxy."""
    from mlflow.tracking import MlflowClient

    name = f"concurrent-{abs(hash(str(two_models['normalized']))) % 10**6}"
    cfg = gate_config(margin=-1.0)
    good, bad, normalized = two_models["good"], two_models["bad"], str(two_models["normalized"])
    promote(mlflow_server, name, bad["uri"], bad["scored"], normalized, cfg, "c" * 64)  # v1
    worse_uri = _retrained(two_models, "bad", mlflow_server)["uri"]  # the worse run's own upload of its model
    script = tmp_path / "promote.py"
    script.write_text(PROMOTE_IN_A_SUBPROCESS)
    root = Path(__file__).resolve().parents[2]
    with FaultProxy(_server_address(mlflow_server), delaying=f"POST {ALIAS_PATH}", delay_s=8.0) as slow:
        worse = subprocess.Popen(
            [sys.executable, str(script), slow.url, name, worse_uri, bad["evaluation"], normalized, "c" * 64],
            cwd=root,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
        deadline = time.time() + 120
        while not slow.delayed:  # the worse run has compared with v1 and is moving the alias
            assert worse.poll() is None and time.time() < deadline, "the worse run never reached its alias write"
            time.sleep(0.1)
        better = promote(mlflow_server, name, good["uri"], good["scored"], normalized, cfg, "c" * 64)
        out, _ = worse.communicate(timeout=120)
    assert worse.returncode == 0
    late = json.loads(out.splitlines()[-1])
    assert (late["previous_champion"], better["previous_champion"]) == ("version 1", "version 1")
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    assert client.get_model_version_by_alias(name, CHAMPION).version == better["version"]
    assert late["alias"] == CHALLENGER and "promoted at the same time as version" in late["reason"]
    assert client.get_model_version(name, late["version"]).tags["gate.alias"] == CHALLENGER


def _versions(client, name: str) -> list[str]:
    return sorted(v.version for v in client.search_model_versions(f"name='{name}'"))


def test_a_champion_rolled_back_by_hand_stays_rolled_back(two_models, mlflow_server):
    """Was: every version compared with the same champion on the same data counted as a
    concurrent rival, however far apart: after @champion was moved back by hand from v2
    to v1, the next run on v2's data (v3, compared with v1) handed @champion back to v2."""
    from mlflow.tracking import MlflowClient

    name = f"rollback-{abs(hash(str(two_models['normalized']))) % 10**6}"
    cfg = gate_config(margin=-1.0)  # each run's own gate says champion
    good, bad, normalized = two_models["good"], two_models["bad"], two_models["normalized"]
    promote(mlflow_server, name, bad["uri"], bad["scored"], normalized, cfg, "a" * 64)
    promote(mlflow_server, name, good["uri"], good["scored"], normalized, cfg, "b" * 64)
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    client.set_registered_model_alias(name, CHAMPION, "1")  # the rollback, with plain MLflow
    third = promote(
        mlflow_server,
        name,
        _retrained(two_models, "bad", mlflow_server)["uri"],
        bad["scored"],
        normalized,
        cfg,
        "b" * 64,
    )
    assert (third["version"], third["previous_champion"], third["alias"]) == ("3", "version 1", CHAMPION)
    assert client.get_model_version_by_alias(name, CHAMPION).version == "3"
    assert "promoted at the same time" not in third["reason"]


def test_a_version_left_without_its_alias_is_no_rival_and_its_retry_finishes_it(
    two_models, mlflow_server, quick_mlflow_failures
):
    """Was: a version whose alias write failed counted as a rival of every later run on
    the same data, and the next one's settling handed @champion to it; a retry of the
    failed step registered the model a second time."""
    from mlflow.tracking import MlflowClient

    name = f"orphan-{abs(hash(str(two_models['normalized']))) % 10**6}"
    cfg = gate_config(margin=-1.0)
    good, bad, normalized = two_models["good"], two_models["bad"], two_models["normalized"]
    with FaultProxy(
        _server_address(mlflow_server), "status", status=500, fail_after_requests=0, counting=f"POST {ALIAS_PATH}"
    ) as proxy:
        with pytest.raises(RegistryUnavailable, match="giving it an alias failed"):
            promote(proxy.url, name, good["uri"], good["scored"], normalized, cfg, "o" * 64)
    other = promote(mlflow_server, name, bad["uri"], bad["scored"], normalized, cfg, "o" * 64)
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    assert (other["version"], other["alias"]) == ("2", CHAMPION)
    assert client.get_model_version_by_alias(name, CHAMPION).version == "2"
    # KFP retries the failed step: it finishes version 1, compared with version 2.
    retry = promote(mlflow_server, name, good["uri"], good["scored"], normalized, cfg, "o" * 64)
    assert (retry["version"], retry["previous_champion"], retry["alias"]) == ("1", "version 2", CHAMPION)
    assert client.get_model_version_by_alias(name, CHAMPION).version == "1"
    assert _versions(client, name) == ["1", "2"]


def test_a_retried_registration_reuses_its_version_and_never_compares_a_model_with_itself(two_models, mlflow_server):
    """Was: a KFP retry after a late failure (say, logging the report) registered the
    model again as a new version, compared with the first one: with itself."""
    from mlflow.tracking import MlflowClient

    name = f"retry-{abs(hash(str(two_models['normalized']))) % 10**6}"
    good, bad, normalized = two_models["good"], two_models["bad"], two_models["normalized"]
    first = promote(mlflow_server, name, good["uri"], good["scored"], normalized, _cfg(), "f" * 64)
    second = promote(mlflow_server, name, bad["uri"], bad["scored"], normalized, _cfg(), "f" * 64)
    assert (first["alias"], second["alias"]) == (CHAMPION, CHALLENGER)
    for gate, model in ((second, bad), (first, good)):
        retry = promote(mlflow_server, name, model["uri"], model["scored"], normalized, _cfg(), "f" * 64)
        assert retry == gate
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    # A try that failed right after its alias write landed (no gate.promoted_at yet): finished, not re-compared.
    client.delete_model_version_tag(name, "1", PROMOTED_AT_TAG)
    again = promote(mlflow_server, name, good["uri"], good["scored"], normalized, _cfg(), "f" * 64)
    assert again == first
    assert PROMOTED_AT_TAG in client.get_model_version(name, "1").tags
    assert _versions(client, name) == ["1", "2"]
    assert client.get_model_version_by_alias(name, CHAMPION).version == "1"
    assert client.get_model_version_by_alias(name, CHALLENGER).version == "2"


# The champion's record is read first (listed, then downloaded), then its model: a fault in either fails the step.
DOWNLOADS = "GET /api/2.0/mlflow-artifacts/artifacts"
CHAMPION_DOWNLOADS = {
    "record": (DOWNLOADS, "cannot read training_record.json of its MLflow run"),
    "model": ("/models/m-", "cannot download model models:/{name}/1 now: "),  # a logged model's files
}


@pytest.mark.parametrize(
    "fault, what", [("timeout", "record"), ("500", "record"), ("403", "record"), ("timeout", "model"), ("500", "model")]
)
def test_a_champion_that_cannot_be_downloaded_now_fails_the_step(
    two_models, mlflow_server, quick_mlflow_failures, monkeypatch, fault, what
):
    """Was: any error while loading the champion (a timeout, a 500, a 403) made the new
    model a "not compared" challenger and the step succeeded, so KFP never retried it.
    Then (h27): a timeout while reading the champion's training record read as "it has
    no record" (MLflow reports every failed runs:/ download as RESOURCE_DOES_NOT_EXIST,
    and requests' timeouts are OSErrors): "DID NOT RAISE RegistryUnavailable". The
    timeout hits the artifact downloads alone (the registry answers)."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    name = f"download-fault-{fault}-{what}-{abs(hash(str(two_models['normalized']))) % 10**6}"
    good, bad, normalized = two_models["good"], two_models["bad"], two_models["normalized"]
    promote(mlflow_server, name, good["uri"], good["scored"], normalized, _cfg(), "f" * 64)
    requests, message = CHAMPION_DOWNLOADS[what]
    server = _server_address(mlflow_server)
    proxy = (
        FaultProxy(server, delaying=requests, delay_s=5.0)
        if fault == "timeout"
        else FaultProxy(server, "status", status=int(fault), fail_after_requests=0, counting=requests)
    )
    with proxy:
        with pytest.raises(RegistryUnavailable, match=f"cannot compare with the champion: {message.format(name=name)}"):
            promote(proxy.url, name, bad["uri"], bad["scored"], normalized, _cfg(), "e" * 64)
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    assert _versions(client, name) == ["1"]


@pytest.mark.parametrize(
    "with_record, why",
    [
        # A version registered by hand or before records: no fair comparison is possible, whatever it is;
        # the reason names the override, which promotes the new model on the floors alone.
        (False, "no record of the images the champion trained on (its MLflow run {run_id} has no training_record.json"),
        (True, "no model at"),  # what the gate finds once it has a record to compare on
    ],
)
def test_a_champion_that_is_not_a_model_leaves_the_new_one_a_challenger(
    two_models, mlflow_server, tmp_path, with_record, why
):
    """Only a champion that cannot be read (its record, then its model) makes a "not compared"
    challenger. The record is read first: it is a few KB against a model download, and
    without it the comparison cannot be fair whatever the champion is."""
    from mlflow.tracking import MlflowClient

    name = f"not-a-model-{with_record}-{abs(hash(str(two_models['normalized']))) % 10**6}"
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    run_id = pipeline_run(mlflow_server, "registry-test", "notes", f"kfp-notes-{name}")
    (tmp_path / "notes.txt").write_text("not a model")
    client.log_artifact(run_id, str(tmp_path / "notes.txt"), "notes")
    if with_record:
        log_record(mlflow_server, run_id, TrainingRecord.of(two_models["normalized"]))
    client.create_registered_model(name)
    version = client.create_model_version(name, f"{client.get_run(run_id).info.artifact_uri}/notes", run_id=run_id)
    # Trained, as the new model, on the synthetic tiny set: an untagged version reads as real (never replaced).
    client.set_model_version_tag(name, version.version, SYNTHETIC_TAG, "true")
    client.set_registered_model_alias(name, CHAMPION, version.version)
    good = two_models["good"]
    gate = promote(mlflow_server, name, good["uri"], good["scored"], two_models["normalized"], _cfg(), "f" * 64)
    assert gate["alias"] == CHALLENGER
    assert f"not compared with the current champion: {why.format(run_id=run_id)}" in gate["reason"]

"""Contract tests of `lesionpipe submit` and `lesionpipe schedule` against a stub of the
KFP v2beta1 REST API on 127.0.0.1 (tests/kfp_stub.py): they assert the exact requests
the real kfp.Client sends: pipeline spec, parameters, experiment, cron, concurrency,
catch-up, auth header."""

import json

import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import RunConfig
from pipeline.kfp_client import version_name
from pipeline.kfp_schedules import validate_cron
from tests.helpers.kfp_stub import API, KfpStub

CONFIG = "configs/cluster.yaml"


@pytest.fixture
def stub(monkeypatch, tmp_path):
    # kfp.Client reads ~/.config/kfp/context.json and these variables: keep the machine's out.
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in (
        "KF_PIPELINES_ENDPOINT",
        "KF_PIPELINES_UI_ENDPOINT",
        "KF_PIPELINES_TOKEN",
        "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
        "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME",
        "KUBERNETES_SERVICE_HOST",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-service-account-token"))
    stub = KfpStub()
    server = stub.serve()
    yield stub
    server.shutdown()


def lesionpipe(*args: str):
    result = CliRunner().invoke(main, list(args))
    return result


def compiled_package(tmp_path, *overrides: str):
    """The file `lesionpipe compile` writes."""
    path = tmp_path / "compiled.yaml"
    result = lesionpipe("compile", "--config", CONFIG, *sum((["--set", o] for o in overrides), []), "-o", str(path))
    assert result.exit_code == 0, result.output
    return path


def compiled(tmp_path, *overrides: str) -> dict:
    """What `lesionpipe compile` writes, as kfp.Client sends it: {pipeline_spec, platform_spec}."""
    spec, platform = yaml.safe_load_all(compiled_package(tmp_path, *overrides).read_text())
    return {"pipeline_spec": spec, "platform_spec": platform}


def expected_parameters(ui: str, force_retrain: bool = False) -> dict:
    """The config's values, and the KFP UI that the MLflow run's description links the run to."""
    cfg = RunConfig.load(CONFIG)
    return {
        "data_uri": cfg.data.source,
        "tracking_uri": "http://mlflow.lesion-pipeline.svc.cluster.local:5000",
        "force_retrain": force_retrain,
        "kfp_ui_url": ui,
    }


def caching_of(pipeline_spec: dict) -> dict[str, bool]:
    """task name -> enableCache, over every DAG of the spec."""
    dags = [pipeline_spec["root"]["dag"]] + [c["dag"] for c in pipeline_spec["components"].values() if "dag" in c]
    return {
        name: task.get("cachingOptions", {}).get("enableCache", False)
        for dag in dags
        for name, task in dag["tasks"].items()
        if "cachingOptions" in task
    }


def test_submit_creates_the_experiment_and_starts_a_run_with_the_configs_parameters(stub, tmp_path):
    result = lesionpipe(
        "submit", "--host", stub.url, "--config", CONFIG, "--experiment", "lesion-weekly", "--token", "secret-token"
    )
    assert result.exit_code == 0, result.output
    package = compiled_package(tmp_path)
    version = version_name(str(package))
    assert (
        result.stdout.strip()
        == f"run run-1 of lesion-pipeline version {version} started: {stub.url}/#/runs/details/run-1"
    )
    assert stub.calls() == [
        ("GET", f"{API}/healthz"),
        ("GET", f"{API}/experiments"),
        ("POST", f"{API}/experiments"),
        ("GET", f"{API}/pipelines"),
        ("POST", f"{API}/pipelines/upload"),
        ("GET", f"{API}/pipelines/pl-1/versions"),
        ("POST", f"{API}/pipelines/upload_version"),
        ("POST", f"{API}/runs"),
    ]
    assert stub.only("POST", f"{API}/pipelines/upload").query["name"] == "lesion-pipeline"
    upload = stub.only("POST", f"{API}/pipelines/upload_version")
    assert upload.query == {"name": version, "pipelineid": "pl-1"}
    assert upload.body["uploadfile"] == package.read_text()  # the compiled pipeline, byte for byte
    assert all(r.headers["authorization"] == "Bearer secret-token" for r in stub.requests)
    lookup = stub.only("GET", f"{API}/experiments")
    assert json.loads(lookup.query["filter"])["predicates"] == [
        {"operation": 1, "key": "display_name", "stringValue": "lesion-weekly"}
    ]  # 1: EQUALS
    assert stub.only("POST", f"{API}/experiments").body == {"display_name": "lesion-weekly", "namespace": ""}

    run = stub.only("POST", f"{API}/runs").body
    assert run["experiment_id"] == "exp-1"
    assert run["display_name"] == "lesion-pipeline-cluster"
    assert run["service_account"] == "lesion-pipeline-runner"  # the one manifests/ binds to its Role
    assert run["runtime_config"] == {"parameters": expected_parameters(stub.url)}
    # The run references the uploaded version; it carries no spec of its own (was: the whole package).
    assert run["pipeline_version_reference"] == {"pipeline_id": "pl-1", "pipeline_version_id": "pv-2"}
    assert "pipeline_spec" not in run

    # The same package again is the same version: looked up, not uploaded.
    stub.requests.clear()
    again = lesionpipe("submit", "--host", stub.url, "--config", CONFIG, "--experiment", "lesion-weekly")
    assert again.exit_code == 0, again.output
    assert ("POST", f"{API}/pipelines/upload_version") not in stub.calls()
    assert stub.only("POST", f"{API}/runs").body["pipeline_version_reference"]["pipeline_version_id"] == "pv-2"
    assert len(stub.versions) == 2  # KFP's first version of a new pipeline, and ours


def test_submit_reuses_the_experiment_in_the_namespace_and_switches_caching_off_for_the_run(stub, tmp_path):
    stub.experiments.append({"experiment_id": "exp-7", "display_name": "lesion-ham10000", "namespace": "team-derm"})
    result = lesionpipe(
        "submit", "--host", stub.url, "--config", CONFIG, "--namespace", "team-derm", "--no-cache", "--force-retrain"
    )
    assert result.exit_code == 0, result.output
    assert ("POST", f"{API}/experiments") not in stub.calls()  # default experiment: the config's mlflow.experiment
    assert stub.only("GET", f"{API}/experiments").query["namespace"] == "team-derm"
    assert "authorization" not in stub.requests[0].headers
    run = stub.only("POST", f"{API}/runs").body
    assert run["experiment_id"] == "exp-7"
    assert run["runtime_config"]["parameters"]["force_retrain"] is True
    # Every task, those inside the If branch and the ParallelFor included.
    # --no-cache is compiled in: the uploaded version is another package, another version.
    (version,) = [
        v for v in stub.versions if v["pipeline_version_id"] == run["pipeline_version_reference"]["pipeline_version_id"]
    ]
    sent = caching_of(yaml.safe_load_all(stub.packages[version["pipeline_version_id"]]).__next__())
    assert set(sent) >= {
        "ingest-partition-step",
        "ingest-merge-step",
        "split-step",
        "train-step",
        "normalize-shard-step",
    }
    assert not any(sent.values())
    # Without --no-cache the compiled per-step choice stands: deterministic steps cached, not train.
    default = caching_of(compiled(tmp_path)["pipeline_spec"])
    assert (
        default["ingest-partition-step"]
        and default["ingest-merge-step"]
        and default["split-step"]
        and not default["train-step"]
    )


def test_schedule_creates_one_recurring_run_at_a_time_without_catch_up(stub, tmp_path):
    result = lesionpipe("schedule", "--host", stub.url, "--config", CONFIG, "--cron", "0  0 3 * * 0")
    assert result.exit_code == 0, result.output
    version = version_name(str(compiled_package(tmp_path)))
    assert result.stdout.strip() == (
        f"schedule rr-1 (lesion-pipeline-cluster-retrain) created, cron '0 0 3 * * 0', version {version}: "
        f"{stub.url}/#/recurringrun/details/rr-1"
    )
    assert stub.calls() == [
        ("GET", f"{API}/healthz"),
        ("GET", f"{API}/experiments"),
        ("POST", f"{API}/experiments"),
        ("GET", f"{API}/recurringruns"),
        ("GET", f"{API}/pipelines"),
        ("POST", f"{API}/pipelines/upload"),
        ("GET", f"{API}/pipelines/pl-1/versions"),
        ("POST", f"{API}/pipelines/upload_version"),
        ("POST", f"{API}/recurringruns"),
    ]
    assert stub.only("GET", f"{API}/recurringruns").query["experiment_id"] == "exp-1"
    body = stub.only("POST", f"{API}/recurringruns").body
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 0"}}
    assert int(body["max_concurrency"]) == 1
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["experiment_id"] == "exp-1"
    assert body["display_name"] == "lesion-pipeline-cluster-retrain"
    assert body["service_account"] == "lesion-pipeline-runner"
    assert body["runtime_config"] == {"parameters": expected_parameters(stub.url, force_retrain=False)}
    # Was: the schedule's own copy of the package ("pipeline_spec"), run for ever after an upgrade.
    assert body["pipeline_version_reference"] == {"pipeline_id": "pl-1", "pipeline_version_id": "pv-2"}
    assert "pipeline_spec" not in body

    again = lesionpipe("schedule", "--host", stub.url, "--config", CONFIG, "--cron", "0 0 3 * * 0")
    assert again.exit_code == 1 and "already exists (rr-1)" in again.output
    assert len(stub.recurring_runs) == 1


def test_schedule_update_moves_the_schedule_to_the_current_version_and_list_shows_it(stub, tmp_path):
    created = lesionpipe("schedule", "--host", stub.url, "--config", CONFIG, "--cron", "0 0 3 * * 0")
    assert created.exit_code == 0, created.output
    lesionpipe("schedule", "pause", "rr-1", "--host", stub.url)
    old, new = (
        version_name(str(compiled_package(tmp_path))),
        version_name(str(compiled_package(tmp_path, "train.epochs=3"))),
    )
    stub.requests.clear()
    moved = lesionpipe("schedule", "--update", "--host", stub.url, "--config", CONFIG, "--set", "train.epochs=3")
    assert moved.exit_code == 0, moved.output
    assert moved.stdout.strip() == (
        f"schedule rr-2 (lesion-pipeline-cluster-retrain) moved from {old} to version {new}: "
        f"{stub.url}/#/recurringrun/details/rr-2"
    )
    assert stub.calls() == [
        ("GET", f"{API}/healthz"),
        ("GET", f"{API}/experiments"),
        ("GET", f"{API}/recurringruns"),
        ("GET", f"{API}/pipelines/pl-1/versions/pv-2"),
        ("GET", f"{API}/pipelines"),
        ("GET", f"{API}/pipelines/pl-1/versions"),
        ("POST", f"{API}/pipelines/upload_version"),
        ("POST", f"{API}/recurringruns"),
        ("DELETE", f"{API}/recurringruns/rr-1"),
    ]
    body = stub.only("POST", f"{API}/recurringruns").body
    assert body["pipeline_version_reference"] == {"pipeline_id": "pl-1", "pipeline_version_id": "pv-3"}
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 0"}}  # the old schedule's cron
    assert body["mode"] == "DISABLE"  # paused stays paused
    assert body["display_name"] == "lesion-pipeline-cluster-retrain"

    listed = lesionpipe("schedule", "list", "--host", stub.url)
    assert listed.stdout.split() == [
        "rr-2",
        "DISABLED",
        "'0",
        "0",
        "3",
        "*",
        "*",
        "0'",
        new,
        "lesion-pipeline-cluster-retrain",
    ]

    same = lesionpipe("schedule", "--update", "--host", stub.url, "--config", CONFIG, "--set", "train.epochs=3")
    assert "already on version" in same.stdout and len(stub.recurring_runs) == 1


def test_schedule_list_pause_resume_delete(stub):
    stub.recurring_runs.append(
        {
            "recurring_run_id": "rr-9",
            "display_name": "weekly",
            "status": "ENABLED",
            "trigger": {"cron_schedule": {"cron": "0 0 3 * * 0"}},
        }
    )
    listed = lesionpipe("schedule", "list", "--host", stub.url)
    assert listed.exit_code == 0, listed.output
    assert listed.output.split() == ["rr-9", "ENABLED", "'0", "0", "3", "*", "*", "0'", "(own", "package)", "weekly"]

    for verb, call in [
        ("pause", ("POST", f"{API}/recurringruns/rr-9:disable")),
        ("resume", ("POST", f"{API}/recurringruns/rr-9:enable")),
        ("delete", ("DELETE", f"{API}/recurringruns/rr-9")),
    ]:
        result = lesionpipe("schedule", verb, "rr-9", "--host", stub.url)
        assert result.exit_code == 0, result.output
        assert result.output.strip() == f"schedule rr-9: {verb}d"
        assert stub.calls()[-1] == call
    assert stub.recurring_runs == []
    gone = lesionpipe("schedule", "delete", "rr-9", "--host", stub.url)
    assert gone.exit_code == 1
    assert gone.output.startswith(f"Error: Kubeflow Pipelines at {stub.url} answered 404")


def test_endpoint_and_service_account_token_from_the_environment(stub, tmp_path, monkeypatch):
    token = tmp_path / "sa-token"
    token.write_text("projected-sa-token")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", stub.url)
    result = lesionpipe("schedule", "list")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "no schedules"
    assert [r.headers.get("authorization") for r in stub.requests] == ["Bearer projected-sa-token"] * 2


@pytest.mark.parametrize(
    "cron, complaint",
    [
        ("0 3 * * 0", "has 5 fields; KFP needs 6, seconds first"),
        ("0 0 3 * * 0 2027", "has 7 fields"),
        ("0 0 24 * * 0", "bad hour field '24'"),
        ("0 0 3 * * 7", "bad day of week field '7'"),
        ("0 */0 3 * * 0", "bad minute field '*/0'"),
        ("0 0 3 * JANUARY 0", "bad month field 'JANUARY'"),
    ],
)
def test_bad_cron_is_one_line_and_nothing_is_sent(stub, cron, complaint):
    result = lesionpipe("schedule", "--host", stub.url, "--config", CONFIG, "--cron", cron)
    assert result.exit_code == 1
    assert result.output.startswith("Error: cron") and complaint in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert stub.requests == []


@pytest.mark.parametrize("cron", ["0 0 3 * * 0", "0 */15 8-18 ? * MON-FRI", "30 0 0 1,15 JAN-JUN *"])
def test_valid_crons_pass(cron):
    assert validate_cron(cron) == cron


def test_unreachable_host_is_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    result = lesionpipe("submit", "--host", "http://127.0.0.1:9", "--config", CONFIG)
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot reach Kubeflow Pipelines at http://127.0.0.1:9")
    assert len(result.output.strip().splitlines()) == 1


def test_submit_refuses_a_config_that_would_lose_its_results(stub):
    result = lesionpipe("submit", "--host", stub.url, "--set", "cluster.pipeline_root=gs://b/root")
    assert result.exit_code == 1 and "mlflow.tracking_uri must be the tracking server's http(s) URL" in result.output
    result = lesionpipe("submit", "--host", stub.url, "--set", "mlflow.tracking_uri=http://mlflow:5000")
    assert result.exit_code == 1 and "cluster.pipeline_root is not set" in result.output
    assert stub.requests == []

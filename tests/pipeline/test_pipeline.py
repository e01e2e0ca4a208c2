"""`lesionpipe compile`: the KFP IR YAML a cluster runs, checked task by task against the
config (resources, GPU, secrets, retries, caching, images, fan-out, pipeline root)."""

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from kfp import components

from pipeline.cli import main
from pipeline.config import RunConfig
from pipeline.steps import STEPS

CONFIG = "configs/cluster.yaml"
# Executor name -> the step (config key) it runs; the skipped branch has its own report executor.
EXECUTORS = {f"exec-{step.replace('_', '-')}-step": step for step in STEPS} | {"exec-report-step-2": "report"}


def compile_yaml(tmp_path, *overrides: str, says: str = "") -> tuple[dict, dict, str]:
    """The compiled spec, its Kubernetes executors and the file; ``says``: a line compile must print."""
    out = tmp_path / "pipeline.yaml"
    result = CliRunner().invoke(
        main, ["compile", "--config", CONFIG, *sum((["--set", o] for o in overrides), []), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert says in result.output
    spec, platform = yaml.safe_load_all(out.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"], str(out)


def all_tasks(spec: dict) -> dict[str, dict]:
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    return {name: task for dag in dags for name, task in dag["tasks"].items() if name.endswith(("-step", "-step-2"))}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return compile_yaml(tmp_path_factory.mktemp("compile"))


def test_loads_back_as_a_component(compiled):
    _, _, path = compiled
    loaded = components.load_component_from_file(path)
    assert loaded.name == "lesion-pipeline"
    assert set(loaded.component_spec.inputs) == {
        "data_uri",
        "tracking_uri",
        "force_retrain",
        "checkpoint_root",
        "kfp_ui_url",
        "local_run_dir",
    }


def test_every_task_has_the_configs_requests_and_limits_and_image(compiled):
    spec, _, _ = compiled
    cfg = RunConfig.load(CONFIG)
    executors = spec["deploymentSpec"]["executors"]
    assert set(executors) == set(EXECUTORS)
    for name, step in EXECUTORS.items():
        container = executors[name]["container"]
        want = getattr(cfg.cluster.resources, step)
        assert {
            k: container["resources"][k]
            for k in ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit")
        } == {
            "resourceCpuRequest": want.cpu_request,
            "resourceCpuLimit": want.cpu_limit,
            "resourceMemoryRequest": want.memory_request,
            "resourceMemoryLimit": want.memory_limit,
        }, name
        assert container["image"] == (cfg.images.gpu if step == "train" else cfg.images.cpu)
        assert ("accelerator" in container["resources"]) == (step == "train")
    assert executors["exec-train-step"]["container"]["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert executors["exec-train-step"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"


@pytest.fixture(scope="module")
def compiled_with_key_file(tmp_path_factory):
    """The path without Workload Identity: a service-account key from a secret."""
    return compile_yaml(tmp_path_factory.mktemp("compile_key"), "cluster.secrets.gcs=gcs-credentials")


def test_train_tolerates_and_selects_gpu_nodes_and_credentials_come_from_secrets(compiled, compiled_with_key_file):
    spec, k8s, _ = compiled
    train = k8s["exec-train-step"]
    assert train["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert train["nodeSelector"] == {"labels": {"cloud.google.com/gke-accelerator": "nvidia-l4"}}
    others = [k8s.get(e, {}) for e in EXECUTORS if e != "exec-train-step"]
    assert not any("tolerations" in e or "nodeSelector" in e for e in others)
    # The default is Workload Identity: no pod waits on a key secret that such a setup never creates.
    assert RunConfig.load(CONFIG).cluster.secrets.gcs == RunConfig().cluster.secrets.gcs == ""
    key_spec, key_k8s, _ = compiled_with_key_file
    for name, step in EXECUTORS.items():
        container = spec["deploymentSpec"]["executors"][name]["container"]
        assert "secretAsVolume" not in k8s.get(name, {}) and "env" not in container
        assert [(v["secretName"], v["mountPath"]) for v in key_k8s[name]["secretAsVolume"]] == [
            ("gcs-credentials", "/var/secrets/gcs")
        ]
        env = key_spec["deploymentSpec"]["executors"][name]["container"]["env"]
        assert env == [{"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/secrets/gcs/key.json"}]
        mlflow_env = [
            (s["secretName"], {k["secretKey"]: k["envVar"] for k in s["keyToEnv"]})
            for s in k8s.get(name, {}).get("secretAsEnv", [])
        ]
        assert mlflow_env == (
            [("mlflow-client", {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"})]
            if STEPS[step].mlflow
            else []
        ), name


def test_transient_failures_retried_on_network_steps_caching_on_deterministic_steps(compiled):
    """No KFP retry policy anywhere (Argo would retry a user's mistake too); a network step's
    command runs its executor again only after exit 75, with the config's backoff."""
    spec, _, _ = compiled
    tasks = all_tasks(spec)
    assert set(tasks) == {n.removeprefix("exec-") for n in EXECUTORS}
    executors = spec["deploymentSpec"]["executors"]
    for name, task in tasks.items():
        policy = STEPS[EXECUTORS[f"exec-{name}"]]
        assert "retryPolicy" not in task, name
        script = executors[f"exec-{name}"]["container"]["command"][2]
        assert ('if [ "$status" -ne 75 ] || [ "$attempt" -ge 3 ]' in script) == policy.network, name
        assert ("delay=30\n" in script) == policy.network, name
        assert task["cachingOptions"].get("enableCache", False) == policy.cacheable, name
    assert not STEPS["retrain_gate"].cacheable and not STEPS["train"].cacheable


def test_the_exit_handler_ends_the_mlflow_run_after_every_other_task(compiled):
    spec, _, _ = compiled
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "finish-run-step"}
    finish = root["finish-run-step"]
    assert finish["triggerPolicy"] == {"strategy": "ALL_UPSTREAM_TASKS_COMPLETED"}
    assert finish["dependentTasks"] == ["exit-handler-1"]
    inputs = finish["inputs"]["parameters"]
    assert inputs["status"] == {"taskFinalStatus": {"producerTask": "exit-handler-1"}}
    assert inputs["kfp_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert inputs["kfp_run_name"]["runtimeValue"]["constant"] == "{{$.pipeline_job_name}}"
    assert inputs["tracking_uri"] == {"componentInputParameter": "tracking_uri"}
    assert inputs["experiment"]["runtimeValue"]["constant"] == RunConfig.load(CONFIG).mlflow.experiment
    # Every other task is inside the exit handler's group.
    body = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert {"list-source-step", "retrain-gate-step", "ingest-merge-step"} <= set(body)


def test_gate_fan_out_and_pipeline_root(compiled):
    spec, _, _ = compiled
    assert spec["defaultPipelineRoot"] == "gs://BUCKET_NAME/pipeline-root"
    body = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    ingest_loop = body["for-loop-3"]
    # data.ingest_partitions: 4 in cluster.yaml
    assert ingest_loop["parameterIterator"]["items"]["raw"] == "[0, 1, 2, 3]"
    merge = body["ingest-merge-step"]
    assert merge["inputs"]["artifacts"]["partitions"]["taskOutputArtifact"]["producerTask"] == "for-loop-3"
    loop = spec["components"]["comp-condition-7"]["dag"]["tasks"]["for-loop-6"]
    assert loop["parameterIterator"]["items"]["raw"] == "[0, 1, 2, 3]"  # data.num_shards: 4 in cluster.yaml
    gather = spec["components"]["comp-condition-7"]["dag"]["tasks"]["normalize-gather-step"]
    assert gather["inputs"]["artifacts"]["shards"]["taskOutputArtifact"]["producerTask"] == "for-loop-6"
    branches = spec["components"]["comp-condition-branches-4"]["dag"]["tasks"]
    assert (
        branches["condition-7"]["triggerPolicy"]["condition"]
        == "inputs.parameter_values['pipelinechannel--retrain-gate-step-decision'] == 'train'"
    )
    assert (
        branches["condition-8"]["triggerPolicy"]["condition"]
        == "!(inputs.parameter_values['pipelinechannel--retrain-gate-step-decision'] == 'train')"
    )


def test_config_switches_change_the_spec(tmp_path):
    spec, k8s, _ = compile_yaml(
        tmp_path,
        "cluster.caching=false",
        "cluster.gpu.count=0",
        "cluster.retries=0",
        "cluster.secrets.gcs=",
        "images.cpu=registry.example/lesion:9",
        "cluster.resources.train.memory_limit=64Gi",
    )
    assert not any(t["cachingOptions"].get("enableCache") for t in all_tasks(spec).values())
    assert not any("attempt=0" in e["container"]["command"][2] for e in spec["deploymentSpec"]["executors"].values())
    train = spec["deploymentSpec"]["executors"]["exec-train-step"]["container"]
    assert "accelerator" not in train["resources"] and train["resources"]["resourceMemoryLimit"] == "64Gi"
    assert "tolerations" not in k8s["exec-train-step"]
    assert not any("secretAsVolume" in e for e in k8s.values())
    assert (
        spec["deploymentSpec"]["executors"]["exec-ingest-partition-step"]["container"]["image"]
        == "registry.example/lesion:9"
    )


def test_resources_config_covers_every_step():
    assert set(type(RunConfig().cluster.resources).model_fields) == set(STEPS)


def test_secrets_the_pipeline_reads_are_the_ones_manifests_ship(compiled_with_key_file):
    """The pipeline and manifests/ are written apart: a renamed secret or key must fail here, not in a pod."""
    _, k8s, _ = compiled_with_key_file
    shipped = {}
    for template in Path("manifests/secrets").glob("*.example.yaml"):
        doc = yaml.safe_load(template.read_text())
        shipped[doc["metadata"]["name"]] = set(doc["stringData"])
    for executor in k8s.values():
        for secret in executor.get("secretAsEnv", []):
            assert {k["secretKey"] for k in secret["keyToEnv"]} <= shipped[secret["secretName"]]
        for secret in executor.get("secretAsVolume", []):
            assert secret["secretName"] in shipped
    assert "key.json" in shipped["gcs-credentials"]


DATA_TASKS = (
    "list-source-step",
    "ingest-partition-step",
    "ingest-merge-step",
    "split-step",
    "normalize-shard-step",
    "normalize-gather-step",
)


def data_task_specs(spec: dict, names: tuple[str, ...] = DATA_TASKS) -> dict[str, tuple]:
    """Each data task (or each of ``names``) as KFP sees it: its DAG entry (inputs:
    constants and upstream outputs), its component's interface and its executor (image,
    command, code)."""
    out = {}
    for dag in [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]:
        for name, task in dag["tasks"].items():
            if name in names:
                component = spec["components"][task["componentRef"]["name"]]
                out[name] = (task, component, spec["deploymentSpec"]["executors"][component["executorLabel"]])
    return out


def test_train_and_evaluate_settings_never_reach_the_data_tasks(tmp_path):
    """KFP's cache key covers a task's spec and resolved inputs: a new train.* or
    evaluate.* value must leave the data tasks byte for byte as they were, so that a
    retraining with other training settings reuses ingest, split and normalize."""
    spec, _, _ = compile_yaml(tmp_path)
    changed, _, _ = compile_yaml(
        tmp_path,
        "train.epochs=99",
        "train.model=mobilenet_v2",
        "train.learning_rate=0.5",
        "evaluate.tta=true",
        "champion_gate.margin=0.2",
        "augment.max_factor=2",
        "mlflow.model_name=another",
    )
    before, after = data_task_specs(spec), data_task_specs(changed)
    assert sorted(before) == sorted(DATA_TASKS)
    for name in DATA_TASKS:
        assert yaml.safe_dump(before[name]) == yaml.safe_dump(after[name]), name
    # Their inputs are the data section and upstream outputs only; no pipeline parameter
    # (those carry only the data URI, the tracking URI and force_retrain).
    ingest = before["ingest-partition-step"][0]["inputs"]["parameters"]
    assert set(ingest) == {"data_uri", "data", "partition_index", "source_listing"}
    assert set(before["ingest-merge-step"][0]["inputs"]["parameters"]) == {"data"}
    assert ingest["data"]["runtimeValue"]["constant"] == RunConfig.load(CONFIG).data.to_dict()
    # ... while the train task does see the change.
    train = [
        t
        for c in changed["components"].values()
        if "dag" in c
        for n, t in c["dag"]["tasks"].items()
        if n == "train-step"
    ][0]
    assert train["inputs"]["parameters"]["train"]["runtimeValue"]["constant"]["epochs"] == 99


@pytest.mark.parametrize(
    "overrides, unchanged_tasks",
    [
        # Settings only evaluate reads (and data.seed, which augment read): train and augment keep their keys.
        (
            ("evaluate.tta=true", "evaluate.bootstrap_resamples=200", "evaluate.worst_images=3", "data.seed=7"),
            ("train-step", "augment-step"),
        ),
        # Settings only train and augment read: evaluate keeps its key.
        (("train.epochs=99", "train.seed=5", "augment.seed=9", "augment.max_factor=2"), ("evaluate-step",)),
    ],
)
def test_a_steps_cache_key_changes_only_with_its_own_section(tmp_path, overrides, unchanged_tasks):
    """KFP's cache key covers a task's spec and inputs: a setting one step reads must not
    reach another's (the train step read melanoma_class from the evaluate section, augment
    the data section's seed)."""
    spec, _, _ = compile_yaml(tmp_path)
    changed, _, _ = compile_yaml(tmp_path, *overrides)
    before, after = data_task_specs(spec, unchanged_tasks), data_task_specs(changed, unchanged_tasks)
    assert sorted(before) == sorted(unchanged_tasks)
    for name in unchanged_tasks:
        assert yaml.safe_dump(before[name]) == yaml.safe_dump(after[name]), name
    # The run's melanoma_class reaches both, inside their own sections.
    shared, _, _ = compile_yaml(tmp_path, "melanoma_class=mel")
    for name, section in (("train-step", "train"), ("evaluate-step", "evaluate")):
        task = data_task_specs(shared, (name,))[name][0]
        assert task["inputs"]["parameters"][section]["runtimeValue"]["constant"]["melanoma_class"] == "mel"
        assert "melanoma_class" not in task["inputs"]["parameters"]


def test_the_champion_gate_settings_reach_register_alone(tmp_path):
    """Was (issue 33): the gate's settings were evaluate.champion_*, in the section the
    evaluate task receives, so a new margin changed evaluate's cache key and re-ran it.
    Now champion_gate.* (or the deprecated evaluate.champion_margin, moved there with one
    line) leaves the evaluate task byte for byte as it was, and only register's input changes."""
    tasks = ("evaluate-step", "register-step")
    before = data_task_specs(compile_yaml(tmp_path)[0], tasks)
    for override, margin, says in (
        ("champion_gate.margin=0.2", 0.2, ""),
        (
            "evaluate.champion_margin=0.3",
            0.3,
            "config key evaluate.champion_margin is now champion_gate.margin; the old name will stop working",
        ),
    ):
        after = data_task_specs(
            compile_yaml(tmp_path, override, "champion_gate.min_test_images=7", says=says)[0], tasks
        )
        assert yaml.safe_dump(before["evaluate-step"]) == yaml.safe_dump(after["evaluate-step"]), override
        assert "champion_margin" not in yaml.safe_dump(after["evaluate-step"])
        gate = after["register-step"][0]["inputs"]["parameters"]["champion_gate"]["runtimeValue"]["constant"]
        assert (gate["margin"], gate["min_test_images"]) == (margin, 7)
        assert yaml.safe_dump(before["register-step"]) != yaml.safe_dump(after["register-step"])


def test_the_kind_config_is_ready_for_a_cluster_without_google_cloud_or_gpu(tmp_path):
    from pipeline.kfp_client import check_ready_for_cluster

    check_ready_for_cluster(RunConfig.load("configs/kind.yaml"))
    out = tmp_path / "kind.yaml"
    result = CliRunner().invoke(main, ["compile", "--config", "configs/kind.yaml", "-o", str(out)])
    assert result.exit_code == 0, result.output
    spec, platform = yaml.safe_load_all(out.read_text())
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert "accelerator" not in spec["deploymentSpec"]["executors"]["exec-train-step"]["container"]["resources"]
    assert not any({"tolerations", "nodeSelector", "secretAsVolume"} & set(e) for e in k8s.values())
    assert spec["defaultPipelineRoot"].startswith("minio://")

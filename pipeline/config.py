"""The one run configuration: the steps' own sections (components.core.settings) plus how the
pipeline runs on a cluster; loaded from YAML, overridable with ``--set section.key=value``
and logged to MLflow as flat params. Each step receives only its own section."""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, create_model, model_validator

from components.core.config_base import (
    ConfigError,
    Section,
    flat_params,
    load_section,
    parse_override,
    read_yaml_mapping,
    resolve_relative_paths,
    unknown_key_message,
)
from components.core.settings import (
    AugmentConfig,
    ChampionGateConfig,
    DataConfig,
    EvaluateConfig,
    MlflowConfig,
    TrainConfig,
)
from pipeline.steps import STEPS, StepResources


class ImagesConfig(Section):
    # The components' base_image: every step but training, and training (CUDA).
    cpu: str = "ghcr.io/lesion-pipeline/lesion-pipeline:0.1.0"
    gpu: str = "ghcr.io/lesion-pipeline/lesion-pipeline-gpu:0.1.0"  # see cpu
    # The tracking server `lesionpipe run --runner container` starts (docker/Dockerfile.mlflow).
    mlflow: str = "ghcr.io/lesion-pipeline/lesion-mlflow:0.1.0"


# BaseModel's metaclass (ABCMeta) has a register() classmethod; a field of that name only
# hides it on this class, which never registers virtual subclasses.
warnings.filterwarnings("ignore", message='Field name "register" in "ResourcesConfig" shadows', category=UserWarning)

# Per step (pipeline.steps.STEPS, whose resources are the defaults); the local runner ignores them.
ResourcesConfig = create_model(
    "ResourcesConfig",
    __base__=Section,
    __doc__="Per step; the local runner ignores them. Sized for HAM10000-scale data at 128 px.",
    **{name: (StepResources, Field(default_factory=step.resources.model_copy)) for name, step in STEPS.items()},
)


class TolerationConfig(Section):
    # GKE taints GPU nodes with nvidia.com/gpu=present:NoSchedule.
    key: str = "nvidia.com/gpu"
    operator: Literal["Exists", "Equal"] = "Exists"  # see key
    value: str = ""  # see key
    effect: str = "NoSchedule"  # see key


# The GPU type training asks for, as GKE labels its GPU nodes; the GKE overlay's TFJob
# selects the same (manifests/overlays/gke/tfjob-gpu-node-pool.yaml, tests/deploy/test_manifests.py).
GKE_ACCELERATOR = "nvidia-l4"


class GpuConfig(Section):
    """The train task's accelerator; count 0 trains on CPU (no toleration, no node selector)."""

    accelerator_type: str = "nvidia.com/gpu"  # the resource name the GPU device plugin offers
    count: int = Field(1, ge=0)  # GPUs for the train pod (0: train on CPU)
    # Node labels the train pod must match: the node pool with the GPU type you have
    # (GKE: cloud.google.com/gke-accelerator: nvidia-l4, nvidia-tesla-t4, ...; {}: any GPU node).
    node_selector: dict[str, str] = Field(default_factory=lambda: {"cloud.google.com/gke-accelerator": GKE_ACCELERATOR})
    toleration: TolerationConfig = Field(default_factory=TolerationConfig)


class SecretsConfig(Section):
    """Names of Kubernetes secrets (never their contents) that steps read credentials from."""

    # Keys `username` and `password` -> MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
    mlflow: str = "mlflow-client"
    # Empty (the default): no key; pods reach GCS as the runner's Workload Identity.
    # A secret's name (gcs-credentials, manifests/secrets/): its key `key.json`, a Google
    # service-account key, is mounted in every pod for GOOGLE_APPLICATION_CREDENTIALS.
    gcs: str = ""


class ClusterConfig(Section):
    """How the pipeline runs on Kubeflow Pipelines; none of it changes a local run's results."""

    # Where KFP stores every step's outputs, e.g. gs://my-bucket/lesion-pipeline.
    pipeline_root: str = ""
    # Caching of steps whose outputs depend only on their inputs; submit --no-cache overrides it per run.
    caching: bool = True
    # Retries of steps that touch the network (GCS, MLflow), with exponential backoff.
    retries: int = Field(3, ge=0)
    retry_backoff: str = "30s"  # see retries
    # The Kubernetes ServiceAccount runs' pods use (manifests/base/pipeline-runner-serviceaccount.yaml:
    # Workload Identity for GCS, the namespaced Role). Empty: the KFP installation's default.
    service_account: str = "lesion-pipeline-runner"
    gpu: GpuConfig = Field(default_factory=GpuConfig)
    secrets: SecretsConfig = Field(default_factory=SecretsConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)

    @model_validator(mode="after")
    def _pipeline_root_is_a_uri(self) -> ClusterConfig:
        if self.pipeline_root and "://" not in self.pipeline_root:
            raise ValueError(f"pipeline_root must be a URI such as gs://bucket/path, not {self.pipeline_root!r}")
        return self


# RunConfig keys renamed, old -> new. The old key still works, with a one-line notice.
RENAMED_KEYS = {
    # "shard" is a TFRecord file of normalize's (data.num_shards); ingest's tasks read partitions.
    "data.ingest_shards": "data.ingest_partitions",
    "cluster.resources.ingest_shard": "cluster.resources.ingest_partition",
    # Training's validation reads it too: one key the train and evaluate sections both get.
    "evaluate.melanoma_class": "melanoma_class",
    # The champion gate is the register step's: its own section, so evaluate's cache key
    # does not change with it.
    "evaluate.champion_metric": "champion_gate.metric",
    "evaluate.champion_margin": "champion_gate.margin",
    "evaluate.min_balanced_accuracy": "champion_gate.min_balanced_accuracy",
    "evaluate.min_melanoma_auc": "champion_gate.min_melanoma_auc",
    "evaluate.min_macro_auc": "champion_gate.min_macro_auc",
}
# The sections that get the run config's melanoma_class; not a key of theirs in a config.
MELANOMA_CLASS_SECTIONS = ("train", "evaluate")


def current_key(key: str) -> str:
    """``key`` under its current name; an old name prints a one-line notice."""
    new = RENAMED_KEYS.get(key)
    if new is None:
        return key
    print(f"warning: config key {key} is now {new}; the old name will stop working", file=sys.stderr, flush=True)
    return new


def with_current_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` (a config's sections) with renamed keys under their current names."""
    raw = copy.deepcopy(raw)
    for old, new in RENAMED_KEYS.items():
        old_parent, old_name = _parent(raw, old)
        if old_parent is None or old_name not in old_parent:
            continue
        new_parent, new_name = _parent(raw, current_key(old))
        if new_parent is None or new_name in new_parent:
            raise ConfigError(f"config key {old} is the old name of {new}: give only {new}")
        new_parent[new_name] = old_parent.pop(old_name)
    return raw


def _parent(raw: dict[str, Any], key: str) -> tuple[dict[str, Any] | None, str]:
    """The mapping that holds ``key`` (dotted) in ``raw``, or None, and its last part."""
    *parents, name = key.split(".")
    node: Any = raw
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), name


class RunConfig(Section):
    name: str = "demo"
    # The class whose one-vs-rest AUC is reported as melanoma_auc: in training's validation
    # (train.monitor val_melanoma_auc) and in evaluation. The train and evaluate sections
    # both get it from here, so that each step still receives only its own section.
    melanoma_class: str = "melanoma"
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    champion_gate: ChampionGateConfig = Field(default_factory=ChampionGateConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="before")
    @classmethod
    def _sections_get_melanoma_class(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        for name in MELANOMA_CLASS_SECTIONS:
            section = raw.get(name)
            if isinstance(section, dict) and "melanoma_class" in section:
                raise ConfigError(f"config key {name}.melanoma_class is the run's melanoma_class: set that one")
            if section is None or isinstance(section, dict):
                raw[name] = {
                    **(section or {}),
                    "melanoma_class": raw.get("melanoma_class", cls.model_fields["melanoma_class"].default),
                }
        return raw

    def to_dict(self) -> dict[str, Any]:
        raw = super().to_dict()
        for name in MELANOMA_CLASS_SECTIONS:
            del raw[name]["melanoma_class"]  # the sections' copy of the run's
        return raw

    @model_validator(mode="after")
    def _ensemble_members_are_valid(self) -> RunConfig:
        self.train.members()  # every member checked like the train section, with its own key
        return self

    # ---- construction ----------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> RunConfig:
        return load_section(cls, with_current_keys(raw) if isinstance(raw, dict) else raw or {}, "")

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
        """A config file's values (its relative paths resolved against its own folder), then
        ``--set`` overrides (taken as given: relative to the working folder)."""
        raw = resolve_relative_paths(read_yaml_mapping(path), Path(path).parent) if path else {}
        return cls.from_dict(raw).with_overrides(overrides)

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> RunConfig:
        raw = self.to_dict()
        for item in overrides:
            key, sep, value = item.partition("=")
            key = current_key(key.strip())
            if not sep or not key:
                raise ConfigError(f"override {item!r} is not key=value (e.g. train.epochs=3)")
            node = raw
            parts = key.split(".")
            for depth, part in enumerate(parts[:-1]):
                if not isinstance(node.get(part), dict):
                    raise ConfigError(unknown_key_message(".".join(parts[: depth + 1]), sorted(node)))
                node = node[part]
            if parts[-1] not in node:
                raise ConfigError(unknown_key_message(key, sorted(node)))
            node[parts[-1]] = parse_override(RunConfig, key, value)
        return RunConfig.from_dict(raw)

    # ---- views -----------------------------------------------------------
    def flat_params(self) -> dict[str, str]:
        """``section.key -> str`` for mlflow.log_params."""
        return flat_params(self.to_dict())

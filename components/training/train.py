"""Train: a Keras model on the normalized (and augmented) training shards.

Transfer models train in two phases (backbone frozen, then fine-tuned). Early
stopping on a validation metric of the config's choice with the best weights restored
(components.training.callbacks); per-epoch metrics to MLflow; a backup after each epoch in the
step's output folder so a killed step resumes from its last completed epoch. Devices
(components.training.devices), the input pipeline (components.training.train_input), the imbalance
remedies (components.training.imbalance) and the learning rate (components.training.lr_schedule) live in
their own modules. Several workers (a TFJob) train under MultiWorkerMirroredStrategy in
the custom loop of ``components.training.distributed``. ``train.ensemble`` trains several models
in turn and saves one model that averages their probabilities. ``train.balance_decisions``
fits the saved model's per-class decision offsets on the validation split
(components.scoring.decisions) and saves them beside it.
"""

import hashlib
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from kfp import dsl

from components.core import filenames
from components.core.settings import TrainConfig
from components.data import tfrecords
from components.training import distributed
from components.training.callbacks import (
    EPOCH_LOG_FILE,
    BestEpochTracker,
    backup_and_restore,
    epoch_log_callback,
    read_epoch_log,
    save_weights_atomically,
    time_budget_callback,
    validation_callback,
    validation_metrics,
)
from components.training.devices import Devices, configure_devices
from components.training.ensemble import ensemble_model
from components.training.imbalance import loss_and_class_weights
from components.training.lr_schedule import learning_rate
from components.training.train_input import CACHE_DIR, TrainingData, input_cache_folder, training_dataset
from components.training.trained_model import write_model_info

FROZEN_DONE_FILE = "frozen_phase.weights.h5"
# Written last: a folder holding it has a finished model.
HISTORY_FILE = "history.json"


@dataclass
class TrainResult:
    model_path: str
    history: dict
    epochs_run: int
    best_epoch: int  # -1 for an ensemble: see members
    device: str
    members: list["TrainResult"] = field(default_factory=list)


def _fit_phase(
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


def train(
    normalized_dir: str | Path,
    augmented_dir: str | Path | None,
    tc: TrainConfig,
    output_dir: str | Path,
    tracking_uri: str = "",
    mlflow_run_id: str = "",
    extra_callbacks: Sequence = (),
    melanoma_class: str = "melanoma",
) -> TrainResult:
    """Train ``tc.model`` and save the best epoch's model to ``output_dir``; with
    ``tc.ensemble``, train every member in turn (in ``output_dir/members/<i>``) and save
    a model that averages their probabilities. ``melanoma_class`` names the class whose
    validation AUC is reported each epoch.

    Started again on the same ``output_dir`` after being killed, it resumes from the last
    completed epoch (and skips a finished frozen phase, or a finished ensemble member).
    ``extra_callbacks`` run after ours at every epoch end."""
    import keras

    members = tc.members()
    out = Path(output_dir)
    if len(members) == 1 and (out / HISTORY_FILE).is_file():
        return _finished_model(out)  # trained to the end by an earlier run that died later
    devices = configure_devices(tc.seed)
    data = TrainingData.load(normalized_dir, augmented_dir, tc)
    out.mkdir(parents=True, exist_ok=True)
    if devices.workers > 1:
        distributed.copy_folder_from_chief(devices.strategy, out)
    if len(members) == 1:
        return _train_model(tc, data, melanoma_class, devices, out, tracking_uri, mlflow_run_id, extra_callbacks)

    started = time.monotonic()
    results = []
    for i, member in enumerate(members):
        member = member.model_copy(update={"balance_decisions": False})  # fitted once, on the ensemble
        if tc.max_train_minutes:  # the whole ensemble's budget: what is left, shared by the members to come
            left = tc.max_train_minutes - (time.monotonic() - started) / 60
            member = member.model_copy(update={"max_train_minutes": max(left, 0.01) / (len(members) - i)})
        member_out = out / "members" / str(i)
        if (member_out / HISTORY_FILE).is_file():
            results.append(_finished_model(member_out))
            continue
        print(
            f"ensemble member {i + 1}/{len(members)}: {member.model}"
            f"{f' alpha {member.alpha}' if member.model.startswith('mobilenet') else ''}, seed {member.seed}",
            flush=True,
        )
        results.append(
            _train_model(
                member,
                data,
                melanoma_class,
                devices,
                member_out,
                tracking_uri,
                mlflow_run_id,
                extra_callbacks,
                metric_prefix=f"member{i}_",
            )
        )

    with devices.strategy.scope():
        model = ensemble_model(
            [keras.models.load_model(r.model_path, compile=False) for r in results], data.meta["image_size"]
        )
    val_metrics = validation_metrics(
        model, data.val_images, data.val_labels, data.meta["classes"], tc.batch_size, melanoma_class
    )
    if mlflow_run_id:
        from components.core import tracking

        tracking.client(tracking_uri).log_batch(
            mlflow_run_id, metrics=tracking.metrics_at({f"ensemble_{k}": v for k, v in val_metrics.items()})
        )
    model_path = _save_finished(
        model,
        data,
        tc,
        out,
        tracking_uri,
        mlflow_run_id,
        {
            "members": [
                {"model_path": r.model_path, "best_epoch": r.best_epoch, "epochs_run": r.epochs_run} for r in results
            ],
            "ensemble_validation": val_metrics,
            "device": devices.description,
        },
    )
    return TrainResult(
        model_path,
        {f"ensemble_{k}": [v] for k, v in val_metrics.items()},
        sum(r.epochs_run for r in results),
        -1,
        devices.description,
        results,
    )


def _save_finished(
    model, data: TrainingData, tc: TrainConfig, out: Path, tracking_uri: str, mlflow_run_id: str, history: dict
) -> str:
    """Save the trained ``model`` in ``out`` with what makes it a finished train output
    (components.training.trained_model): its classes, its model info, its decision offsets
    (train.balance_decisions), and ``history`` last (HISTORY_FILE). Returns the model's path."""
    model_path = out / filenames.MODEL
    model.save(model_path)
    (out / filenames.CLASSES).write_text(json.dumps(data.meta["classes"]))
    write_model_info(out, data.meta)
    if tc.balance_decisions:
        balance_decisions(model, data, tc.batch_size, out, tracking_uri, mlflow_run_id)
    (out / HISTORY_FILE).write_text(json.dumps(history, indent=1))
    return str(model_path)


def balance_decisions(
    model, data: TrainingData, batch_size: int, out: Path, tracking_uri: str = "", mlflow_run_id: str = ""
) -> None:
    """Fits ``model``'s per-class decision offsets on the validation split and saves them
    in ``out`` (components.scoring.decisions); logs the validation balanced accuracy without and
    with them. Fitted on probabilities averaged over the 8 flips and turns, as evaluate
    scores with evaluate.tta (on in the HAM10000 configs; the train step does not read
    evaluate.*): averaged probabilities are less extreme than single views', so offsets
    fitted on single views over-correct them (HAM10000 at b84ee3b, test balanced accuracy
    0.748 against 0.755 fitted on TTA probabilities)."""
    from sklearn.metrics import balanced_accuracy_score

    from components.scoring.decisions import (
        MIN_IMAGES_TO_FIT,
        decide,
        fit_balanced_bias,
        too_few_to_fit,
        write_decision_bias,
    )
    from components.scoring.inference import predict_probabilities

    classes, labels = data.meta["classes"], data.val_labels
    probs = predict_probabilities(model, data.val_images, batch_size, tta=True)
    bias = fit_balanced_bias(probs, labels, len(classes))
    unfitted = [c for c, few in zip(classes, too_few_to_fit(labels, len(classes))) if few]
    if unfitted:
        print(
            f"decision offsets: {', '.join(unfitted)} keep offset 0 (fewer than {MIN_IMAGES_TO_FIT} validation images)",
            flush=True,
        )
    write_decision_bias(out, classes, bias, f"validation split ({len(labels)} images, 8 flips/turns averaged)")
    before = balanced_accuracy_score(labels, decide(probs))
    after = balanced_accuracy_score(labels, decide(probs, bias))
    print(
        f"decision offsets fitted on the validation split: its balanced accuracy {before:.3f} -> {after:.3f} "
        f"(fitted on these images, so optimistic; the test split says what holds)",
        flush=True,
    )
    if mlflow_run_id:
        from components.core import tracking

        tracking.client(tracking_uri).log_batch(
            mlflow_run_id,
            metrics=tracking.metrics_at(
                {"val_tta_balanced_accuracy": before, "val_tta_balanced_accuracy_balanced_decisions": after}
            ),
        )


def checkpoint_dir(
    checkpoint_root: str | Path,
    normalized_dir: str | Path,
    augmented_dir: str | Path | None,
    tc: TrainConfig,
    data_fingerprint: str,
) -> Path:
    """Where a training of this data with these settings keeps its checkpoints, under
    ``checkpoint_root``: the same folder for the same run started again, so it resumes."""
    identity = [
        data_fingerprint,
        json.dumps(tc.to_dict(), sort_keys=True),
        (Path(normalized_dir) / tfrecords.META_FILE).read_text(),
    ]
    if augmented_dir and (Path(augmented_dir) / filenames.AUGMENT_POLICY).is_file():
        identity.append((Path(augmented_dir) / filenames.AUGMENT_POLICY).read_text())
    return Path(checkpoint_root) / hashlib.sha256("\n".join(identity).encode()).hexdigest()[:16]


def progress_so_far(out: Path) -> str:
    """What an earlier, interrupted training left in ``out``, for the log ('' if nothing)."""
    if (out / HISTORY_FILE).is_file():
        return f"training finished earlier in {out}: reusing its model"
    logs = sorted(out.rglob(EPOCH_LOG_FILE))
    if not logs:
        return ""
    epochs = sum(len(read_epoch_log(log.parent)) for log in logs)
    return f"resuming training from epoch {epochs} ({epochs} epochs done in {out})"


def keep_model(work: str | Path, output_dir: str | Path) -> str:
    """The trained model's files (not the checkpoints) from ``work`` into the step's
    output folder; returns the model's path there."""
    work, out = Path(work), Path(output_dir)
    if work != out:
        out.mkdir(parents=True, exist_ok=True)
        for name in (
            filenames.MODEL,
            filenames.CLASSES,
            filenames.MODEL_INFO,
            filenames.DECISION_BIAS,
            HISTORY_FILE,
            EPOCH_LOG_FILE,
        ):
            if (work / name).is_file():
                shutil.copy2(work / name, out / name)
    return str(out / filenames.MODEL)


def _finished_model(out: Path) -> TrainResult:
    """The result of a model trained to the end in ``out`` by an earlier, killed run."""
    saved = json.loads((out / HISTORY_FILE).read_text())
    return TrainResult(
        str(out / filenames.MODEL), saved["history"], len(read_epoch_log(out)), saved["best_epoch"], saved["device"]
    )


def _train_model(
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
            partial(distributed.fit_phase, global_batch_size=tc.batch_size) if devices.workers > 1 else _fit_phase
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
    model_path = _save_finished(
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
    )
    return TrainResult(model_path, history, len(epochs), kept_epoch, devices.description)


def train_step(
    normalized: dsl.Input[dsl.Dataset],
    augmented: dsl.Input[dsl.Dataset],
    train: dict,
    melanoma_class: str,
    data_fingerprint: str,
    checkpoint_root: str,
    experiment: str,
    tracking_uri: str,
    kfp_run_name: str,
    kfp_run_id: str,
    model: dsl.Output[dsl.Model],
) -> str:
    """KFP wrapper: the train step. Returns the MLflow model URI. With ``checkpoint_root``
    (a local run's output folder) it trains in a folder there that the same run started
    again finds, and resumes from its last completed epoch."""
    from pathlib import Path

    from components.core import tracking
    from components.core.errors import user_errors
    from components.core.section import load_section
    from components.core.settings import TrainConfig
    from components.training.train import checkpoint_dir, keep_model, progress_so_far
    from components.training.train import train as train_model
    from components.training.trained_model import log_trained_model

    run_id = tracking.pipeline_run(tracking_uri, experiment, kfp_run_name, kfp_run_id)
    with user_errors():
        tc = load_section(TrainConfig, train, "train.")
        work = (
            checkpoint_dir(checkpoint_root, normalized.path, augmented.path, tc, data_fingerprint)
            if checkpoint_root
            else Path(model.path)
        )
        if progress := progress_so_far(work):
            print(progress, flush=True)
        result = train_model(
            normalized.path, augmented.path, tc, work, tracking_uri, run_id, melanoma_class=melanoma_class
        )
    keep_model(work, model.path)
    model.metadata.update(
        {
            "framework": "keras",
            "epochs_run": result.epochs_run,
            "device": result.device,
            "best_epoch": [m.best_epoch for m in result.members] or result.best_epoch,
        }
    )
    if checkpoint_root:  # a local run removes this folder once it has finished, not other runs' folders
        model.metadata["checkpoints"] = str(work)
    return log_trained_model(model.path, tracking_uri, run_id)

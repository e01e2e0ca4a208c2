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
(components.training.decision_offsets) and saves them beside it. One model's two phases
are in components.training.fit; the train output folder's files in
components.training.trained_model; where a local run keeps its checkpoints in
components.training.checkpoints.
"""

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from kfp import dsl

from components.core.settings import TrainConfig
from components.training import distributed
from components.training.callbacks import validation_metrics
from components.training.devices import Devices, configure_devices
from components.training.ensemble import ensemble_model
from components.training.fit import EpochReporting, train_one_model
from components.training.train_input import TrainingData
from components.training.trained_model import HISTORY_FILE, TrainResult, finished_model, save_finished


def train(
    normalized_dir: str | Path,
    augmented_dir: str | Path | None,
    tc: TrainConfig,
    output_dir: str | Path,
    *,
    tracking_uri: str = "",
    mlflow_run_id: str = "",
    extra_callbacks: Sequence = (),
) -> TrainResult:
    """Train ``tc.model`` and save the best epoch's model to ``output_dir``; with
    ``tc.ensemble``, train every member in turn (in ``output_dir/members/<i>``) and save
    a model that averages their probabilities.

    Started again on the same ``output_dir`` after being killed, it resumes from the last
    completed epoch (and skips a finished frozen phase, or a finished ensemble member).
    ``extra_callbacks`` run after ours at every epoch end."""
    members = tc.members()
    out = Path(output_dir)
    if len(members) == 1 and (out / HISTORY_FILE).is_file():
        return finished_model(out)  # trained to the end by an earlier run that died later
    devices = configure_devices(tc.seed)
    data = TrainingData.load(normalized_dir, augmented_dir, tc)
    out.mkdir(parents=True, exist_ok=True)
    if devices.workers > 1:
        distributed.copy_folder_from_chief(devices.strategy, out)
    reporting = EpochReporting(
        melanoma_class=tc.melanoma_class,
        tracking_uri=tracking_uri,
        mlflow_run_id=mlflow_run_id,
        extra_callbacks=tuple(extra_callbacks),
    )
    if len(members) == 1:
        return train_one_model(tc, data, devices, out, reporting)
    return train_ensemble(tc, data, devices, out, reporting)


def train_ensemble(
    tc: TrainConfig, data: TrainingData, devices: Devices, out: Path, reporting: EpochReporting
) -> TrainResult:
    """Every member of ``tc.members()`` in turn, in ``out/members/<i>`` (a finished one is
    not trained again), then one model averaging their probabilities in ``out``."""
    import keras

    members = tc.members()
    started = time.monotonic()
    results = []
    for i, member in enumerate(members):
        member = member.model_copy(
            update={"balance_decisions": False, "calibrate": False}
        )  # fitted once, on the ensemble
        if tc.max_train_minutes:  # the whole ensemble's budget: what is left, shared by the members to come
            left = tc.max_train_minutes - (time.monotonic() - started) / 60
            member = member.model_copy(update={"max_train_minutes": max(left, 0.01) / (len(members) - i)})
        member_out = out / "members" / str(i)
        if (member_out / HISTORY_FILE).is_file():
            results.append(finished_model(member_out))
            continue
        print(
            f"ensemble member {i + 1}/{len(members)}: {member.model}"
            f"{f' alpha {member.alpha}' if member.model.startswith('mobilenet') else ''}, seed {member.seed}",
            flush=True,
        )
        member_reporting = replace(reporting, metric_prefix=f"member{i}_")
        results.append(train_one_model(member, data, devices, member_out, member_reporting))

    with devices.strategy.scope():
        model = ensemble_model(
            [keras.models.load_model(r.model_path, compile=False) for r in results], data.meta["image_size"]
        )
    val_metrics = validation_metrics(
        model, data.val_images, data.val_labels, data.meta["classes"], tc.batch_size, reporting.melanoma_class
    )
    if reporting.mlflow_run_id:
        from components.core import tracking

        tracking.client(reporting.tracking_uri).log_batch(
            reporting.mlflow_run_id, metrics=tracking.metrics_at({f"ensemble_{k}": v for k, v in val_metrics.items()})
        )
    summary = {
        "members": [
            {"model_path": r.model_path, "best_epoch": r.best_epoch, "epochs_run": r.epochs_run} for r in results
        ],
        "ensemble_validation": val_metrics,
        "device": devices.description,
    }
    model_path = save_finished(model, data, tc, out, reporting.tracking_uri, reporting.mlflow_run_id, summary)
    return TrainResult(
        model_path,
        {f"ensemble_{k}": [v] for k, v in val_metrics.items()},
        epochs_run=sum(r.epochs_run for r in results),
        best_epoch=None,
        device=devices.description,
        members=results,
    )


def train_step(
    normalized: dsl.Input[dsl.Dataset],
    augmented: dsl.Input[dsl.Dataset],
    train: dict,
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
    from contextlib import nullcontext
    from pathlib import Path

    from components.core import tracking
    from components.core.config_base import load_section
    from components.core.errors import user_errors
    from components.core.run_status import failure_recorded
    from components.core.settings import TrainConfig
    from components.training.checkpoints import checkpoint_dir, claimed, progress_so_far
    from components.training.train import train as train_model
    from components.training.trained_model import keep_model, log_trained_model

    run_id = tracking.pipeline_run(tracking_uri, experiment, kfp_run_name, kfp_run_id)
    with user_errors(writing=checkpoint_root or model.path), failure_recorded(tracking_uri, run_id, "train"):
        tc = load_section(TrainConfig, train, "train.")
        with (
            claimed(checkpoint_dir(checkpoint_root, normalized.path, augmented.path, tc, data_fingerprint))
            if checkpoint_root
            else nullcontext(Path(model.path))
        ) as work:
            if progress := progress_so_far(work):
                print(progress, flush=True)
            result = train_model(
                normalized.path, augmented.path, tc, work, tracking_uri=tracking_uri, mlflow_run_id=run_id
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

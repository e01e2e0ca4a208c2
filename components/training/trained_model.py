"""A train output folder as the train step and the TFJob chief leave it: saving a
finished model there, reading it back, copying it out of a checkpoint folder, and logging
it to MLflow: the model (filenames.MODEL), its classes (filenames.CLASSES), how it reads
images and what it was trained on (filenames.MODEL_INFO), and its decision offsets when
it has them (filenames.DECISION_BIAS). Everything MLflow's copy carries comes from the
folder, so a model logged by either trainer is read the same way by predict, evaluate
and the champion gate."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from components.core import atomic, filenames
from components.core.settings import TrainConfig
from components.training.callbacks import EPOCH_LOG_FILE, read_epoch_log
from components.training.decision_offsets import fit_on_validation
from components.training.train_input import TrainingData

# Written last, whole or not at all (atomic): a folder holding it has a finished model.
HISTORY_FILE = "history.json"


@dataclass
class TrainResult:
    model_path: str
    history: dict
    epochs_run: int
    best_epoch: int | None  # None for an ensemble: see members
    device: str
    members: list[TrainResult] = field(default_factory=list)


def save_finished(
    model, data: TrainingData, tc: TrainConfig, out: Path, tracking_uri: str, mlflow_run_id: str, history: dict
) -> str:
    """Save the trained ``model`` in ``out`` with what makes it a finished train output
    (components.training.trained_model): its classes, its model info, its decision offsets
    (train.balance_decisions), its temperature, melanoma operating points and referral
    threshold (train.calibrate), and ``history`` last (HISTORY_FILE). Returns the model's path."""
    model_path = out / filenames.MODEL
    model.save(model_path)
    (out / filenames.CLASSES).write_text(json.dumps(data.meta["classes"]))
    write_model_info(out, data.meta)
    fit_on_validation(model, data, tc, out, tc.melanoma_class, tracking_uri, mlflow_run_id)
    atomic.write_text(out / HISTORY_FILE, json.dumps(history, indent=1))  # whole or absent: a cut one read as finished
    return str(model_path)


def finished_model(out: Path) -> TrainResult:
    """The result of a model trained to the end in ``out`` by an earlier, killed run."""
    saved = json.loads((out / HISTORY_FILE).read_text())
    return TrainResult(
        str(out / filenames.MODEL), saved["history"], len(read_epoch_log(out)), saved["best_epoch"], saved["device"]
    )


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
            *filenames.FITTED_ON_VALIDATION,
            HISTORY_FILE,
            EPOCH_LOG_FILE,
        ):
            if (work / name).is_file():
                shutil.copy2(work / name, out / name)
    return str(out / filenames.MODEL)


def write_model_info(folder: str | Path, normalized_meta: dict) -> None:
    """Beside the saved model, from the normalize step's meta: its image size and resize
    mode, so that predict and evaluate read images as training did, and whether it was
    trained on the generated demo data (components.data.synthetic), so that every use of
    it can say so."""
    info = {
        "image_size": int(normalized_meta["image_size"]),
        "resize_mode": normalized_meta.get("resize_mode", "pad"),
        "synthetic": bool(normalized_meta.get("synthetic")),
    }
    (Path(folder) / filenames.MODEL_INFO).write_text(json.dumps(info))


def log_trained_model(model_dir: str | Path, tracking_uri: str, run_id: str) -> str:
    """Log the model in ``model_dir`` (a finished train output folder) to the MLflow run
    ``run_id`` as the model that takes images (components.scoring.served_model), with the
    files keep_model keeps (not the checkpoints a folder may also hold); returns its model URI."""
    import tempfile

    from components.scoring.served_model import log_served_model

    with tempfile.TemporaryDirectory(prefix="lesion-model-") as scratch:
        keep_model(model_dir, Path(scratch, "model"))
        return log_served_model(Path(scratch, "model"), tracking_uri, run_id)

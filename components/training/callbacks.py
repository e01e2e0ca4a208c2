"""What happens at the end of every training epoch: validation metrics, the best epoch
and early stopping (kept on disk, so they survive a restart), the epoch log (file and
MLflow) and the wall-clock budget."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np

from components.core import atomic

BEST_WEIGHTS_FILE = "best.weights.h5"
BEST_STATE_FILE = "best.json"
EPOCH_LOG_FILE = "epochs.jsonl"


def validation_metrics(
    model, val_images, val_labels: np.ndarray, classes: list[str], batch_size: int, melanoma_class: str
) -> dict[str, float]:
    """val_loss, val_accuracy, val_balanced_accuracy, val_macro_f1, val_macro_auc and
    val_melanoma_auc of ``model``, from one prediction pass over the validation split:
    ``val_images`` a tf.data.Dataset of its images in the order of ``val_labels``
    (components.training.train_input.validation_images), predicted in batches."""
    from components.scoring.inference import predict_probabilities
    from components.scoring.metrics import classification_metrics

    probs = predict_probabilities(model, val_images, batch_size)
    m = classification_metrics(val_labels, probs, classes, melanoma_class)
    picked = np.clip(probs[np.arange(len(val_labels)), val_labels], 1e-7, 1.0)
    return {
        "val_loss": float(-np.log(picked).mean()),
        "val_accuracy": m["accuracy"],
        "val_balanced_accuracy": m["balanced_accuracy"],
        "val_macro_f1": m["macro_f1"],
        "val_macro_auc": m["macro_auc"] or 0.0,
        "val_melanoma_auc": m.get("melanoma_auc") or 0.0,
    }


def validation_callback(val_images, val_labels: np.ndarray, classes: list[str], batch_size: int, melanoma_class: str):
    """Adds the validation metrics to the epoch logs (before the best-epoch tracker reads them)."""
    import keras

    class ValidationMetrics(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs.update(validation_metrics(self.model, val_images, val_labels, classes, batch_size, melanoma_class))

    return ValidationMetrics()


class BestEpochTracker:
    """Early stopping and best-weights restoring that survive a restart: the best value,
    its epoch and its weights live in the output folder, not in the process.

    Stops when ``patience`` epochs have passed since the best one, counting only epochs
    of the current phase (fine-tuning starts with a full patience); never with None."""

    def __init__(self, out: Path, monitor: str, patience: int | None):
        self.out = out
        self.monitor = monitor
        self.mode = "min" if monitor.endswith("loss") else "max"
        self.patience = patience
        state_file = out / BEST_STATE_FILE
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        self.best: float | None = state.get("best")
        self.best_epoch: int = state.get("best_epoch", -1)

    def improved(self, value: float) -> bool:
        if self.best is None or not math.isfinite(self.best):
            return math.isfinite(value)
        return value < self.best if self.mode == "min" else value > self.best

    def callback(self, phase_start: int):
        import keras

        tracker = self

        class Track(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                value = float(logs[tracker.monitor])
                if tracker.improved(value):
                    tracker.best, tracker.best_epoch = value, epoch
                    save_weights_atomically(self.model, tracker.out / BEST_WEIGHTS_FILE)
                    atomic.write_text(
                        tracker.out / BEST_STATE_FILE,
                        json.dumps({"monitor": tracker.monitor, "best": value, "best_epoch": epoch}),
                    )
                since_best = epoch - max(tracker.best_epoch, phase_start - 1)
                if tracker.patience is not None and since_best >= tracker.patience:
                    self.model.stop_training = True

        return Track()

    def restore_best(self, model) -> None:
        if (self.out / BEST_WEIGHTS_FILE).is_file():
            model.load_weights(self.out / BEST_WEIGHTS_FILE)


# The metrics an epoch's console line shows, in this order; epochs.jsonl and MLflow keep all.
EPOCH_LINE_METRICS = ("loss", "val_loss", "val_balanced_accuracy", "val_melanoma_auc", "learning_rate")
EPOCH_LINE = re.compile(r"(epoch \d+/\d+ .*\(\d+ s\))$")


def epoch_line(epoch: int, total_epochs: int, seconds: float, values: dict[str, float], label: str = "") -> str:
    """One finished epoch in words, e.g. ``epoch 3/14  loss 0.512  val_loss 0.610 ...  (42 s)``.
    Ours rather than Keras' progress text, which heads a one-epoch fit() with no number and
    leaves carriage-return residue in a captured stream; ``EPOCH_LINE`` finds it in a log."""
    shown = "  ".join(
        f"{k} {values[k]:.3g}" if k == "learning_rate" else f"{k} {values[k]:.3f}"
        for k in EPOCH_LINE_METRICS
        if k in values
    )
    return f"epoch {epoch + 1}/{total_epochs}{f' [{label}]' if label else ''}  {shown}  ({seconds:.0f} s)"


def epoch_log_callback(out: Path, tracking_uri: str, run_id: str, total_epochs: int, metric_prefix: str = ""):
    """Appends every finished epoch's logs to epochs.jsonl and to the MLflow run (with
    ``metric_prefix`` before each name there), and prints its ``epoch_line``."""
    import keras

    client = None
    if run_id:
        from components.core import tracking

        client = tracking.client(tracking_uri)

    class EpochLog(keras.callbacks.Callback):
        began = time.monotonic()

        def on_epoch_begin(self, epoch, logs=None):
            self.began = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            values = {k: float(v) for k, v in (logs or {}).items()}
            # np.asarray: under a distribution strategy a constant rate is a MirroredVariable, which float() refuses.
            values["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))
            append_line(out / EPOCH_LOG_FILE, json.dumps({"epoch": epoch, **values}))
            if client is not None:
                client.log_batch(
                    run_id, metrics=tracking.metrics_at({metric_prefix + k: v for k, v in values.items()}, step=epoch)
                )
            print(
                epoch_line(epoch, total_epochs, time.monotonic() - self.began, values, metric_prefix.rstrip("_")),
                flush=True,
            )

    return EpochLog()


def time_budget_callback(minutes: float, started: float):
    """Stops training at an epoch end once the budget is spent (the best epoch is kept)."""
    import keras

    class TimeBudget(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if time.monotonic() - started > minutes * 60:
                print(f"train.max_train_minutes ({minutes}) spent after epoch {epoch + 1}: stopping", flush=True)
                self.model.stop_training = True

    return TimeBudget()


def save_weights_atomically(model, path: Path) -> None:
    """``model.save_weights(path)`` such that a kill leaves the old file or the new one,
    never half of one."""
    import os

    partial = path.with_name(f".partial-{path.name}")  # Keras wants the .weights.h5 suffix
    try:
        model.save_weights(partial, overwrite=True)
    except BaseException:  # a full disk: no half file left behind
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)


def backup_and_restore(backup_dir: Path):
    """Keras' BackupAndRestore, with a backup that a kill at any moment leaves whole: the
    epoch's weights go to a new file, then the metadata naming that file and the epoch is
    replaced in one rename. (Keras overwrites both in place: a kill while it writes the
    weights leaves an HDF5 file that the next run cannot open.)"""
    import keras

    class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
        def _save_model(self):
            folder = Path(self.backup_dir)
            folder.mkdir(parents=True, exist_ok=True)
            weights = folder / f"epoch-{self._current_epoch:05d}.weights.h5"
            save_weights_atomically(self.model, weights)
            atomic.write_text(
                self._training_metadata_path,
                json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen, "weights": weights.name}),
            )
            for old in folder.glob("epoch-*.weights.h5"):
                if old != weights:
                    old.unlink()

        def _load_model(self):
            metadata = Path(self._training_metadata_path)
            if not metadata.is_file():
                return
            state = json.loads(metadata.read_text())
            if self.model.optimizer is not None and not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            self.model.load_weights(Path(self.backup_dir) / state["weights"])
            self.model._initial_epoch = state["epoch"]

    return AtomicBackupAndRestore(str(backup_dir))


def append_line(path: Path, line: str) -> None:
    """Append ``line`` on a line of its own, even after a line that a kill cut short."""
    with open(path, "a+b") as f:
        if f.seek(0, 2) and (f.seek(-1, 2), f.read(1))[1] != b"\n":
            f.write(b"\n")
        f.write(line.encode() + b"\n")


def read_epoch_log(out: str | Path) -> list[dict]:
    """Every epoch logged so far, a resumed epoch's latest record winning; a last line
    cut short by a kill is not a record."""
    path = Path(out) / EPOCH_LOG_FILE
    if not path.is_file():
        return []
    by_epoch = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]

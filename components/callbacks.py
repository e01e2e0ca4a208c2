"""What happens at the end of every training epoch: validation metrics, the best epoch
and early stopping (kept on disk, so they survive a restart), the epoch log (file and
MLflow) and the wall-clock budget."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

BEST_WEIGHTS_FILE = "best.weights.h5"
BEST_STATE_FILE = "best.json"
EPOCH_LOG_FILE = "epochs.jsonl"


def validation_metrics(model, val_images: np.ndarray, val_labels: np.ndarray, classes: list[str], batch_size: int,
                       melanoma_class: str) -> dict[str, float]:
    """val_loss, val_accuracy, val_balanced_accuracy, val_macro_f1, val_macro_auc and
    val_melanoma_auc of ``model``, from one prediction pass over the validation split."""
    from components.metrics import classification_metrics

    probs = np.asarray(model.predict(val_images, batch_size=batch_size, verbose=0), dtype=np.float64)
    m = classification_metrics(val_labels, probs, classes, melanoma_class)
    picked = np.clip(probs[np.arange(len(val_labels)), val_labels], 1e-7, 1.0)
    return {"val_loss": float(-np.log(picked).mean()), "val_accuracy": m["accuracy"],
            "val_balanced_accuracy": m["balanced_accuracy"], "val_macro_f1": m["macro_f1"],
            "val_macro_auc": m["macro_auc"] or 0.0, "val_melanoma_auc": m.get("melanoma_auc") or 0.0}



def validation_callback(val_images: np.ndarray, val_labels: np.ndarray, classes: list[str], batch_size: int,
                         melanoma_class: str):
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
    of the current phase (fine-tuning starts with a full patience)."""

    def __init__(self, out: Path, monitor: str, patience: int):
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
                    self.model.save_weights(tracker.out / BEST_WEIGHTS_FILE)
                    (tracker.out / BEST_STATE_FILE).write_text(json.dumps(
                        {"monitor": tracker.monitor, "best": value, "best_epoch": epoch}))
                since_best = epoch - max(tracker.best_epoch, phase_start - 1)
                if since_best >= tracker.patience:
                    self.model.stop_training = True

        return Track()

    def restore_best(self, model) -> None:
        if (self.out / BEST_WEIGHTS_FILE).is_file():
            model.load_weights(self.out / BEST_WEIGHTS_FILE)



def epoch_log_callback(out: Path, tracking_uri: str, run_id: str, metric_prefix: str = ""):
    """Appends every finished epoch's logs to epochs.jsonl and to the MLflow run (with
    ``metric_prefix`` before each name there)."""
    import keras

    client = None
    if run_id:
        from components import tracking

        client = tracking.client(tracking_uri)

    class EpochLog(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            values = {k: float(v) for k, v in (logs or {}).items()}
            # np.asarray: under a distribution strategy a constant rate is a MirroredVariable, which float() refuses.
            values["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))
            with open(out / EPOCH_LOG_FILE, "a") as f:
                f.write(json.dumps({"epoch": epoch, **values}) + "\n")
            if client is not None:
                client.log_batch(run_id, metrics=tracking.metrics_at(
                    {metric_prefix + k: v for k, v in values.items()}, step=epoch))

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



def read_epoch_log(out: str | Path) -> list[dict]:
    """Every epoch logged so far, a resumed epoch's latest record winning."""
    path = Path(out) / EPOCH_LOG_FILE
    if not path.is_file():
        return []
    by_epoch = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]

"""Train: a Keras model on the normalized (and augmented) training shards.

Early stopping on a validation metric of the config's choice with the best weights
restored, per-epoch metrics to MLflow, a backup after each epoch so a killed step
resumes, mixed precision on a GPU when one is visible.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from kfp import dsl

from components import shards
from pipeline.config import Config

MODEL_FILE = "model.keras"


@dataclass
class TrainResult:
    model_path: str
    history: dict
    epochs_run: int
    best_epoch: int
    device: str


def _configure_devices() -> str:
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        keras.mixed_precision.set_global_policy("mixed_float16")
        return f"{len(gpus)} GPU(s), mixed_float16"
    return "CPU"


def _validation_callback(val_images: np.ndarray, val_labels: np.ndarray, classes: list[str], batch_size: int):
    """Adds val_balanced_accuracy and val_macro_auc to the epoch logs (before EarlyStopping reads them)."""
    import keras

    from components.metrics import classification_metrics

    class ValidationMetrics(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            probs = self.model.predict(val_images, batch_size=batch_size, verbose=0)
            m = classification_metrics(val_labels, probs, classes)
            logs["val_balanced_accuracy"] = m["balanced_accuracy"]
            logs["val_macro_f1"] = m["macro_f1"]
            logs["val_macro_auc"] = m["macro_auc"] if m["macro_auc"] is not None else 0.0

    return ValidationMetrics()


def _mlflow_callback(tracking_uri: str, run_id: str):
    import keras
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)

    class MlflowEpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            import time

            now = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(k, float(v), now, epoch) for k, v in (logs or {}).items()])

    return MlflowEpochLogger()


def train(normalized_dir: str | Path, augmented_dir: str | Path | None, cfg: Config, output_dir: str | Path,
          tracking_uri: str = "", mlflow_run_id: str = "") -> TrainResult:
    import keras
    import tensorflow as tf

    from components.models import build_model

    tc = cfg.train
    keras.utils.set_random_seed(tc.seed)
    device = _configure_devices()
    if device == "CPU":
        tf.config.experimental.enable_op_determinism()
    meta = shards.read_meta(normalized_dir)
    classes, size = meta["classes"], meta["image_size"]
    train_paths = shards.shard_paths(normalized_dir, "train")
    if augmented_dir:
        train_paths += shards.shard_paths(augmented_dir, "train")
    train_ds = shards.dataset(train_paths, size, batch_size=tc.batch_size, shuffle_seed=tc.seed)
    val_images, val_labels, _ = shards.read_all(shards.shard_paths(normalized_dir, "val"), size)

    model = build_model(tc.model, len(classes), size, meta["mean"], meta["std"], dropout=tc.dropout)
    model.compile(optimizer=keras.optimizers.Adam(tc.learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    mode = "min" if tc.monitor.endswith("loss") else "max"
    callbacks = [
        _validation_callback(val_images.astype(np.float32), val_labels, classes, tc.batch_size),
        keras.callbacks.EarlyStopping(monitor=tc.monitor, mode=mode, patience=tc.early_stopping_patience,
                                      restore_best_weights=True),
        keras.callbacks.BackupAndRestore(str(out / "backup")),
    ]
    if mlflow_run_id:
        callbacks.append(_mlflow_callback(tracking_uri, mlflow_run_id))
    class_weight = None
    if tc.class_weight:
        counts = np.asarray(meta["class_counts"]["train"])
        policy = Path(augmented_dir or "", "policy.json")
        if augmented_dir and policy.is_file():
            counts = counts + np.asarray(json.loads(policy.read_text())["added"])
        class_weight = {i: float(counts.sum() / (len(classes) * max(c, 1))) for i, c in enumerate(counts)}
    history = model.fit(train_ds, validation_data=(val_images.astype(np.float32), val_labels),
                        epochs=tc.epochs, callbacks=callbacks, class_weight=class_weight, verbose=2)
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    monitored = hist.get(tc.monitor, [])
    best = int(np.argmin(monitored) if mode == "min" else np.argmax(monitored)) if monitored else 0
    model_path = out / MODEL_FILE
    model.save(model_path)
    (out / "classes.json").write_text(json.dumps(classes))
    (out / "history.json").write_text(json.dumps({"history": hist, "best_epoch": best, "device": device}, indent=1))
    return TrainResult(str(model_path), hist, len(monitored), best, device)


def log_model(model_path: str, image_size: int, tracking_uri: str, run_id: str, classes: list[str]) -> str:
    """Log the Keras model to the MLflow run with signature and input example; return its URI."""
    import keras
    import mlflow
    from mlflow.models import infer_signature

    model = keras.models.load_model(model_path)
    example = np.full((1, image_size, image_size, 3), 128.0, dtype=np.float32)
    signature = infer_signature(example, model.predict(example, verbose=0))
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.tensorflow.log_model(model, name="model", signature=signature, input_example=example,
                                           metadata={"classes": classes, "image_size": image_size})
    return info.model_uri


def train_step(normalized: dsl.Input[dsl.Dataset], augmented: dsl.Input[dsl.Dataset], config: dict,
               tracking_uri: str, kfp_run_name: str, kfp_run_id: str, model: dsl.Output[dsl.Model]) -> str:
    """KFP wrapper: the train step. Returns the MLflow model URI."""
    from components import shards
    from components.train import log_model, train
    from pipeline import tracking
    from pipeline.config import Config

    cfg = Config.from_dict(config)
    run_id = tracking.pipeline_run(tracking_uri, cfg.mlflow.experiment, kfp_run_name, kfp_run_id, cfg.flat_params())
    result = train(normalized.path, augmented.path, cfg, model.path, tracking_uri, run_id)
    meta = shards.read_meta(normalized.path)
    model.metadata.update({"framework": "keras", "epochs_run": result.epochs_run, "device": result.device})
    return log_model(result.model_path, meta["image_size"], tracking_uri, run_id, meta["classes"])

"""Train: a Keras model on the normalized (and augmented) training shards.

Transfer models train in two phases (backbone frozen, then fine-tuned). Early
stopping on a validation metric of the config's choice with the best weights restored;
per-epoch metrics to MLflow; a backup after each epoch in the step's output folder so a
killed step resumes from its last completed epoch; mixed precision, XLA and
MirroredStrategy when GPUs are visible; deterministic with a seed on CPU. Several
workers (a TFJob) train under MultiWorkerMirroredStrategy in the custom loop of
``components.distributed``. ``train.ensemble`` trains several models in turn and saves
one model that averages their probabilities.
"""

import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
from kfp import dsl

from components import distributed, shards
from pipeline.config import Config, TrainConfig

MODEL_FILE = "model.keras"
BEST_WEIGHTS_FILE = "best.weights.h5"
BEST_STATE_FILE = "best.json"
EPOCH_LOG_FILE = "epochs.jsonl"
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


@dataclass
class Devices:
    strategy: object  # tf.distribute.Strategy
    description: str
    gpu: bool
    workers: int = 1


def tf_config_workers() -> int:
    """How many workers TF_CONFIG names (a TFJob's Training Operator sets it); 0 without it."""
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def configure_devices(seed: int) -> Devices:
    """GPUs: mixed precision and MirroredStrategy over all visible ones. CPU: op
    determinism, so a seeded run repeats exactly. Several workers in TF_CONFIG:
    MultiWorkerMirroredStrategy over all their GPUs or CPUs."""
    import keras
    import tensorflow as tf

    workers = tf_config_workers()
    keras.utils.set_random_seed(seed)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    # Connects to the other workers, so it comes after the GPU settings (they cannot
    # change once TensorFlow has started its devices).
    multi_worker = tf.distribute.MultiWorkerMirroredStrategy() if workers > 1 else None
    if gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
        if multi_worker:
            return Devices(multi_worker, f"{workers} workers (MultiWorkerMirroredStrategy), {len(gpus)} GPU(s) each, "
                           "mixed_float16", True, workers)
        return Devices(tf.distribute.MirroredStrategy(), f"{len(gpus)} GPU(s), mixed_float16, XLA", True)
    keras.mixed_precision.set_global_policy("float32")
    tf.config.experimental.enable_op_determinism()
    if multi_worker:
        return Devices(multi_worker, f"{workers} workers (MultiWorkerMirroredStrategy), CPU", False, workers)
    return Devices(tf.distribute.get_strategy(), "CPU", False)


# ---- input pipeline -----------------------------------------------------------


def _augment_fn(zoom: float = 0.0):
    """Random flips, 90-degree turns, brightness and contrast, and with ``zoom`` a random
    square crop of (1 - zoom) to 1 of the side scaled back up, from stateless ops fed by
    a seeded random stream: deterministic, and no Python in the hot loop."""
    import tensorflow as tf

    def augment(image, label, seeds):
        s = tf.random.experimental.stateless_split(seeds, 7)
        if zoom:
            size = tf.shape(image)[:2]
            side = tf.random.stateless_uniform([], s[5], 1.0 - zoom, 1.0)
            corner = tf.random.stateless_uniform([2], s[6], 0.0, 1.0) * (1.0 - side)
            box = tf.concat([corner, corner + side], 0)[tf.newaxis]
            image = tf.image.crop_and_resize(image[tf.newaxis], box, [0], size)[0]
        image = tf.image.stateless_random_flip_left_right(image, s[0])
        image = tf.image.stateless_random_flip_up_down(image, s[1])
        turns = tf.random.stateless_uniform([], s[2], 0, 4, dtype=tf.int32)
        image = tf.image.rot90(image, turns)
        image = tf.image.stateless_random_brightness(image, 0.1 * 255.0, s[3])
        image = tf.image.stateless_random_contrast(image, 0.9, 1.1, s[4])
        return tf.clip_by_value(image, 0.0, 255.0), label

    return augment


def training_dataset(paths: list[str], image_size: int, tc: TrainConfig, num_classes: int, count: int | None = None):
    """Batches of (float32 image in [0, 255], label) for fit(): parallel parse, optional
    cache of the decoded uint8 images, shuffle, balanced sampling, online augmentation,
    prefetch. ``count``, the number of records, makes the epoch length known to Keras
    (else every epoch ends by running out of data, with a warning)."""
    import tensorflow as tf

    files = tf.data.Dataset.from_tensor_slices(paths)
    records = files.interleave(tf.data.TFRecordDataset, cycle_length=max(1, min(4, len(paths))),
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    parse = shards.parse_fn(image_size)
    ds = records.map(lambda r: parse(r)[:2], num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if count is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(count))
    if tc.cache:
        ds = ds.cache()
    if tc.imbalance == "balanced_sampling":
        # Each class its own endless, shuffled stream; draw from them uniformly.
        per_class = [ds.filter(lambda _, label, c=c: label == c).shuffle(1024, seed=tc.seed + c).repeat()
                     for c in range(num_classes)]
        ds = tf.data.Dataset.sample_from_datasets(per_class, weights=[1.0 / num_classes] * num_classes,
                                                  seed=tc.seed, stop_on_empty_dataset=False)
    else:
        ds = ds.shuffle(4096, seed=tc.seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda image, label: (tf.cast(image, tf.float32), label), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    if tc.online_augment:
        seeds = tf.data.Dataset.random(seed=tc.seed, rerandomize_each_iteration=True).batch(2)
        augment = _augment_fn(tc.online_zoom)
        ds = tf.data.Dataset.zip(ds, seeds).map(lambda example, s: augment(*example, s),
                                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(tc.batch_size).prefetch(tf.data.AUTOTUNE)


def training_class_counts(normalized_dir: str | Path, augmented_dir: str | Path | None) -> np.ndarray:
    """Images per class the model trains on: the train split plus what augment added."""
    counts = np.asarray(shards.read_meta(normalized_dir)["class_counts"]["train"])
    policy = Path(augmented_dir or "", "policy.json")
    if augmented_dir and policy.is_file():
        counts = counts + np.asarray(json.loads(policy.read_text())["added"])
    return counts


def class_weights(counts: np.ndarray, cap: float = 0.0) -> dict[int, float]:
    """Inverse-frequency weights (mean 1 over the training images), at most ``cap`` (0: no cap)."""
    weights = {i: float(counts.sum() / (len(counts) * max(int(c), 1))) for i, c in enumerate(counts)}
    return {i: min(w, cap) if cap else w for i, w in weights.items()}


# ---- loss and schedule ----------------------------------------------------------


def sparse_focal_loss(gamma: float):
    """Focal loss (Lin et al. 2017) on integer labels: cross-entropy scaled by
    (1 - p_true)^gamma, so easy majority-class images count less."""
    import keras
    from keras import ops

    def focal_loss(y_true, y_pred):
        ce = keras.losses.sparse_categorical_crossentropy(y_true, y_pred)
        return ops.power(1.0 - ops.exp(-ce), gamma) * ce

    return focal_loss


def logit_adjusted_loss(class_counts: np.ndarray, tau: float = 1.0):
    """Logit-adjusted cross-entropy (Menon et al. 2021) on the model's probabilities:
    the loss sees softmax(logits + tau * log prior), the model outputs softmax(logits).
    Frequent classes must then win by their prior's margin, so the plain argmax aims at
    balanced error, without class weights scaling rare classes' gradients a hundredfold."""
    import keras
    from keras import ops

    prior = np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)
    prior_weight = ops.convert_to_tensor((prior / prior.sum()) ** tau, dtype="float32")

    def logit_adjusted(y_true, y_pred):
        adjusted = ops.cast(y_pred, "float32") * prior_weight
        adjusted = adjusted / ops.sum(adjusted, axis=-1, keepdims=True)
        return keras.losses.sparse_categorical_crossentropy(y_true, adjusted)

    return logit_adjusted


def _learning_rate(tc: TrainConfig, peak: float, phase_steps: int, steps_per_epoch: int):
    """Cosine: a linear warm-up over the first epoch (a fresh Adam's first steps move
    every pretrained weight by about the full rate), then decay to 1 % of the peak."""
    import keras

    if tc.lr_schedule == "cosine":
        warmup = min(steps_per_epoch, phase_steps // 4)
        return keras.optimizers.schedules.CosineDecay(peak * 0.01, decay_steps=max(1, phase_steps - warmup), alpha=0.01,
                                                      warmup_target=peak, warmup_steps=warmup)
    return peak


# ---- callbacks ------------------------------------------------------------------


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


def _validation_callback(val_images: np.ndarray, val_labels: np.ndarray, classes: list[str], batch_size: int,
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


def _epoch_log_callback(out: Path, tracking_uri: str, run_id: str, metric_prefix: str = ""):
    """Appends every finished epoch's logs to epochs.jsonl and to the MLflow run (with
    ``metric_prefix`` before each name there)."""
    import keras

    client = None
    if run_id:
        from pipeline import tracking

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


def _time_budget_callback(minutes: float, started: float):
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


# ---- training -------------------------------------------------------------------


def _fit_phase(model, train_ds, steps_per_epoch: int | None, first_epoch: int, last_epoch: int, backup_dir: Path,
               callbacks: list, class_weight: dict | None) -> None:
    import keras

    # BackupAndRestore sets model._initial_epoch when it restores, and Keras prefers that
    # over fit(initial_epoch=...): clear a value left over from the previous phase.
    model._initial_epoch = None
    model.fit(train_ds, epochs=last_epoch, initial_epoch=first_epoch, steps_per_epoch=steps_per_epoch,
              callbacks=[keras.callbacks.BackupAndRestore(str(backup_dir)), *callbacks],
              class_weight=class_weight, verbose=2)


@dataclass
class TrainingData:
    """What every model trained in one step shares: the splits' shards, sizes and classes."""
    meta: dict
    train_paths: list[str]
    class_counts: np.ndarray
    val_images: np.ndarray  # float32, as the models take them
    val_labels: np.ndarray

    @classmethod
    def load(cls, normalized_dir: str | Path, augmented_dir: str | Path | None) -> "TrainingData":
        meta = shards.read_meta(normalized_dir)
        train_paths = shards.shard_paths(normalized_dir, "train")
        if augmented_dir:
            train_paths += shards.shard_paths(augmented_dir, "train")
        val_images, val_labels, _ = shards.read_all(shards.shard_paths(normalized_dir, "val"), meta["image_size"])
        return cls(meta, train_paths, training_class_counts(normalized_dir, augmented_dir),
                   val_images.astype(np.float32), val_labels)


def train(normalized_dir: str | Path, augmented_dir: str | Path | None, cfg: Config, output_dir: str | Path,
          tracking_uri: str = "", mlflow_run_id: str = "", extra_callbacks: Sequence = ()) -> TrainResult:
    """Train ``cfg.train.model`` and save the best epoch's model to ``output_dir``; with
    ``train.ensemble``, train every member in turn (in ``output_dir/members/<i>``) and save
    a model that averages their probabilities.

    Started again on the same ``output_dir`` after being killed, it resumes from the last
    completed epoch (and skips a finished frozen phase, or a finished ensemble member).
    ``extra_callbacks`` run after ours at every epoch end."""
    import keras

    members = cfg.train.members()
    devices = configure_devices(cfg.train.seed)
    data = TrainingData.load(normalized_dir, augmented_dir)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if devices.workers > 1:
        distributed.copy_folder_from_chief(devices.strategy, out)
    if len(members) == 1:
        return _train_model(cfg.train, data, cfg, devices, out, tracking_uri, mlflow_run_id, extra_callbacks)

    started = time.monotonic()
    results = []
    for i, tc in enumerate(members):
        if cfg.train.max_train_minutes:  # the whole ensemble's budget: what is left, shared by the members to come
            left = cfg.train.max_train_minutes - (time.monotonic() - started) / 60
            tc = replace(tc, max_train_minutes=max(left, 0.01) / (len(members) - i))
        member_out = out / "members" / str(i)
        if (member_out / HISTORY_FILE).is_file():
            results.append(_finished_model(member_out))
            continue
        print(f"ensemble member {i + 1}/{len(members)}: {tc.model}"
              f"{f' alpha {tc.alpha}' if tc.model.startswith('mobilenet') else ''}, seed {tc.seed}", flush=True)
        results.append(_train_model(tc, data, cfg, devices, member_out, tracking_uri, mlflow_run_id, extra_callbacks,
                                    metric_prefix=f"member{i}_"))

    with devices.strategy.scope():
        model = ensemble_model([keras.models.load_model(r.model_path, compile=False) for r in results],
                               data.meta["image_size"])
    model_path = out / MODEL_FILE
    model.save(model_path)
    val_metrics = validation_metrics(model, data.val_images, data.val_labels,
                                     data.meta["classes"], cfg.evaluate.batch_size, cfg.evaluate.melanoma_class)
    if mlflow_run_id:
        from pipeline import tracking

        tracking.client(tracking_uri).log_batch(mlflow_run_id, metrics=tracking.metrics_at(
            {f"ensemble_{k}": v for k, v in val_metrics.items()}))
    (out / "classes.json").write_text(json.dumps(data.meta["classes"]))
    history = {"members": [{"model_path": r.model_path, "best_epoch": r.best_epoch, "epochs_run": r.epochs_run}
                           for r in results], "ensemble_validation": val_metrics, "device": devices.description}
    (out / HISTORY_FILE).write_text(json.dumps(history, indent=1))
    return TrainResult(str(model_path), {f"ensemble_{k}": [v] for k, v in val_metrics.items()},
                       sum(r.epochs_run for r in results), -1, devices.description, results)


def ensemble_model(members: list, image_size: int):
    """One model whose output is the mean of the members' probabilities (each member a
    whole saved model, preprocessing included)."""
    import keras

    inputs = keras.Input((image_size, image_size, 3), name="image")
    outputs = []
    for i, member in enumerate(members):
        member.name = f"member_{i}"  # two members of one architecture would share a name
        outputs.append(member(inputs))
    probs = keras.layers.Average(dtype="float32", name="probabilities")(outputs)
    return keras.Model(inputs, probs, name="ensemble")


def _finished_model(out: Path) -> TrainResult:
    """The result of a model trained to the end in ``out`` by an earlier, killed run."""
    saved = json.loads((out / HISTORY_FILE).read_text())
    return TrainResult(str(out / MODEL_FILE), saved["history"], len(read_epoch_log(out)), saved["best_epoch"],
                       saved["device"])


def _train_model(tc: TrainConfig, data: TrainingData, cfg: Config, devices: Devices, out: Path, tracking_uri: str,
                 mlflow_run_id: str, extra_callbacks: Sequence, metric_prefix: str = "") -> TrainResult:
    """One model, both phases, into ``out``; ``metric_prefix`` names its MLflow metrics."""
    import keras

    from components.models import build_model, is_transfer, set_backbone_trainable

    classes, size = data.meta["classes"], data.meta["image_size"]
    counts = data.class_counts
    train_ds = training_dataset(data.train_paths, size, tc, len(classes), int(counts.sum()))
    steps_per_epoch = math.ceil(counts.sum() / tc.batch_size)
    out.mkdir(parents=True, exist_ok=True)
    transfer = is_transfer(tc.model)
    frozen_epochs = tc.frozen_epochs if transfer else 0
    loss = (sparse_focal_loss(tc.focal_gamma) if tc.imbalance == "focal"
            else logit_adjusted_loss(counts) if tc.imbalance == "logit_adjusted"
            else keras.losses.SparseCategoricalCrossentropy())
    class_weight = class_weights(counts, tc.max_class_weight) if tc.imbalance == "class_weight" else None
    tracker = BestEpochTracker(out, tc.monitor, tc.early_stopping_patience)
    started = time.monotonic()

    with devices.strategy.scope():
        keras.utils.set_random_seed(tc.seed)
        model = build_model(tc.model, len(classes), size, data.meta["mean"], data.meta["std"], dropout=tc.dropout,
                            weights=tc.weights, alpha=tc.alpha)

        def compile_for(learning_rate: float, phase_epochs: int) -> None:
            schedule = _learning_rate(tc, learning_rate, phase_epochs * steps_per_epoch, steps_per_epoch)
            model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, metrics=["accuracy"],
                          jit_compile=devices.gpu)

    def callbacks(phase_start: int) -> list:
        return [_validation_callback(data.val_images, data.val_labels, classes,
                                     cfg.evaluate.batch_size, cfg.evaluate.melanoma_class),
                tracker.callback(phase_start), _epoch_log_callback(out, tracking_uri, mlflow_run_id, metric_prefix),
                *([_time_budget_callback(tc.max_train_minutes, started)] if tc.max_train_minutes else []),
                *extra_callbacks]

    # balanced_sampling repeats forever, and workers must agree on when an epoch ends:
    # epochs are a fixed number of steps then.
    fixed_steps = steps_per_epoch if tc.imbalance == "balanced_sampling" or devices.workers > 1 else None
    fit_phase = partial(distributed.fit_phase, global_batch_size=tc.batch_size) if devices.workers > 1 else _fit_phase
    if frozen_epochs:
        if (out / FROZEN_DONE_FILE).is_file():
            model.load_weights(out / FROZEN_DONE_FILE)
        else:
            with devices.strategy.scope():
                set_backbone_trainable(model, 0)
                compile_for(tc.learning_rate, frozen_epochs)
            fit_phase(model, train_ds, fixed_steps, 0, frozen_epochs, out / "backup" / "frozen",
                      callbacks(0), class_weight)
            model.save_weights(out / FROZEN_DONE_FILE)
    if tc.epochs > frozen_epochs:
        with devices.strategy.scope():
            if transfer:
                set_backbone_trainable(model, tc.fine_tune_layers or None,
                                       freeze_batchnorm=bool(tc.weights) and not tc.fine_tune_batchnorm,
                                       batchnorm_momentum=tc.batchnorm_momentum)
            compile_for(tc.fine_tune_learning_rate if transfer else tc.learning_rate, tc.epochs - frozen_epochs)
        fit_phase(model, train_ds, fixed_steps, frozen_epochs, tc.epochs, out / "backup" / "fine_tune",
                  callbacks(frozen_epochs), class_weight)

    tracker.restore_best(model)
    model_path = out / MODEL_FILE
    model.save(model_path)
    epochs = read_epoch_log(out)
    history = {k: [e.get(k) for e in epochs] for k in epochs[0] if k != "epoch"} if epochs else {}
    (out / "classes.json").write_text(json.dumps(classes))
    (out / HISTORY_FILE).write_text(json.dumps(
        {"history": history, "best_epoch": tracker.best_epoch, "monitor": tc.monitor, "device": devices.description},
        indent=1))
    return TrainResult(str(model_path), history, len(epochs), tracker.best_epoch, devices.description)


def log_model(model_path: str, image_size: int, tracking_uri: str, run_id: str, classes: list[str],
              resize_mode: str = "pad") -> str:
    """Log the Keras model to the MLflow run with signature and input example; return its URI."""
    import keras
    import mlflow
    from mlflow.models import infer_signature

    from pipeline import tracking

    model = keras.models.load_model(model_path, compile=False)
    example = np.full((1, image_size, image_size, 3), 128.0, dtype=np.float32)
    signature = infer_signature(example, model.predict(example, verbose=0))
    tracking.use_store(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.tensorflow.log_model(model, name="model", signature=signature, input_example=example,
                                           metadata={"classes": classes, "image_size": image_size,
                                                     "resize_mode": resize_mode})
    return info.model_uri


def train_step(normalized: dsl.Input[dsl.Dataset], augmented: dsl.Input[dsl.Dataset], config: dict,
               tracking_uri: str, kfp_run_name: str, kfp_run_id: str, model: dsl.Output[dsl.Model]) -> str:
    """KFP wrapper: the train step. Returns the MLflow model URI."""
    from components import shards
    from components.errors import user_errors
    from components.train import log_model, train
    from pipeline import tracking
    from pipeline.config import Config

    cfg = Config.from_dict(config)
    run_id = tracking.pipeline_run(tracking_uri, cfg.mlflow.experiment, kfp_run_name, kfp_run_id, cfg.flat_params())
    with user_errors():
        result = train(normalized.path, augmented.path, cfg, model.path, tracking_uri, run_id)
    meta = shards.read_meta(normalized.path)
    model.metadata.update({"framework": "keras", "epochs_run": result.epochs_run, "device": result.device,
                           "best_epoch": [m.best_epoch for m in result.members] or result.best_epoch})
    return log_model(result.model_path, meta["image_size"], tracking_uri, run_id, meta["classes"],
                     meta.get("resize_mode", "pad"))

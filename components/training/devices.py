"""Where training runs: GPUs with mixed precision and MirroredStrategy, several workers
(a TFJob's TF_CONFIG) under MultiWorkerMirroredStrategy, or a deterministic CPU."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass


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
            return Devices(
                multi_worker,
                f"{workers} workers (MultiWorkerMirroredStrategy), {len(gpus)} GPU(s) each, mixed_float16",
                True,
                workers,
            )
        return Devices(tf.distribute.MirroredStrategy(), f"{len(gpus)} GPU(s), mixed_float16, XLA", True)
    keras.mixed_precision.set_global_policy("float32")
    tf.config.experimental.enable_op_determinism()
    if multi_worker:
        return Devices(multi_worker, f"{workers} workers (MultiWorkerMirroredStrategy), CPU", False, workers)
    return Devices(tf.distribute.get_strategy(), "CPU", False)

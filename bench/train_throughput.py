"""Training throughput: images/s of the real input pipeline (TFRecord shards ->
parse -> cache -> shuffle -> augment -> batch -> prefetch) + model, against the same
model fed from tensors already in memory. A ratio well under 1 means the input
pipeline, not the model, is the bottleneck. Prints one JSON object.

    python bench/train_throughput.py [--normalized DIR] [--model mobilenet_v2 --alpha 0.35 --size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def synthetic_shards(root: Path, size: int, per_class: int) -> Path:
    """The project's synthetic images through the real ingest -> split -> normalize steps."""
    from components.core.settings import DataConfig
    from components.data.ingest import ingest
    from components.data.normalize import normalize
    from components.data.split import split

    data = DataConfig(
        image_size=size,
        synthetic_images_per_class=per_class,
        synthetic_image_size=size,
        val_fraction=0.1,
        test_fraction=0.1,
    )
    ingest("", data, root / "ingest")
    split(root / "ingest", data, root / "split")
    normalize(root / "split", data, root / "normalized", synthetic=True)
    return root / "normalized"


def images_per_second(model, dataset, steps: int, batch_size: int) -> float:
    model.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)  # trace and warm up
    started = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    return steps * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--normalized", help="Normalized shards folder (default: synthetic shards made here).")
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=160, help="Synthetic images per class.")
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from components.core.settings import TrainConfig
    from components.data import tfrecords
    from components.training.devices import configure_devices
    from components.training.models import build_model
    from components.training.train_input import training_dataset

    devices = configure_devices(123)
    with tempfile.TemporaryDirectory() as tmp:
        normalized = (
            Path(args.normalized) if args.normalized else synthetic_shards(Path(tmp), args.size, args.per_class)
        )
        meta = tfrecords.read_meta(normalized)
        size, classes = meta["image_size"], meta["classes"]
        paths = tfrecords.shard_paths(normalized, "train")
        tc = TrainConfig(model=args.model, alpha=args.alpha, batch_size=args.batch_size, online_augment=True)
        pipeline = training_dataset(paths, size, tc, len(classes)).repeat()
        images, labels, _ = tfrecords.read_all(paths, size)
        in_memory = (
            tf.data.Dataset.from_tensor_slices((tf.constant(images.astype(np.float32)), tf.constant(labels)))
            .repeat()
            .batch(args.batch_size)
            .prefetch(tf.data.AUTOTUNE)
        )
        # The input pipeline alone, no model: its ceiling.
        iterator = iter(pipeline)
        next(iterator)
        started = time.perf_counter()
        for _ in range(args.steps):
            next(iterator)
        input_only = args.steps * args.batch_size / (time.perf_counter() - started)

        with devices.strategy.scope():
            model = build_model(args.model, len(classes), size, meta["mean"], meta["std"], alpha=args.alpha)
            model.compile(
                optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy", jit_compile=devices.gpu
            )
        from_pipeline = images_per_second(model, pipeline, args.steps, args.batch_size)
        from_memory = images_per_second(model, in_memory, args.steps, args.batch_size)
    print(
        json.dumps(
            {
                "benchmark": "train_throughput",
                "model": args.model,
                "alpha": args.alpha,
                "image_size": size,
                "batch_size": args.batch_size,
                "steps": args.steps,
                "device": devices.description,
                "cpu_count": os.cpu_count(),
                "machine": platform.machine(),
                "input_pipeline_only_images_per_s": round(input_only, 1),
                "train_from_input_pipeline_images_per_s": round(from_pipeline, 1),
                "train_from_memory_images_per_s": round(from_memory, 1),
                "pipeline_to_memory_ratio": round(from_pipeline / from_memory, 3),
                "step_time_ms": round(1000 * args.batch_size / from_pipeline, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

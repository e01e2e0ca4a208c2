"""Training step time and images/s of the project's models by numeric precision
(float32, mixed_float16, mixed_bfloat16), fed from a batch already on the device, so
the number is the model's ceiling, not the input pipeline's. One JSON line per
setting, then a summary object.

Only Keras and NumPy: it runs under any Keras backend. The GPU machine lent to some
tasks has JAX and PyTorch but no TensorFlow with CUDA, so there it runs with
KERAS_BACKEND=jax; the numbers are the same network and the same Keras training step,
compiled by XLA (as train.py asks TensorFlow to do on a GPU).

    python bench/train_step_precision.py --model mobilenet_v2 --alpha 0.5 --size 224 \
        --batch-sizes 64,256 --precisions float32,mixed_float16,mixed_bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def accelerator() -> str:
    """What the backend computes on, in words."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return ", ".join(sorted({d.device_kind for d in jax.devices()}))
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"{len(gpus)} GPU(s)" if gpus else "cpu"


def measure(
    model_name: str, alpha: float, size: int, batch_size: int, precision: str, trainable: str, steps: int, warmup: int
) -> dict:
    import keras
    import numpy as np

    from components.training.models import build_model, set_backbone_trainable

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(precision)
    num_classes = 7
    model = build_model(model_name, num_classes, size, [127.5] * 3, [64.0] * 3, alpha=alpha)
    set_backbone_trainable(model, 0 if trainable == "head" else None)
    # Keras wraps the optimizer in a LossScaleOptimizer itself under mixed_float16.
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    images = keras.ops.convert_to_tensor(rng.uniform(0, 255, (batch_size, size, size, 3)).astype("float32"))
    labels = keras.ops.convert_to_tensor(rng.integers(0, num_classes, batch_size).astype("int32"))

    started = time.perf_counter()
    model.train_on_batch(images, labels)  # traces and compiles
    compile_s = time.perf_counter() - started
    for _ in range(warmup):
        model.train_on_batch(images, labels)
    step_times = []
    for _ in range(steps):
        started = time.perf_counter()
        loss = model.train_on_batch(images, labels)  # returns host floats: the step has finished
        step_times.append(time.perf_counter() - started)
    median = float(np.median(step_times))
    return {
        "model": model_name,
        "alpha": alpha if model_name.startswith("mobilenet") else None,
        "image_size": size,
        "batch_size": batch_size,
        "precision": precision,
        "trainable": trainable,
        "trainable_weights": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "compile_s": round(compile_s, 1),
        "step_time_ms_median": round(1000 * median, 2),
        "step_time_ms_p90": round(1000 * float(np.percentile(step_times, 90)), 2),
        "images_per_s": round(batch_size / median, 1),
        "final_loss_finite": bool(np.isfinite(loss)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-sizes", default="64")
    parser.add_argument("--precisions", default="float32,mixed_float16,mixed_bfloat16")
    parser.add_argument(
        "--trainable",
        choices=("head", "all"),
        default="all",
        help="head: the frozen-backbone phase; all: fine-tuning the whole network.",
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()

    import keras

    results = []
    for batch_size in map(int, args.batch_sizes.split(",")):
        for precision in args.precisions.split(","):
            result = measure(
                args.model, args.alpha, args.size, batch_size, precision, args.trainable, args.steps, args.warmup
            )
            print(json.dumps(result), flush=True)
            results.append(result)
    print(
        json.dumps(
            {
                "benchmark": "train_step_precision",
                "keras_backend": keras.backend.backend(),
                "keras_version": keras.__version__,
                "device": accelerator(),
                "cpu_count": os.cpu_count(),
                "machine": platform.machine(),
                "best": max(results, key=lambda r: r["images_per_s"]),
                "speedup_over_float32": {
                    f"{r['precision']}@{r['batch_size']}": round(r["images_per_s"] / f32["images_per_s"], 2)
                    for r in results
                    for f32 in results
                    if f32["precision"] == "float32" and f32["batch_size"] == r["batch_size"] and r is not f32
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

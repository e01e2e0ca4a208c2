"""Evaluate throughput: images/s of scoring (model.predict on in-memory images, with and
without 8-view test-time augmentation) and of the whole `lesionpipe evaluate` path for
files (decode + resize as normalize does + predict). Prints one JSON object.

    python bench/evaluate_throughput.py [--model-uri URI] [--model mobilenet_v2 --alpha 0.35 --size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", help="A trained model (any URI lesionpipe predict takes); default: a fresh one.")
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    import numpy as np

    from components.data import synthetic
    from components.evaluation.predict import find_images, predict_files
    from components.scoring.inference import LoadedModel, load_model, predict_probabilities
    from components.training.models import build_model

    if args.model_uri:
        loaded = load_model(args.model_uri)
    else:
        model = build_model(args.model, 4, args.size, [128.0] * 3, [64.0] * 3, alpha=args.alpha)
        loaded = LoadedModel(model, list(synthetic.CLASSES), args.size, "pad", "fresh")
    size = loaded.image_size
    images = np.random.default_rng(0).integers(0, 256, (args.images, size, size, 3)).astype(np.uint8)

    def rate(fn, n: int) -> float:
        fn(images[: args.batch_size])  # trace and warm up
        started = time.perf_counter()
        fn(images[:n])
        return n / (time.perf_counter() - started)

    plain = rate(lambda x: predict_probabilities(loaded.model, x, args.batch_size), args.images)
    tta = rate(lambda x: predict_probabilities(loaded.model, x, args.batch_size, tta=True), args.images // 4)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.images):
            synthetic.render(synthetic.CLASSES[i % 4], i, 200, 1).convert("RGB").resize((200, 150)).save(
                Path(tmp, f"{i:04d}.jpg"), quality=90
            )
        files = find_images([tmp])
        started = time.perf_counter()
        predict_files(loaded, files, batch_size=args.batch_size)
        from_files = len(files) / (time.perf_counter() - started)
    print(
        json.dumps(
            {
                "benchmark": "evaluate_throughput",
                "model": args.model_uri or f"{args.model} alpha {args.alpha} (untrained)",
                "image_size": size,
                "batch_size": args.batch_size,
                "cpu_count": os.cpu_count(),
                "predict_in_memory_images_per_s": round(plain, 1),
                "predict_tta8_images_per_s": round(tta, 1),
                "files_decode_resize_predict_images_per_s": round(from_files, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

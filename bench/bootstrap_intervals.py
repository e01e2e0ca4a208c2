"""Bootstrap cost: seconds (wall and CPU) to compute the 95 % intervals of every headline metric
(components.scoring.intervals) and one paired difference (the champion gate's) on
synthetic test splits. Prints one JSON object.

    python bench/bootstrap_intervals.py [--rows 10000] [--classes 7] [--images-per-lesion 1.4] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from components.scoring.intervals import intervals, paired_difference, resampling
from components.scoring.metrics import Scored, classification_metrics


def planted(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(classes, n, p=np.r_[0.67, np.full(classes - 1, 0.33 / (classes - 1))])
    probs = rng.dirichlet(np.ones(classes), n)
    probs[np.arange(n), y] += 0.4
    return y, probs / probs.sum(1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1130, 10000])
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--images-per-lesion", type=float, default=1.4, help="HAM10000: 10,015 images, 7,470 lesions")
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    classes = [f"class{i}" for i in range(args.classes - 1)] + ["melanoma"]
    results = []
    for n in args.rows:
        y, probs = planted(n, args.classes, seed=n)
        count = int(n / args.images_per_lesion)  # every lesion has an image, some several
        lesions = np.r_[np.arange(count), np.random.default_rng(0).integers(0, count, n - count)].astype(str).tolist()
        plan = resampling(lesions, n, "lesions", args.resamples)
        start, cpu = time.perf_counter(), time.process_time()
        found = intervals(plan, y, probs, classes)
        intervals_s, intervals_cpu_s = time.perf_counter() - start, time.process_time() - cpu
        other = np.roll(probs, 1, axis=0)
        scored = [Scored(y, p, classification_metrics(y, p, classes)) for p in (probs, other)]
        start, cpu = time.perf_counter(), time.process_time()
        paired_difference("balanced_accuracy", plan, *scored)
        paired_s, paired_cpu_s = time.perf_counter() - start, time.process_time() - cpu
        results.append(
            {
                "rows": n,
                "lesions": plan.groups,
                "classes": args.classes,
                "resamples": args.resamples,
                "intervals_s": round(intervals_s, 3),
                "intervals_cpu_s": round(intervals_cpu_s, 3),
                "paired_difference_s": round(paired_s, 3),
                "paired_difference_cpu_s": round(paired_cpu_s, 3),
                "melanoma_auc_interval": [round(v, 4) for v in found["values"]["melanoma_auc"]],
            }
        )
    print(json.dumps({"bench": "bootstrap_intervals", "results": results}, indent=2))


if __name__ == "__main__":
    main()

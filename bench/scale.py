"""Cost curve of the data steps and one training epoch against the number of images.

For each size it generates a source (a folder tree of small JPEGs in a temporary folder,
never committed) with planted exact duplicates, near-duplicates (re-encoded, resized
copies) and label conflicts, then runs ingest, split, normalize, augment and one short
training epoch, each in its own process so that each step's peak RSS is its own. Prints
one JSON object per size and step:

    {"images", "step", "seconds", "peak_rss_mb", "images_per_s", "load_avg_1min"}

(``load_avg_1min`` as the step ends: above the 2 of a quiet 2-core machine, other work
shared it), and per size one with ``step: "planted"``: ``planted_found`` / ``planted_total`` (planted
duplicate, conflict and near-duplicate groups that ingest reported).

    nice -n 10 python bench/scale.py --sizes 10000,30000 [--with-400k] [--keep DIR] | tee bench/results/scale.jsonl
    python bench/plot_scale.py bench/results/scale.jsonl -o docs/scale.png

``--sizes 400000`` (or ``--with-400k``) is ISIC 2024 scale: ~1 GB of generated JPEGs in the
temporary folder and, on a 2-core machine, about an hour.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = ("ingest", "split", "normalize", "augment", "train")
IMAGE_SIDE = 64  # ~2 kB JPEGs
IMAGE_SIZE = 32  # data.image_size: what normalize stores and the model sees
PLANTED_EVERY = 100  # one planted group of each kind per this many images
SEED = 7


# ---- the source ------------------------------------------------------------------


def make_source(root: Path, images: int) -> dict:
    """``images`` JPEGs under ``root/<class>/``, of which per PLANTED_EVERY: one exact
    copy under the same class, one exact copy under another class (a label conflict) and
    one re-encoded, resized copy (a near-duplicate). Returns the planted groups."""
    import io

    from PIL import Image

    from components.data import synthetic

    classes = synthetic.CLASSES
    planted = {"duplicate": [], "label_conflict": [], "near_duplicate": []}
    kinds = list(planted)
    originals = images - 3 * (images // PLANTED_EVERY)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
    for i in range(originals):
        cls = classes[i % len(classes)]
        img = synthetic.render(cls, i, IMAGE_SIDE, SEED)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        relpath = f"{cls}/img_{i:07d}.jpg"
        (root / relpath).write_bytes(buf.getvalue())
        kind = kinds[(i // 32) % len(kinds)]
        if i % 32 or len(planted[kind]) >= images // PLANTED_EVERY:
            continue
        if kind == "duplicate":
            other = f"{cls}/copy_{i:07d}.jpg"
            (root / other).write_bytes(buf.getvalue())
        elif kind == "label_conflict":
            other = f"{classes[(i + 1) % len(classes)]}/conflict_{i:07d}.jpg"
            (root / other).write_bytes(buf.getvalue())
        else:
            other = f"{cls}/near_{i:07d}.jpg"
            near = io.BytesIO()
            img.resize((IMAGE_SIDE - 8, IMAGE_SIDE - 8), Image.Resampling.LANCZOS).save(near, format="JPEG", quality=75)
            (root / other).write_bytes(near.getvalue())
        planted[kind].append([relpath, other])
    return planted


def planted_found(planted: dict, report: dict) -> tuple[int, int]:
    exact = [set(g["files"]) for g in report["duplicate_group_details"]]
    conflicts = [set(g["files"]) for g in report["duplicate_group_details"] if g["label_conflict"]]
    near = [set(g["files"]) for g in report["near_duplicate_group_details"]]
    found = total = 0
    for kind, groups in (("duplicate", exact), ("label_conflict", conflicts), ("near_duplicate", near)):
        for pair in planted[kind]:
            total += 1
            found += any(set(pair) <= g for g in groups)
    return found, total


# ---- one step, in its own process --------------------------------------------------


def configs():
    from pipeline.config import RunConfig

    return RunConfig.from_dict(
        {
            "data": {"image_size": IMAGE_SIZE, "num_shards": 2, "ingest_workers": 4, "format": "folders"},
            "augment": {"max_factor": 2.0},
            "train": {"epochs": 1, "batch_size": 128, "cache": False, "early_stopping_patience": 1},
        }
    )


def run_step(step: str, source: str, work: Path) -> int:
    """Run ``step`` on the outputs of the one before it (ingest: return the files found)."""
    cfg = configs()
    if step == "ingest":
        from components.data.ingest import ingest

        return ingest(source, cfg.data, work / "ingest").report["files_found"]
    if step == "split":
        from components.data.split import split

        split(work / "ingest", cfg.data, work / "split")
    elif step == "normalize":
        from components.data.normalize import normalize

        normalize(work / "split", cfg.data, work / "normalized")
    elif step == "augment":
        from components.data.augment import augment

        augment(work / "normalized", cfg.augment, work / "augmented")
    elif step == "train":
        from components.training.train import train

        train(work / "normalized", work / "augmented", cfg.train, work / "train")
    else:
        raise ValueError(step)
    return 0


def child(step: str, source: str, work: Path) -> None:
    start = time.perf_counter()
    handled = run_step(step, source, work)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("STEP-RESULT " + json.dumps({"seconds": seconds, "peak_rss_mb": peak_kb / 1024, "handled": handled}))


def measure(step: str, source: Path, work: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", step, "--source", str(source), "--work", str(work)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("STEP-RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{step} failed (exit {proc.returncode})")
    return json.loads(lines[-1].removeprefix("STEP-RESULT "))


def bench(images: int, scratch: Path) -> None:
    source, work = scratch / f"source-{images}", scratch / f"work-{images}"
    start = time.perf_counter()
    planted = make_source(source, images)
    files = sum(1 for p in source.rglob("*.jpg"))
    print(
        json.dumps(
            {
                "images": files,
                "step": "generate",
                "seconds": round(time.perf_counter() - start, 2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "images_per_s": round(files / (time.perf_counter() - start), 1),
            }
        ),
        flush=True,
    )
    for step in STEPS:
        r = measure(step, source, work)
        print(
            json.dumps(
                {
                    "images": files,
                    "step": step,
                    "seconds": round(r["seconds"], 2),
                    "peak_rss_mb": round(r["peak_rss_mb"], 1),
                    "images_per_s": round(files / r["seconds"], 1),
                    "load_avg_1min": round(os.getloadavg()[0], 2),
                }
            ),
            flush=True,
        )
    report = json.loads((work / "ingest" / "report.json").read_text())
    found, total = planted_found(planted, report)
    print(
        json.dumps(
            {
                "images": files,
                "step": "planted",
                "planted_found": found,
                "planted_total": total,
                "duplicate_groups": report["duplicate_groups"],
                "label_conflict_groups": report["label_conflict_groups"],
                "near_duplicate_groups": report["near_duplicate_groups"],
            }
        ),
        flush=True,
    )
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(source, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,30000,100000", help="comma-separated numbers of images")
    parser.add_argument("--with-400k", action="store_true", help="also 400,000 images (ISIC 2024 scale)")
    parser.add_argument("--keep", default="", help="work here and keep nothing else (default: a temp folder)")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--source", default="", help=argparse.SUPPRESS)
    parser.add_argument("--work", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.source, Path(args.work))
        return
    sizes = [int(s) for s in args.sizes.split(",") if s] + ([400_000] if args.with_400k else [])
    with tempfile.TemporaryDirectory(prefix="lesion-scale-", dir=args.keep or None) as scratch:
        for images in sizes:
            bench(images, Path(scratch))


if __name__ == "__main__":
    main()

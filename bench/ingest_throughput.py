"""Ingest throughput (images/s) on a real source, next to the plain JPEG decode rate of
the same files measured in the same run, and where ingest's time goes. Prints JSON.

    LESION_DATA=../shared/data python bench/ingest_throughput.py [--source DIR] [--workers N]

``ingest_vs_decode`` is ingest's rate over the plain full decode's (both with ``--workers``
threads, run alternately ``--rounds`` times, the best of each); ``ingest_vs_decode_cpu`` the
same from the CPU time each took (all threads), which other work on the machine changes
less. ``stages_ms_per_image`` times each per-image stage alone, one thread, on the
same files (file read + md5, the reduced-scale decode, pHash, 16x16 thumbnail, and pHash
with thumbnail made together for ingest's batches of 16, as ingest makes them);
``near_duplicate_search_s``, ``report_previews_s`` (the files the report shows read again
and their previews made, as the merge does) and ``report_s`` time those whole-source steps
on ingest's own results; ``ingest_stages_s`` is the ingest call cut in its parts (partition:
listing, labels and every file decoded; merge: duplicates, near-duplicates, previews, report).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from components.core.settings import DataConfig
from components.data.data_report import shown_uris, write_outputs
from components.data.imaging import decode_rgb_reduced, phash_hex, phash_hex_batch, phash_pixels_and_thumbs
from components.data.ingest import merge_partitions, report_previews
from components.data.ingest.duplicates import near_duplicate_edges
from components.data.ingest.partitions import ingest_partition
from components.data.ingest.threads import ingest_threads
from components.data.ingest.validation import DECODE_MIN_SIDE, THUMB_SIDE, VALIDATE_BATCH


def decode_file(path: Path) -> None:
    with Image.open(path) as img:
        img.load()


def per_image_stages(images: list[Path]) -> tuple[dict, np.ndarray, np.ndarray]:
    """Milliseconds per image of each stage alone, and the hashes and thumbnails. pHash and
    thumbnail are timed one image at a time, then as ingest makes them: together, for
    ingest's batches (``phash_and_thumbnail_batched``)."""
    seconds = dict.fromkeys(
        ("read_and_md5", "decode_reduced", "phash", "thumbnail", "phash_and_thumbnail_batched"), 0.0
    )
    hashes, thumbs, batch = [], [], []
    for n, path in enumerate(images, start=1):
        t0 = time.perf_counter()
        data = path.read_bytes()
        hashlib.md5(data).hexdigest()
        t1 = time.perf_counter()
        img = decode_rgb_reduced(data, DECODE_MIN_SIDE)[0]
        t2 = time.perf_counter()
        hashes.append(int(phash_hex(img), 16))
        t3 = time.perf_counter()
        thumbs.append(np.asarray(img.resize((16, 16), Image.Resampling.BOX), dtype=np.uint8))
        t4 = time.perf_counter()
        for key, dt in zip(seconds, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            seconds[key] += dt
        batch.append(img)
        if len(batch) == VALIDATE_BATCH or n == len(images):
            t5 = time.perf_counter()
            phash_hex_batch(phash_pixels_and_thumbs(batch, THUMB_SIDE)[0])
            seconds["phash_and_thumbnail_batched"] += time.perf_counter() - t5
            batch = []
    return (
        {k: round(1000 * v / len(images), 4) for k, v in seconds.items()},
        np.array(hashes, dtype=np.uint64),
        np.stack(thumbs),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(Path(os.environ.get("LESION_DATA", "../shared/data")) / "ham10000"))
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="threads for both the plain decode and ingest (default: what ingest picks for local files)",
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternated decode and ingest runs; the best of each counts"
    )
    args = parser.parse_args()
    images = sorted(p for p in Path(args.source).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    args.workers = args.workers or ingest_threads(DataConfig(), [str(p) for p in images[:1]])
    cfg = DataConfig(ingest_workers=args.workers)

    for path in images[:200]:  # warm the page cache and the imports alike for every contender
        decode_file(path)
    start = time.perf_counter()
    for path in images:
        decode_file(path)
    decode_serial = time.perf_counter() - start
    decode_runs, ingest_runs, partition_runs, decode_cpu, ingest_cpu = [], [], [], [], []
    with tempfile.TemporaryDirectory() as out:
        # Alternated, best of --rounds each: on a shared machine the load changes between
        # two measurements more than either changes from run to run.
        for round_ in range(args.rounds):
            start, cpu = time.perf_counter(), time.process_time()
            with ThreadPoolExecutor(args.workers) as pool:
                list(pool.map(decode_file, images))
            decode_runs.append(time.perf_counter() - start)
            decode_cpu.append(time.process_time() - cpu)
            start, cpu = time.perf_counter(), time.process_time()
            partition = ingest_partition(args.source, cfg)
            partition_runs.append(time.perf_counter() - start)
            result = merge_partitions([partition], cfg, Path(out) / f"ingest-{round_}")
            ingest_runs.append(time.perf_counter() - start)
            ingest_cpu.append(time.process_time() - cpu)
            del partition
        decode_parallel, ingest_s = min(decode_runs), min(ingest_runs)
        partition_s = partition_runs[ingest_runs.index(ingest_s)]
        stages, hashes, thumbs = per_image_stages(images)
        start = time.perf_counter()
        near_duplicate_edges(hashes, thumbs, cfg.near_duplicate_distance, cfg.near_duplicate_max_pixel_difference)
        search_s = time.perf_counter() - start
        start = time.perf_counter()
        shown = shown_uris(result.manifest, result.report)
        previews = report_previews(result.manifest, shown, cfg)
        previews_s = time.perf_counter() - start
        start = time.perf_counter()
        write_outputs(result.manifest, result.report, Path(out) / "report", previews)
        report_s = time.perf_counter() - start
    files = result.report["files_found"]
    decode_rate = len(images) / decode_parallel
    print(
        json.dumps(
            {
                "source": args.source,
                "cpu_count": os.cpu_count(),
                "load_average_1min": round(os.getloadavg()[0], 2),
                "workers": args.workers,
                "jpeg_files": len(images),
                "plain_decode_images_per_s_1_thread": round(len(images) / decode_serial, 1),
                "plain_decode_images_per_s_workers": round(decode_rate, 1),
                "ingest_files": files,
                "rounds": args.rounds,
                "plain_decode_seconds_each_round": [round(x, 2) for x in decode_runs],
                "ingest_seconds_each_round": [round(x, 2) for x in ingest_runs],
                "ingest_seconds": round(ingest_s, 2),
                "ingest_images_per_s": round(files / ingest_s, 1),
                "ingest_vs_decode": round(files / ingest_s / decode_rate, 3),
                # CPU seconds (every thread of this process): what each costs, whatever else runs.
                "plain_decode_cpu_seconds": round(min(decode_cpu), 2),
                "ingest_cpu_seconds": round(min(ingest_cpu), 2),
                "ingest_vs_decode_cpu": round(min(decode_cpu) * files / len(images) / min(ingest_cpu), 3),
                "ingest_stages_s": {
                    "partition_list_label_decode": round(partition_s, 3),
                    "merge_and_report": round(ingest_s - partition_s, 3),
                },
                "stages_ms_per_image": stages,
                "near_duplicate_search_s": round(search_s, 3),
                "report_previews_shown": len(shown),
                "report_previews_made": len(previews),
                "report_previews_s": round(previews_s, 3),
                "report_s": round(report_s, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

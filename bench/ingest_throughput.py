"""Ingest throughput (images/s) on a real source, next to the plain JPEG decode rate of
the same files measured in the same run. Prints JSON.

    LESION_DATA=../shared/data python bench/ingest_throughput.py [--source DIR] [--workers N]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from components.ingest import ingest
from components.settings import DataConfig


def decode_file(path: Path) -> None:
    with Image.open(path) as img:
        img.load()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(Path(os.environ.get("LESION_DATA", "../shared/data")) / "ham10000"))
    parser.add_argument("--workers", type=int, default=DataConfig().ingest_workers)
    args = parser.parse_args()
    images = sorted(p for p in Path(args.source).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))

    start = time.perf_counter()
    for path in images:
        decode_file(path)
    decode_serial = time.perf_counter() - start
    start = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(decode_file, images))
    decode_parallel = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = ingest(args.source, DataConfig(ingest_workers=args.workers), out)
        ingest_s = time.perf_counter() - start
    print(json.dumps({
        "source": args.source,
        "cpu_count": os.cpu_count(),
        "workers": args.workers,
        "jpeg_files": len(images),
        "plain_decode_images_per_s_1_thread": round(len(images) / decode_serial, 1),
        "plain_decode_images_per_s_workers": round(len(images) / decode_parallel, 1),
        "ingest_files": result.report["files_found"],
        "ingest_seconds": round(ingest_s, 2),
        "ingest_images_per_s": round(result.report["files_found"] / ingest_s, 1),
    }, indent=2))


if __name__ == "__main__":
    main()

"""Normalize: every split's images, decoded to RGB and resized with the aspect ratio
kept, into TFRecord shards; per-channel mean/std measured on train only (the model
bakes them in, so val/test statistics never leak into training).

It scales out: shard ``i`` of every split is one task (``normalize_shard``), the
pipeline runs ``data.num_shards`` of them in parallel and ``gather_shards`` puts the
shards and their train pixel sums together into one dataset folder.
"""

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from kfp import dsl

from components.core import atomic, filenames
from components.core.errors import UserError
from components.core.settings import DataConfig
from components.data import tfrecords
from components.data.imaging import load_for_model
from components.data.sources import read_bytes
from components.data.split import SUBSETS

STATS_FILE = "pixel_stats.json"


def _load(uri: str, size: int, mode: str) -> np.ndarray:
    return load_for_model(read_bytes(uri), size, mode)


def _read_splits(splits_dir: str | Path) -> pd.DataFrame:
    return pd.read_parquet(Path(splits_dir) / filenames.SPLITS)


def shard_name(subset: str, index: int, count: int) -> str:
    return f"{subset}-{index:05d}-of-{count:05d}.tfrecord"


def normalize_shard(splits_dir: str | Path, cfg: DataConfig, shard_index: int, output_dir: str | Path) -> dict:
    """Write shard ``shard_index`` of ``cfg.num_shards`` for every split (rows sorted by URI,
    every num_shards-th one; a shard may be empty), then the train pixel sums (STATS_FILE)."""
    df = _read_splits(splits_dir)
    classes = sorted(df.label.unique().tolist())
    index = {c: i for i, c in enumerate(classes)}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pixel_sum, pixel_sq, pixel_count = np.zeros(3), np.zeros(3), 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        for subset in SUBSETS:
            rows = df[df.subset == subset].sort_values("uri").reset_index(drop=True)
            part = rows.iloc[shard_index::cfg.num_shards]
            images = list(pool.map(lambda u: _load(u, cfg.image_size, cfg.resize_mode), part.uri))
            if subset == "train":
                for image in images:
                    pixels = image.reshape(-1, 3).astype(np.float64)
                    pixel_sum += pixels.sum(0)
                    pixel_sq += (pixels ** 2).sum(0)
                    pixel_count += len(pixels)
            tfrecords.write_shard(out / shard_name(subset, shard_index, cfg.num_shards),
                               zip(images, (index[label] for label in part.label), part.uri))
    stats = {"shard_index": shard_index, "pixel_sum": pixel_sum.tolist(), "pixel_sq": pixel_sq.tolist(),
             "pixel_count": pixel_count}
    atomic.write_text(out / STATS_FILE, json.dumps(stats))
    return stats


def dataset_meta(splits_dir: str | Path, cfg: DataConfig, pixel_stats: list[dict], synthetic: bool) -> dict:
    """dataset.json: classes, counts and the train mean/std summed over every shard."""
    df = _read_splits(splits_dir)
    classes = sorted(df.label.unique().tolist())
    pixel_sum = np.sum([s["pixel_sum"] for s in pixel_stats], axis=0)
    pixel_sq = np.sum([s["pixel_sq"] for s in pixel_stats], axis=0)
    pixel_n = max(1, sum(s["pixel_count"] for s in pixel_stats))
    mean = pixel_sum / pixel_n
    std = np.sqrt(np.maximum(pixel_sq / pixel_n - mean ** 2, 1e-6))
    return {
        "classes": classes,
        "image_size": cfg.image_size,
        "resize_mode": cfg.resize_mode,
        "counts": {s: int((df.subset == s).sum()) for s in SUBSETS},
        "class_counts": {s: df[df.subset == s].label.value_counts().reindex(classes, fill_value=0).astype(int).tolist()
                         for s in SUBSETS},
        "mean": mean.round(4).tolist(),
        "std": std.round(4).tolist(),
        "synthetic": synthetic,
    }


def gather_shards(shard_dirs: list[str | Path], splits_dir: str | Path, cfg: DataConfig, output_dir: str | Path,
                  synthetic: bool = False) -> dict:
    """One dataset folder from the shard tasks' outputs; refuses an incomplete set of shards."""
    folders = [Path(d) for d in shard_dirs]
    # The stats file is written last, so a shard folder without it is incomplete.
    stats = [json.loads((f / STATS_FILE).read_text()) for f in folders if (f / STATS_FILE).is_file()]
    found = sorted(s["shard_index"] for s in stats)
    if found != list(range(cfg.num_shards)):
        raise UserError(f"normalize: expected complete shards 0..{cfg.num_shards - 1}, got {found}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        for shard in folder.glob("*.tfrecord"):
            try:  # a hard link where the shards share a filesystem (local runs), else a copy
                os.link(shard, out / shard.name)
            except OSError:
                shutil.copyfile(shard, out / shard.name)
    meta = dataset_meta(splits_dir, cfg, stats, synthetic)
    tfrecords.write_meta(out, meta)
    return meta


def normalize(splits_dir: str | Path, cfg: DataConfig, output_dir: str | Path, synthetic: bool = False) -> dict:
    """The pipeline's fan-out and gather, one shard after the other in this process."""
    out = Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".shards-") as scratch:
        folders = [Path(scratch, str(i)) for i in range(cfg.num_shards)]
        for i, folder in enumerate(folders):
            normalize_shard(splits_dir, cfg, i, folder)
        return gather_shards(folders, splits_dir, cfg, out, synthetic)


def normalize_shard_step(splits: dsl.Input[dsl.Dataset], data: dict, shard_index: int,
                         shard: dsl.Output[dsl.Dataset]):
    """KFP wrapper: one shard of every split (the pipeline fans out over data.num_shards of these)."""
    from components.core import atomic
    from components.core.errors import user_errors
    from components.core.section import load_section
    from components.core.settings import DataConfig
    from components.data.normalize import normalize_shard

    with user_errors(), atomic.output_dir(shard.path) as out:
        stats = normalize_shard(splits.path, load_section(DataConfig, data, "data."), shard_index, out)
    shard.metadata["train_pixels"] = stats["pixel_count"]


def normalize_gather_step(shards: dsl.Input[list[dsl.Dataset]], splits: dsl.Input[dsl.Dataset],
                          manifest: dsl.Input[dsl.Dataset], data: dict, normalized: dsl.Output[dsl.Dataset]):
    """KFP wrapper: the shard tasks' outputs as one normalized dataset."""
    import json
    from pathlib import Path

    from components.core import atomic, filenames
    from components.core.errors import user_errors
    from components.core.section import load_section
    from components.core.settings import DataConfig
    from components.data.normalize import gather_shards

    synthetic = json.loads((Path(manifest.path) / filenames.INGEST_REPORT).read_text())["synthetic"]
    with user_errors(), atomic.output_dir(normalized.path) as out:
        meta = gather_shards([s.path for s in shards], splits.path, load_section(DataConfig, data, "data."), out,
                             synthetic)
    normalized.metadata.update(meta["counts"])

"""Normalize: every split's images, decoded to RGB and resized with the aspect ratio
kept, into TFRecord shards; per-channel mean/std measured on train only (the model
bakes them in, so val/test statistics never leak into training)."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from kfp import dsl

from components import shards
from components.imaging import load_for_model
from components.sources import read_bytes
from components.split import SUBSETS
from pipeline.config import DataConfig


def _load(uri: str, size: int, mode: str) -> np.ndarray:
    return load_for_model(read_bytes(uri), size, mode)


def normalize(splits_dir: str | Path, cfg: DataConfig, output_dir: str | Path, synthetic: bool = False) -> dict:
    df = pd.read_parquet(Path(splits_dir) / "splits.parquet")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = sorted(df.label.unique().tolist())
    index = {c: i for i, c in enumerate(classes)}
    size = cfg.image_size
    pixel_sum = np.zeros(3)
    pixel_sq = np.zeros(3)
    pixel_n = 0
    counts: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        for subset in SUBSETS:
            rows = df[df.subset == subset].sort_values("uri").reset_index(drop=True)
            counts[subset] = len(rows)
            num = max(1, min(cfg.num_shards, len(rows)))
            for shard in range(num):
                part = rows.iloc[shard::num]
                images = list(pool.map(lambda u: _load(u, size, cfg.resize_mode), part.uri))
                if subset == "train":
                    for image in images:
                        pixels = image.reshape(-1, 3).astype(np.float64)
                        pixel_sum += pixels.sum(0)
                        pixel_sq += (pixels ** 2).sum(0)
                        pixel_n += len(pixels)
                shards.write_shard(out / f"{subset}-{shard:05d}-of-{num:05d}.tfrecord",
                                   zip(images, (index[label] for label in part.label), part.uri))
    mean = pixel_sum / max(1, pixel_n)
    std = np.sqrt(np.maximum(pixel_sq / max(1, pixel_n) - mean ** 2, 1e-6))
    meta = {
        "classes": classes,
        "image_size": size,
        "resize_mode": cfg.resize_mode,
        "counts": counts,
        "class_counts": {s: df[df.subset == s].label.value_counts().reindex(classes, fill_value=0).astype(int).tolist() for s in SUBSETS},
        "mean": mean.round(4).tolist(),
        "std": std.round(4).tolist(),
        "synthetic": synthetic,
    }
    shards.write_meta(out, meta)
    return meta


def normalize_step(splits: dsl.Input[dsl.Dataset], manifest: dsl.Input[dsl.Dataset], config: dict,
                   normalized: dsl.Output[dsl.Dataset]):
    """KFP wrapper: the normalize step."""
    import json
    from pathlib import Path

    from components.normalize import normalize
    from pipeline.config import Config

    synthetic = json.loads((Path(manifest.path) / "report.json").read_text())["synthetic"]
    meta = normalize(splits.path, Config.from_dict(config).data, normalized.path, synthetic=synthetic)
    normalized.metadata.update(meta["counts"])

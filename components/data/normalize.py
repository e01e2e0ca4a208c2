"""Normalize: every split's images, decoded to RGB and resized with the aspect ratio
kept, into TFRecord shards; per-channel mean/std measured on train only (the model
bakes them in, so val/test statistics never leak into training).

It scales out: shard ``i`` of every split is one task (``normalize_shard``), the
pipeline runs ``data.num_shards`` of them in parallel and ``gather_shards`` puts the
shards and their train pixel sums together into one dataset folder.

Every file is read as ingest recorded it: never past data.max_file_bytes, and with the
md5 ingest measured. A file grown, swapped or deleted since then fails the step with one
line naming it; it is never trained on unchecked.
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
from components.data.imaging import ImageError, load_for_model
from components.data.sources import read_as_ingested
from components.data.sources.base import FileChanged, FileTooLarge
from components.data.split import SUBSETS

STATS_FILE = "pixel_stats.json"


# Files named in normalize's error when several changed since ingest.
CHANGED_FILES_SHOWN = 3


def _load(uri: str, md5: str, cfg: DataConfig) -> tuple[np.ndarray | None, str]:
    """The model's pixels of a file ingest recorded, or (None, why it is not the file ingest
    checked any more): grown past data.max_file_bytes, other bytes, gone or undecodable.
    A failing source (SourceUnavailable) fails the step: the file may be fine."""
    try:
        return load_for_model(read_as_ingested(uri, md5, cfg.max_file_bytes), cfg.image_size, cfg.resize_mode), ""
    except FileTooLarge:
        return None, f"now over data.max_file_bytes={cfg.max_file_bytes}"
    except FileChanged as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"
    except ImageError as exc:
        return None, str(exc)


def _refuse_changed(part: pd.DataFrame, problems: list[str]) -> None:
    """One line naming the files (of ``part``'s rows) that are not what ingest checked."""
    changed = [f"{relpath}: {why}" for relpath, why in zip(part.relpath, problems) if why]
    if changed:
        shown = "; ".join(changed[:CHANGED_FILES_SHOWN]) + ("; ..." if len(changed) > CHANGED_FILES_SHOWN else "")
        raise UserError(
            f"normalize: {len(changed)} file{'s' * (len(changed) > 1)} changed since ingest ({shown}): "
            "run the pipeline again, so that ingest checks the source as it is now"
        )


def _read_splits(splits_dir: str | Path) -> pd.DataFrame:
    return pd.read_parquet(Path(splits_dir) / filenames.SPLITS)


def test_metadata(test: pd.DataFrame) -> dict[str, dict[str, str]]:
    """URI -> the source's metadata of each image that has any (splits written before
    ingest kept metadata have none)."""
    from components.data.labels import METADATA_COLUMNS

    columns = [c for c in METADATA_COLUMNS if c in test.columns]
    values = test[columns].fillna("").astype(str).to_dict("records")
    return {u: {k: v for k, v in row.items() if v} for u, row in zip(test.uri, values) if any(row.values())}


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
            part = rows.iloc[shard_index :: cfg.num_shards]
            loaded = list(pool.map(lambda uri, md5: _load(uri, md5, cfg), part.uri, part.md5))
            _refuse_changed(part, [why for _, why in loaded])
            images = [image for image, _ in loaded]
            if subset == "train":
                for image in images:
                    pixels = image.reshape(-1, 3).astype(np.float64)
                    pixel_sum += pixels.sum(0)
                    pixel_sq += (pixels**2).sum(0)
                    pixel_count += len(pixels)
            tfrecords.write_shard(
                out / shard_name(subset, shard_index, cfg.num_shards),
                zip(images, (index[label] for label in part.label), part.uri),
            )
    stats = {
        "shard_index": shard_index,
        "pixel_sum": pixel_sum.tolist(),
        "pixel_sq": pixel_sq.tolist(),
        "pixel_count": pixel_count,
    }
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
    std = np.sqrt(np.maximum(pixel_sq / pixel_n - mean**2, 1e-6))
    return {
        "classes": classes,
        "image_size": cfg.image_size,
        "resize_mode": cfg.resize_mode,
        "counts": {s: int((df.subset == s).sum()) for s in SUBSETS},
        "class_counts": {
            s: df[df.subset == s].label.value_counts().reindex(classes, fill_value=0).astype(int).tolist()
            for s in SUBSETS
        },
        "mean": mean.round(4).tolist(),
        "std": std.round(4).tolist(),
        "synthetic": synthetic,
    }


def gather_shards(
    shard_dirs: list[str | Path],
    splits_dir: str | Path,
    cfg: DataConfig,
    output_dir: str | Path,
    synthetic: bool = False,
    group_unit: str = "groups",
) -> dict:
    """One dataset folder from the shard tasks' outputs, with the test images' group ids
    (``group_unit``: what they name, labels.GROUP_UNITS); refuses an incomplete set of shards."""
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
    splits = _read_splits(splits_dir)
    tfrecords.write_images(out, splits, cfg.max_file_bytes)
    test = splits.query("subset == 'test'")
    tfrecords.write_test_groups(out, group_unit, {u: g for u, g in zip(test.uri, test.group_id.fillna("")) if g})
    tfrecords.write_test_metadata(out, test_metadata(test))
    meta = dataset_meta(splits_dir, cfg, stats, synthetic)
    tfrecords.write_meta(out, meta)
    return meta


def normalize(
    splits_dir: str | Path, cfg: DataConfig, output_dir: str | Path, synthetic: bool = False, group_unit: str = "groups"
) -> dict:
    """The pipeline's fan-out and gather, one shard after the other in this process."""
    out = Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".shards-") as scratch:
        folders = [Path(scratch, str(i)) for i in range(cfg.num_shards)]
        for i, folder in enumerate(folders):
            normalize_shard(splits_dir, cfg, i, folder)
        return gather_shards(folders, splits_dir, cfg, out, synthetic, group_unit)


def normalize_shard_step(splits: dsl.Input[dsl.Dataset], data: dict, shard_index: int, shard: dsl.Output[dsl.Dataset]):
    """KFP wrapper: one shard of every split (the pipeline fans out over data.num_shards of these)."""
    from components.core import atomic
    from components.core.config_base import load_section
    from components.core.errors import user_errors
    from components.core.settings import DataConfig
    from components.data.normalize import normalize_shard

    with user_errors(), atomic.output_dir(shard.path) as out:
        stats = normalize_shard(splits.path, load_section(DataConfig, data, "data."), shard_index, out)
    shard.metadata["train_pixels"] = stats["pixel_count"]


def normalize_gather_step(
    shards: dsl.Input[list[dsl.Dataset]],
    splits: dsl.Input[dsl.Dataset],
    manifest: dsl.Input[dsl.Dataset],
    data: dict,
    normalized: dsl.Output[dsl.Dataset],
):
    """KFP wrapper: the shard tasks' outputs as one normalized dataset."""
    import json
    from pathlib import Path

    from components.core import atomic, filenames
    from components.core.config_base import load_section
    from components.core.errors import user_errors
    from components.core.settings import DataConfig
    from components.data.labels import GROUP_UNITS
    from components.data.normalize import gather_shards

    ingested = json.loads((Path(manifest.path) / filenames.INGEST_REPORT).read_text())
    with user_errors(), atomic.output_dir(normalized.path) as out:
        meta = gather_shards(
            [s.path for s in shards],
            splits.path,
            load_section(DataConfig, data, "data."),
            out,
            ingested["synthetic"],
            GROUP_UNITS.get(ingested["format"], "groups"),
        )
    normalized.metadata.update(meta["counts"])

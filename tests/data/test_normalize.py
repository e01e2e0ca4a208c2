"""normalize: shards of every split image at the target size, mean/std from train only; as the
pipeline runs it, one task per shard, then a gather that refuses an incomplete set (shards
may be empty when a split has fewer images than shards); every file it reads re-checked
against the manifest (md5 and size limit)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.core import filenames
from components.core.errors import UserError
from components.core.settings import DataConfig
from components.data import tfrecords
from components.data.ingest import ingest
from components.data.normalize import STATS_FILE, gather_shards, normalize, normalize_shard
from components.data.split import split
from tests.helpers import write_class_folder
from tests.helpers.images import jpeg_bytes, lesion


def test_shards_hold_every_split_image_at_target_size(normalized):
    root, cfg, meta = normalized
    assert meta["classes"] == ["dermatofibroma", "melanoma", "nevus"]
    total = 0
    for subset in ("train", "val", "test"):
        images, labels, uris = tfrecords.read_all(tfrecords.shard_paths(root / "normalized", subset), 32)
        assert images.shape[1:] == (32, 32, 3) and images.dtype == np.uint8
        assert len(images) == meta["counts"][subset] > 0
        assert np.bincount(labels, minlength=3).tolist() == meta["class_counts"][subset]
        total += len(images)
    assert total == 9 + 9 + 5
    assert not list((root / "normalized").glob("*.partial"))


def test_mean_std_come_from_train_only(normalized):
    root, _, meta = normalized
    train, _, _ = tfrecords.read_all(tfrecords.shard_paths(root / "normalized", "train"), 32)
    pixels = train.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(meta["mean"], pixels.mean(0), atol=1e-3)
    np.testing.assert_allclose(meta["std"], pixels.std(0), atol=1e-3)
    everything = (
        np.concatenate(
            [tfrecords.read_all(tfrecords.shard_paths(root / "normalized", s), 32)[0] for s in ("train", "val", "test")]
        )
        .reshape(-1, 3)
        .mean(0)
    )
    assert not np.allclose(meta["mean"], everything, atol=1e-3)


@pytest.fixture(scope="module")
def shard_tasks(tmp_path_factory):
    """Three shard tasks' outputs, as three separate folders (as on a cluster)."""
    root = tmp_path_factory.mktemp("fanout")
    data = write_class_folder(root / "data", classes=("melanoma", "nevus"), per_class=5, size=40)
    cfg = DataConfig(image_size=32, val_fraction=0.2, test_fraction=0.2, num_shards=3)
    ingest(str(data), cfg, root / "manifest")
    split(root / "manifest", cfg, root / "splits")
    folders = [root / f"shard-{i}" for i in range(cfg.num_shards)]
    for i, folder in enumerate(folders):
        normalize_shard(root / "splits", cfg, i, folder)
    return root, cfg, folders


def test_gather_puts_every_image_in_one_dataset(shard_tasks, tmp_path):
    root, cfg, folders = shard_tasks
    meta = gather_shards(folders, root / "splits", cfg, tmp_path / "normalized")
    assert sum(meta["counts"].values()) == 10
    for subset in ("train", "val", "test"):
        paths = tfrecords.shard_paths(tmp_path / "normalized", subset)
        assert [p.rsplit("/", 1)[1] for p in paths] == [f"{subset}-{i:05d}-of-00003.tfrecord" for i in range(3)]
        assert len(tfrecords.read_all(paths, 32)[1]) == meta["counts"][subset]
    assert meta["counts"]["test"] < 3  # so at least one test shard is empty, and still read fine
    assert (tmp_path / "normalized" / tfrecords.META_FILE).is_file()


def test_gather_refuses_a_missing_or_unfinished_shard(shard_tasks, tmp_path):
    root, cfg, folders = shard_tasks
    with pytest.raises(UserError, match=r"expected complete shards 0..2, got \[0, 1\]"):
        gather_shards(folders[:2], root / "splits", cfg, tmp_path / "a")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(folders[2], unfinished)
    (unfinished / STATS_FILE).unlink()  # the stats file is written last
    with pytest.raises(UserError, match="got \\[0, 1\\]"):
        gather_shards([*folders[:2], unfinished], root / "splits", cfg, tmp_path / "b")


@pytest.fixture
def ingested_and_split(tmp_path) -> tuple[Path, Path, pd.DataFrame]:
    source = tmp_path / "source"
    for cls in ("melanoma", "nevus"):
        for i in range(6):
            (source / cls).mkdir(parents=True, exist_ok=True)
            (source / cls / f"{i}.jpg").write_bytes(jpeg_bytes(lesion(i, cls)))
    cfg = DataConfig(val_fraction=0.25, test_fraction=0.25, num_shards=1, image_size=32)
    ingest(str(source), cfg, tmp_path / "ingest")
    split(tmp_path / "ingest", cfg, tmp_path / "split")
    splits = pd.read_parquet(tmp_path / "split" / filenames.SPLITS)
    return source, tmp_path / "split", splits


def test_normalize_refuses_a_file_swapped_since_ingest(ingested_and_split, tmp_path):
    source, split_dir, splits = ingested_and_split
    cfg = DataConfig(num_shards=1, image_size=32)
    relpath = splits.relpath.iloc[0]
    (source / relpath).write_bytes(jpeg_bytes(lesion(99, "nevus")))  # another lesion, still a good JPEG
    with pytest.raises(UserError, match=rf"1 file changed since ingest.*{relpath}.*md5"):
        normalize(split_dir, cfg, tmp_path / "normalized")
    assert not (tmp_path / "normalized").exists()


def test_normalize_holds_max_file_bytes_for_a_file_grown_since_ingest(ingested_and_split, tmp_path):
    source, split_dir, splits = ingested_and_split
    limit = int(splits.bytes.max()) + 10
    relpath = splits.relpath.iloc[-1]
    (source / relpath).write_bytes(os.urandom(limit * 4))
    with pytest.raises(UserError, match=rf"1 file changed since ingest.*{relpath}.*max_file_bytes={limit}"):
        normalize(split_dir, DataConfig(num_shards=1, image_size=32, max_file_bytes=limit), tmp_path / "normalized")


def test_a_full_disk_is_one_line_naming_the_folder_and_leaves_no_partial_output(shard_tasks, small_disk, capsys):
    """Was: TensorFlow's traceback, the run saying only "it ended with an error", and a
    shard .partial folder left on the full disk."""
    from types import SimpleNamespace

    from components.data.normalize import normalize_shard_step

    root, cfg, _ = shard_tasks
    disk = small_disk(8)
    shard = SimpleNamespace(path=str(disk / "shard"), metadata={})
    with pytest.raises(SystemExit) as ended:
        normalize_shard_step(SimpleNamespace(path=str(root / "splits")), cfg.to_dict(), 0, shard)
    assert ended.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: the disk is full (no space left on device) writing {disk / 'shard'}")
    assert list(disk.iterdir()) == []

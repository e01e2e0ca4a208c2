"""normalize as the pipeline runs it: one task per shard, then a gather that refuses an
incomplete set; shards may be empty when a split has fewer images than shards."""

import shutil

import pytest

from components.core.errors import UserError
from components.core.settings import DataConfig
from components.data import tfrecords
from components.data.ingest import ingest
from components.data.normalize import STATS_FILE, gather_shards, normalize_shard
from components.data.split import split
from tests.helpers import write_class_folder


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

"""Sharded ingest (N shard tasks, then a merge) gives the manifest and report one
process gives: duplicates, conflicts, leaks and near-duplicates are found across shards."""
from __future__ import annotations

import json

import pytest

from components import artifacts
from components.ingest import IngestError, ingest, ingest_shard, load_shard, merge_shards, save_shard
from components.settings import DataConfig
from tests.test_ingest_validation import corpus  # noqa: F401  (the messy generated corpus fixture)

FIGURES = ("files_found", "ingested", "quarantined", "ignored", "duplicate_groups", "label_conflict_groups",
           "split_leak_groups", "near_duplicate_groups", "near_duplicate_label_conflict_groups",
           "near_duplicate_split_leak_groups", "label_rows_without_image", "classes", "class_counts_before",
           "class_counts", "source_splits", "reason_counts", "quarantined_files", "ignored_files",
           "duplicate_group_details", "near_duplicate_group_details")


def sharded(source: str, cfg: DataConfig, shards: int, tmp_path) -> tuple:
    """What the pipeline does: each shard saved by its task, loaded by the merge task."""
    for i in range(shards):
        save_shard(ingest_shard(source, cfg, i, shards), tmp_path / f"shard-{i}")
    loaded = [load_shard(tmp_path / f"shard-{i}") for i in reversed(range(shards))]  # any order
    return merge_shards(loaded, cfg, tmp_path / "merged")


def assert_same(one, many) -> None:
    for key in FIGURES:
        assert one.report[key] == many.report[key], key
    assert one.manifest.equals(many.manifest)


@pytest.mark.parametrize("shards", [2, 3])
def test_shards_merge_to_the_one_process_result(corpus, tmp_path, shards):  # noqa: F811
    cfg = DataConfig(ingest_workers=2)
    one = ingest(str(corpus), cfg, tmp_path / "one")
    many = sharded(str(corpus), cfg, shards, tmp_path)
    # The corpus has exact duplicates, a label conflict, a leak and a near-duplicate pair;
    # with 2 or 3 shards some of each pair land in different shards.
    assert one.report["duplicate_groups"] and one.report["label_conflict_groups"]
    assert one.report["near_duplicate_groups"]
    assert_same(one, many)
    assert json.loads((tmp_path / "merged" / artifacts.INGEST_REPORT).read_text())["ingested"] == one.report["ingested"]


def test_merge_refuses_a_missing_shard(corpus, tmp_path):  # noqa: F811
    cfg = DataConfig(ingest_workers=2)
    with pytest.raises(IngestError, match="expected shards 0..2"):
        merge_shards([ingest_shard(str(corpus), cfg, i, 3) for i in (0, 2)], cfg)


@pytest.mark.real_data
def test_isic9_one_and_four_shards_report_the_same(lesion_data, tmp_path):
    cfg = DataConfig()
    one = ingest(str(lesion_data / "isic9"), cfg, tmp_path / "one")
    many = sharded(str(lesion_data / "isic9"), cfg, 4, tmp_path)
    assert one.report["label_conflict_groups"] > 100 and one.report["near_duplicate_groups"] > 0
    assert_same(one, many)

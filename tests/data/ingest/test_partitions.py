"""Partitioned ingest (N partition tasks, then a merge) gives the manifest and report one
process gives: duplicates, conflicts, leaks and near-duplicates are found across partitions."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil

import pytest

from components.core import filenames
from components.core.settings import DataConfig
from components.data.data_report import preview_jpeg
from components.data.imaging import decode_rgb_reduced
from components.data.ingest import IngestError, ingest, merge_partitions
from components.data.ingest.partitions import ingest_partition, load_partition, save_partition
from components.data.ingest.validation import DECODE_MIN_SIDE
from tests.helpers.images import jpeg_bytes, lesion

FIGURES = (
    "files_found",
    "ingested",
    "quarantined",
    "ignored",
    "duplicate_groups",
    "label_conflict_groups",
    "split_leak_groups",
    "near_duplicate_groups",
    "near_duplicate_label_conflict_groups",
    "near_duplicate_split_leak_groups",
    "label_rows_without_image",
    "classes",
    "class_counts_before",
    "class_counts",
    "source_splits",
    "reason_counts",
    "quarantined_files",
    "ignored_files",
    "duplicate_group_details",
    "near_duplicate_group_details",
)


def partitioned(source: str, cfg: DataConfig, partitions: int, tmp_path) -> tuple:
    """What the pipeline does: each partition saved by its task, loaded by the merge task."""
    for i in range(partitions):
        save_partition(ingest_partition(source, cfg, i, partitions), tmp_path / f"partition-{i}")
    loaded = [load_partition(tmp_path / f"partition-{i}") for i in reversed(range(partitions))]  # any order
    return merge_partitions(loaded, cfg, tmp_path / "merged")


def assert_same(one, many) -> None:
    for key in FIGURES:
        assert one.report[key] == many.report[key], key
    assert one.manifest.equals(many.manifest)


def shown_previews(out) -> dict[str, str]:
    """relpath -> the inline JPEG report.html shows for it ('' where it says "[no preview]")."""
    page = (out / filenames.INGEST_REPORT_HTML).read_text()
    found = {
        html.unescape(title): src
        for src, title in re.findall(r"<img src='(data:image/jpeg;base64,[^']*)' title='([^']*)'", page)
    }
    found.update({html.unescape(title): "" for title in re.findall(r"<span title='([^']*)'>\[no preview\]", page)})
    return found


@pytest.mark.parametrize("partitions", [2, 3])
def test_partitions_merge_to_the_one_process_result(corpus, tmp_path, partitions):  # noqa: F811
    cfg = DataConfig(ingest_workers=2)
    one = ingest(str(corpus), cfg, tmp_path / "one")
    many = partitioned(str(corpus), cfg, partitions, tmp_path)
    # The corpus has exact duplicates, a label conflict, a leak and a near-duplicate pair;
    # with 2 or 3 partitions some of each pair land in different partitions.
    assert one.report["duplicate_groups"] and one.report["label_conflict_groups"]
    assert one.report["near_duplicate_groups"]
    assert_same(one, many)
    assert json.loads((tmp_path / "merged" / filenames.INGEST_REPORT).read_text())["ingested"] == one.report["ingested"]
    for name in (filenames.INGEST_REPORT_HTML, filenames.INGEST_REPORT_MD):  # previews included
        assert (tmp_path / "merged" / name).read_text() == (tmp_path / "one" / name).read_text()
    # A partition task hands over its rows, thumbnails and meta: no previews.
    assert {p.name for p in (tmp_path / "partition-0").iterdir()} == {
        filenames.INGEST_PARTITION_ROWS,
        filenames.INGEST_PARTITION_THUMBS,
        filenames.INGEST_PARTITION_META,
    }


def test_the_merge_makes_the_shown_previews_and_a_file_gone_or_changed_gets_none(corpus, tmp_path):  # noqa: F811
    source = tmp_path / "source"
    shutil.copytree(corpus, source)
    cfg = DataConfig(ingest_workers=2)
    before = ingest(str(source), cfg, tmp_path / "before")
    shown = shown_previews(tmp_path / "before")
    rows = before.manifest.set_index("relpath")
    # Every shown file that ingest decoded has the preview of the partitions' reduced decode.
    for relpath, src in shown.items():
        data = (source / relpath).read_bytes()
        expected = preview_jpeg(decode_rgb_reduced(data, DECODE_MIN_SIDE)[0]) if rows.at[relpath, "phash"] else b""
        assert src == ("data:image/jpeg;base64," + base64.b64encode(expected).decode() if expected else ""), relpath
    assert sum(map(bool, shown.values())) >= 10

    # Between the partitions and the merge, a shown file is deleted and another rewritten.
    gone, changed = "Test/MEL/mel_8.jpg", "Train/melanoma/near_a.jpg"  # a melanoma sample; a near-duplicate
    assert shown[gone] and shown[changed]
    partitions = [ingest_partition(str(source), cfg, i, 2) for i in range(2)]
    (source / gone).unlink()
    (source / changed).write_bytes(jpeg_bytes(lesion(99)))
    after = merge_partitions(partitions, cfg, tmp_path / "after")
    assert_same(before, after)  # every figure is the partitions' own
    assert shown_previews(tmp_path / "after") == {**shown, gone: "", changed: ""}
    page = (tmp_path / "after" / filenames.INGEST_REPORT_HTML).read_text()
    assert f"<span title='{gone}'>[no preview]</span>" in page


def test_merge_refuses_a_missing_partition(corpus, tmp_path):  # noqa: F811
    cfg = DataConfig(ingest_workers=2)
    with pytest.raises(IngestError, match="expected partitions 0..2"):
        merge_partitions([ingest_partition(str(corpus), cfg, i, 3) for i in (0, 2)], cfg)


@pytest.mark.real_data
def test_isic9_one_and_four_partitions_report_the_same(lesion_data, tmp_path):
    cfg = DataConfig()
    one = ingest(str(lesion_data / "isic9"), cfg, tmp_path / "one")
    many = partitioned(str(lesion_data / "isic9"), cfg, 4, tmp_path)
    assert one.report["label_conflict_groups"] > 100 and one.report["near_duplicate_groups"] > 0
    assert_same(one, many)


def test_ingest_threads_follow_the_cpus_the_process_may_use_and_the_source(tmp_path, monkeypatch):
    from components.data.ingest import threads as ingest_module

    monkeypatch.setattr(ingest_module.os, "sched_getaffinity", lambda pid: set(range(16)))
    no_quota = tmp_path / "cpu.max"
    no_quota.write_text("max 100000\n")
    monkeypatch.setattr(ingest_module, "CGROUP_CPU_MAX", no_quota)
    auto = DataConfig()
    assert ingest_module.ingest_threads(auto, ["/data/a.jpg"]) == 16
    assert ingest_module.ingest_threads(auto, ["gs://bucket/a.jpg"]) == 32  # 4 a CPU, at most 32
    # A pod limited to 1.5 CPUs on a 16-CPU node: 2 threads, not 16.
    no_quota.write_text("150000 100000\n")
    assert ingest_module.ingest_threads(auto, ["/data/a.jpg"]) == 2
    assert ingest_module.ingest_threads(auto, ["gs://bucket/a.jpg"]) == 8
    assert ingest_module.ingest_threads(DataConfig(ingest_workers=5), ["gs://bucket/a.jpg"]) == 5
    monkeypatch.setattr(ingest_module, "CGROUP_CPU_MAX", tmp_path / "absent")  # cgroup v1, or not Linux's
    assert ingest_module.ingest_threads(auto, []) == 16

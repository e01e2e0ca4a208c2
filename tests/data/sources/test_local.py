"""A local folder source: links followed only inside it, pipes and devices listed unread,
files over data.max_file_bytes quarantined unread."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

from components.core.settings import DataConfig
from components.data.ingest import ingest
from components.data.sources.local import LocalFolderSource
from tests.helpers.images import jpeg_bytes, lesion

MAX_FILE_BYTES = 256 * 2**20  # DataConfig().max_file_bytes


def two_classes(root: Path, per_class: int = 3) -> None:
    for cls in ("melanoma", "nevus"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / cls / f"{i}.jpg").write_bytes(jpeg_bytes(lesion(i, cls)))


def test_links_are_followed_only_inside_the_source(tmp_path):
    source, outside = tmp_path / "source", tmp_path / "outside"
    two_classes(source)
    (outside / "more_nevus").mkdir(parents=True)
    (outside / "secret.jpg").write_bytes(jpeg_bytes(lesion(70)))
    (outside / "more_nevus" / "n.jpg").write_bytes(jpeg_bytes(lesion(71, "nevus")))
    links = {
        "melanoma/shadow.jpg": "/etc/shadow",
        "melanoma/elsewhere.jpg": str(outside / "secret.jpg"),
        "melanoma/up.jpg": "../../outside/secret.jpg",
        "nevus/alias.jpg": "0.jpg",
        "melanoma/dangling.jpg": "missing.jpg",
        "melanoma/loop.jpg": "loop.jpg",
        "more_nevus": str(outside / "more_nevus"),
        "nevus_again": "nevus",
    }
    for name, target in links.items():
        os.symlink(target, source / name)
    result = ingest(str(source), DataConfig())
    m = result.manifest.set_index("relpath")
    assert m.at["melanoma/shadow.jpg", "reason"] == "symbolic link to /etc/shadow, outside the source: not read"
    assert (m.loc[["melanoma/shadow.jpg", "melanoma/elsewhere.jpg", "melanoma/up.jpg"], "md5"] == "").all()
    expected = {
        "melanoma/shadow.jpg": ("quarantined", "symlink_outside_source"),
        "melanoma/elsewhere.jpg": ("quarantined", "symlink_outside_source"),
        "melanoma/up.jpg": ("quarantined", "symlink_outside_source"),
        "more_nevus": ("quarantined", "symlink_outside_source"),
        "nevus/alias.jpg": ("ignored", "duplicate"),  # of nevus/0.jpg, its target
        "melanoma/dangling.jpg": ("quarantined", "dangling_symlink"),
        "melanoma/loop.jpg": ("quarantined", "dangling_symlink"),
        "nevus_again": ("quarantined", "symlinked_folder"),
    }
    assert {p: (m.at[p, "status"], m.at[p, "reason_code"]) for p in links} == expected
    assert m.at["nevus/alias.jpg", "duplicate_of"] == str(source / "nevus" / "0.jpg")
    # Every entry accounted for: the six images and the eight links.
    assert result.report["files_found"] == len(m) == 6 + len(links)
    assert result.report["class_counts"] == {"melanoma": 3, "nevus": 3}


def test_pipes_and_devices_are_listed_unread(tmp_path):
    two_classes(tmp_path)
    os.mkfifo(tmp_path / "melanoma" / "pipe.jpg")  # reading it would block for ever
    listed = {f.relpath: f.refused_code for f in LocalFolderSource(tmp_path).list_files()}
    assert listed["melanoma/pipe.jpg"] == "not_regular_file" and listed["melanoma/0.jpg"] == ""


def test_files_over_max_file_bytes_are_quarantined_unread(tmp_path):
    two_classes(tmp_path)
    for name in ("melanoma/huge.jpg", "labels.csv"):
        with open(tmp_path / name, "wb") as fh:  # sparse: no disk, but listed this size
            fh.truncate(MAX_FILE_BYTES + 1)
    tracemalloc.start()
    try:
        result = ingest(str(tmp_path), DataConfig())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    m = result.manifest.set_index("relpath")
    for name in ("melanoma/huge.jpg", "labels.csv"):
        assert (m.at[name, "status"], m.at[name, "reason_code"], m.at[name, "md5"]) == ("quarantined", "too_large", "")
        assert m.at[name, "reason"] == (
            f"{MAX_FILE_BYTES + 1} bytes is over data.max_file_bytes={MAX_FILE_BYTES}: not read"
        )
    assert peak < 32 * 2**20  # neither file was read into memory
    assert result.report["ingested"] == 6 and result.report["files_found"] == 8

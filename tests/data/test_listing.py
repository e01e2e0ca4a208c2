"""The listing digest (ingest's KFP cache key) changes with any file's content, not only its
name and size: a label CSV, a zip member, a gs:// object re-uploaded at the same size."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from components.core.settings import DataConfig
from components.data.listing import source_listing_digest
from components.data.sources import zip_archive
from tests.helpers.sources import csv_source, kaggle_files


def rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    """``path`` given new bytes, its modification time left as it was (``cp -p``, a restore)."""
    before = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_same_length_edit_of_the_label_csv_changes_the_listing_digest(tmp_path):
    root = csv_source(tmp_path / "ham", "ham10000")
    cfg = DataConfig()
    before = source_listing_digest(str(root), cfg)
    assert source_listing_digest(str(root), cfg) == before  # nothing changed, the cache holds
    labels = root / "HAM10000_metadata.csv"
    text = labels.read_text()
    assert ",bcc," in text
    # One image relabelled bcc -> mel: same length, and even the same modification time.
    rewrite_keeping_mtime(labels, text.replace(",bcc,", ",mel,", 1).encode())
    after = source_listing_digest(str(root), cfg)
    assert after != before
    # An image replaced by another of the same size, with a new modification time.
    image = root / "images" / "ISIC_0000001.jpg"
    data = image.read_bytes()
    image.write_bytes(data[:-3] + bytes(b ^ 0xFF for b in data[-3:]))
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    assert source_listing_digest(str(root), cfg) != after


def test_a_zip_member_of_the_same_size_with_other_bytes_changes_the_listing_digest(tmp_path):
    files = kaggle_files(2)
    archive = tmp_path / "kaggle.zip"

    def write(members: dict[str, bytes]) -> None:
        with zipfile.ZipFile(archive, "w") as zf:
            for name, data in members.items():
                zf.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data)
        os.utime(archive, ns=(0, 0))  # the archive's own time says nothing either

    write(files)
    before = source_listing_digest(str(archive), DataConfig())
    name = "Train/nevus/nev_1.jpg"
    write({**files, name: files[name][:-2] + b"\0\0"})
    zip_archive._open_archives.clear()  # a new process, as the next scheduled run is
    assert source_listing_digest(str(archive), DataConfig()) != before


def test_a_same_size_reupload_to_gcs_changes_the_listing_digest(gcs_emulator):
    from google.cloud import storage

    bucket = storage.Client().create_bucket("changes")
    for name, data in kaggle_files(2).items():
        bucket.blob(f"kaggle/{name}").upload_from_string(data)
    labels = b"image,label\nnev_0,nv\n"
    bucket.blob("kaggle/labels.csv").upload_from_string(labels)
    before = source_listing_digest("gs://changes/kaggle", DataConfig())
    bucket.blob("kaggle/labels.csv").upload_from_string(labels.replace(b"nv", b"mm"))
    assert source_listing_digest("gs://changes/kaggle", DataConfig()) != before

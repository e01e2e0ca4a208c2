"""A source that changes after ingest is seen: the listing digest (ingest's KFP cache key)
changes with any file's content, not only its name and size; normalize re-checks every
file it reads against the manifest (size limit and md5); a gs:// zip is cached by its
generation and its size is checked before it is downloaded."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from components.core import filenames
from components.core.errors import UserError
from components.core.settings import DataConfig
from components.data.ingest import ingest
from components.data.listing import source_listing_digest
from components.data.normalize import normalize
from components.data.sources import zip_archive
from components.data.sources.base import SourceError
from components.data.split import split
from tests.helpers.images import jpeg_bytes, lesion
from tests.helpers.sources import csv_source, kaggle_files


def rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    """``path`` given new bytes, its modification time left as it was (``cp -p``, a restore)."""
    before = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


# ---- the listing digest: ingest's cache key --------------------------------------


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


# ---- normalize re-checks what it reads against the manifest ----------------------


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


# ---- a zip on gs:// ----------------------------------------------------------------


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_a_reuploaded_gcs_zip_is_downloaded_again(gcs_emulator, tmp_path, monkeypatch):
    from google.cloud import storage

    monkeypatch.setenv("LESION_CACHE_DIR", str(tmp_path / "cache"))
    bucket = storage.Client().create_bucket("zips")
    bucket.blob("kaggle.zip").upload_from_string(zip_bytes(kaggle_files(2)))
    assert ingest("gs://zips/kaggle.zip", DataConfig()).report["ingested"] == 8
    bucket.blob("kaggle.zip").upload_from_string(zip_bytes(kaggle_files(3)))
    monkeypatch.setattr(zip_archive, "_open_archives", {})  # the next run: a new process, the same cache folder
    assert ingest("gs://zips/kaggle.zip", DataConfig()).report["ingested"] == 12


def test_a_gcs_zip_over_the_limit_is_refused_before_it_is_downloaded(gcs_emulator, tmp_path, monkeypatch):
    from google.cloud import storage

    monkeypatch.setenv("LESION_CACHE_DIR", str(tmp_path / "cache"))
    archive = zip_bytes(kaggle_files(2))
    storage.Client().create_bucket("big-zips").blob("kaggle.zip").upload_from_string(archive)
    limit = len(archive) // 2
    with pytest.raises(
        SourceError, match=rf"{len(archive)} bytes, over data.zip_max_total_bytes={limit}: not downloaded"
    ):
        ingest("gs://big-zips/kaggle.zip", DataConfig(zip_max_total_bytes=limit))
    assert not list((tmp_path / "cache").glob("*"))  # nothing downloaded, not even in part

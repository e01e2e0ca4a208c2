"""A .zip source, local or on gs://: read in place, never extracted; hostile entries and
limits refused; a gs:// zip cached by its generation and its size checked before download."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from components.core.settings import DataConfig
from components.data.ingest import ingest
from components.data.sources import read_bytes, zip_archive
from components.data.sources.base import SourceError
from tests.helpers.images import jpeg_bytes, lesion
from tests.helpers.sources import kaggle_files, write_zip, zip_bytes


def test_zip_members_over_max_file_bytes_are_quarantined_by_their_listed_size(tmp_path):
    files = kaggle_files()
    files["Train/melanoma/big.jpg"] = os.urandom(50_000)
    result = ingest(str(write_zip(tmp_path / "data.zip", files)), DataConfig(max_file_bytes=20_000))
    row = result.manifest.set_index("relpath").loc["Train/melanoma/big.jpg"]
    assert (row.status, row.reason_code, row.md5) == ("quarantined", "too_large", "")
    assert result.report["ingested"] == 12


def test_zip_of_a_kaggle_folder_is_read_in_place(tmp_path, monkeypatch):
    # Where an extraction would go (the temporary folder, the cache of downloaded zips),
    # inside tmp_path, so that the check below sees one.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setenv("LESION_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "tmp").mkdir()
    files = {f"isic/{name}": data for name, data in kaggle_files().items()}
    files["isic/README.txt"] = b"about"
    archive = write_zip(tmp_path / "data.zip", files)
    result = ingest(str(archive), DataConfig(), tmp_path / "out")
    m = result.manifest
    assert result.report["ingested"] == 12 and result.report["ignored"] == 1
    # The wrapping "isic/" folder is not a label; Train/Test still give the split.
    assert set(m[m.status == "ingested"].label) == {"melanoma", "nevus"}
    assert (m[m.status == "ingested"].split == "test").sum() == 6
    row = m[m.relpath == "isic/Test/nevus/nev_1.jpg"].iloc[0]
    assert row.uri == f"zip://{archive.resolve()}!/isic/Test/nevus/nev_1.jpg"
    assert read_bytes(row.uri) == files["isic/Test/nevus/nev_1.jpg"]
    # The report's previews: its members read again at the merge, in place.
    assert (tmp_path / "out" / "report.html").read_text().count("data:image/jpeg;base64,") == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zip", "out", "tmp"]
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".jpg", ".txt")]  # nothing extracted, anywhere


def test_zip_traversal_entries_are_refused_and_reported(tmp_path):
    files = kaggle_files()
    files["../escape.jpg"] = jpeg_bytes(lesion(60))
    files["Train/melanoma/../../../up.jpg"] = jpeg_bytes(lesion(61))
    files["/abs/root.jpg"] = jpeg_bytes(lesion(62))
    archive = tmp_path / "inner" / "evil.zip"
    archive.parent.mkdir()
    write_zip(archive, files)
    result = ingest(str(archive), DataConfig())
    refused = result.manifest[result.manifest.reason_code == "unsafe_zip_path"]
    assert len(refused) == 3 and (refused.status == "quarantined").all()
    assert result.report["files_found"] == len(files)
    assert not (tmp_path / "escape.jpg").exists() and not Path("/abs/root.jpg").exists()
    with pytest.raises(PermissionError):
        read_bytes(f"zip://{archive}!/../escape.jpg")


def test_zip_limits_refuse_the_archive(tmp_path):
    archive = write_zip(tmp_path / "many.zip", kaggle_files())
    with pytest.raises(SourceError, match="zip_max_entries"):
        ingest(str(archive), DataConfig(zip_max_entries=5))
    with pytest.raises(SourceError, match="zip_max_total_bytes"):
        ingest(str(archive), DataConfig(zip_max_total_bytes=1000))


def test_zip_on_gcs_is_cached_and_read(bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("LESION_CACHE_DIR", str(tmp_path / "cache"))
    result = ingest("gs://lesions/archives/kaggle.zip", DataConfig())
    assert result.report["ingested"] == 8
    uri = result.manifest.uri.iloc[0]
    assert uri.startswith("zip://gs://lesions/archives/kaggle.zip!/")
    assert read_bytes(uri)[:2] == b"\xff\xd8"


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

"""Every kind of source through the same ingest: local folders (with hostile links and
oversized files), zip archives (with hostile entries), the three CSV formats, gs:// on a
real gcp-storage-emulator, and `lesionpipe ingest`."""

from __future__ import annotations

import io
import os
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from components.core.section import SettingsError, load_section
from components.core.settings import DataConfig
from components.data import sources
from components.data.ingest import IngestError, ingest
from components.data.sources import read_bytes
from components.data.sources.base import FileTooLarge, SourceError
from components.data.sources.local import LocalFolderSource
from pipeline.cli import main
from tests.helpers import write_class_folder
from tests.helpers.images import jpeg_bytes, lesion
from tests.helpers.sources import csv_source, kaggle_files


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


# ---- local folders -----------------------------------------------------------

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


def test_zip_members_over_max_file_bytes_are_quarantined_by_their_listed_size(tmp_path):
    files = kaggle_files()
    files["Train/melanoma/big.jpg"] = os.urandom(50_000)
    result = ingest(str(write_zip(tmp_path / "data.zip", files)), DataConfig(max_file_bytes=20_000))
    row = result.manifest.set_index("relpath").loc["Train/melanoma/big.jpg"]
    assert (row.status, row.reason_code, row.md5) == ("quarantined", "too_large", "")
    assert result.report["ingested"] == 12


def test_reads_never_go_past_max_bytes(tmp_path):
    (tmp_path / "grown.jpg").write_bytes(b"x" * 5000)  # listed small, then grew
    archive = write_zip(tmp_path / "data.zip", {"a/grown.jpg": b"x" * 5000})
    for uri in (str(tmp_path / "grown.jpg"), f"zip://{archive}!/a/grown.jpg"):
        assert read_bytes(uri, 5000) == b"x" * 5000
        with pytest.raises(FileTooLarge, match="more than 4999 bytes"):
            read_bytes(uri, 4999)


# ---- zip ---------------------------------------------------------------------


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


# ---- CSV formats -------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["ham10000", "isic2019", "siim2020"])
def test_csv_formats_are_detected_and_labelled(tmp_path, fmt):
    result = ingest(str(csv_source(tmp_path, fmt)), DataConfig())
    r, m = result.report, result.manifest.set_index("relpath")
    assert r["format"] == fmt
    assert r["class_counts"] == {"basal_cell_carcinoma": 3, "melanoma": 2, "nevus": 3}
    assert r["label_rows_without_image"] == 1
    assert m.loc["images/ISIC_0000000.jpg", "reason_code"] == "no_label"
    assert m.loc["images/ISIC_0000003.jpg", ["label", "group_id"]].tolist() == ["melanoma", "L1"]
    assert m.loc["other.csv", "reason_code"] == "not_image_file"
    assert (m[m.reason_code == "label_file"].shape[0]) == (2 if fmt == "isic2019" else 1)
    assert r["files_found"] == r["ingested"] + r["quarantined"] + r["ignored"]


@pytest.mark.parametrize("fmt", ["ham10000", "isic2019", "siim2020"])
def test_ingest_keeps_each_formats_patient_metadata(tmp_path, fmt):
    """sex, age, body site (and HAM10000's dx_type as confirmation) from the format's own
    columns, carried through the split; a source without them has the columns empty."""
    from components.data.split import split_manifest

    root = csv_source(tmp_path / "src", fmt)
    manifest = ingest(str(root), DataConfig()).manifest
    m = manifest.set_index("relpath")
    row = m.loc["images/ISIC_0000003.jpg"]
    assert [row.sex, float(row.age), row.body_site] == ["male", 50.0, "face"]
    assert row.confirmation == ("histo" if fmt == "ham10000" else "")
    splits, _ = split_manifest(manifest, DataConfig(val_fraction=0, test_fraction=0))
    assert set(splits.body_site) == {"back", "face"}
    folders = ingest(str(write_class_folder(tmp_path / "folders", ["melanoma", "nevus"], 2)), DataConfig()).manifest
    assert (folders[["sex", "age", "body_site", "confirmation"]] == "").all().all()


def test_named_format_must_match_the_files(tmp_path):
    root = csv_source(tmp_path, "ham10000")
    assert ingest(str(root), DataConfig(format="ham10000")).report["format"] == "ham10000"
    with pytest.raises(IngestError, match="siim2020 needs a CSV with columns"):
        ingest(str(root), DataConfig(format="siim2020"))
    with pytest.raises(SettingsError, match="data.format must be auto, folders, ham10000, isic2019 or siim2020"):
        load_section(DataConfig, {"format": "dicom"}, "data.")


def test_class_map_merges_source_labels(tmp_path):
    root = csv_source(tmp_path, "ham10000")
    result = ingest(str(root), DataConfig(class_map={"bcc": "carcinoma", "mel": "carcinoma"}))
    assert result.report["class_counts"] == {"carcinoma": 5, "nevus": 3}


# ---- Google Cloud Storage (emulator) ------------------------------------------


@pytest.fixture(scope="module")
def bucket(gcs_emulator):
    from google.cloud import storage

    client = storage.Client()
    bucket = client.create_bucket("lesions")
    for name, data in kaggle_files().items():
        bucket.blob(f"kaggle/{name}").upload_from_string(data)
    bucket.blob("kaggle/.DS_Store").upload_from_string(b"\0")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in kaggle_files(2).items():
            zf.writestr(name, data)
    bucket.blob("archives/kaggle.zip").upload_from_string(archive.getvalue())
    return bucket


def test_gcs_prefix_is_listed_and_read(bucket, tmp_path):
    result = ingest("gs://lesions/kaggle", DataConfig(), tmp_path)
    r, m = result.report, result.manifest
    assert (r["files_found"], r["ingested"], r["ignored"]) == (13, 12, 1)
    assert r["source_splits"] == {"test": 6, "train": 6}
    uri = m[m.relpath == "Train/nevus/nev_2.jpg"].uri.iloc[0]
    assert uri == "gs://lesions/kaggle/Train/nevus/nev_2.jpg"
    assert read_bytes(uri) == kaggle_files()["Train/nevus/nev_2.jpg"]


def test_zip_on_gcs_is_cached_and_read(bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("LESION_CACHE_DIR", str(tmp_path / "cache"))
    result = ingest("gs://lesions/archives/kaggle.zip", DataConfig())
    assert result.report["ingested"] == 8
    uri = result.manifest.uri.iloc[0]
    assert uri.startswith("zip://gs://lesions/archives/kaggle.zip!/")
    assert read_bytes(uri)[:2] == b"\xff\xd8"


def test_gcs_objects_over_max_file_bytes_are_quarantined_unread(bucket):
    for name, data in kaggle_files().items():
        bucket.blob(f"sized/{name}").upload_from_string(data)
    bucket.blob("sized/Train/nevus/big.jpg").upload_from_string(os.urandom(50_000))
    result = ingest("gs://lesions/sized", DataConfig(max_file_bytes=20_000))
    row = result.manifest.set_index("relpath").loc["Train/nevus/big.jpg"]
    assert (row.bytes, row.status, row.reason_code, row.md5) == (50_000, "quarantined", "too_large", "")
    assert result.report["ingested"] == 12
    assert read_bytes("gs://lesions/sized/Train/nevus/big.jpg", 50_000)[:1]
    with pytest.raises(FileTooLarge):  # a download stops at the limit
        read_bytes("gs://lesions/sized/Train/nevus/big.jpg", 49_999)


def test_gcs_errors_are_user_errors(bucket):
    with pytest.raises(SourceError, match="cannot list gs://no-such-bucket/"):
        ingest("gs://no-such-bucket/x", DataConfig())
    with pytest.raises(IngestError, match="no files found"):
        ingest("gs://lesions/empty-prefix", DataConfig())
    with pytest.raises(FileNotFoundError):
        sources.read_bytes("gs://lesions/kaggle/missing.jpg")


# ---- lesionpipe ingest ---------------------------------------------------------


def test_cli_ingest_writes_outputs_and_fails_in_one_line(tmp_path):
    root = csv_source(tmp_path / "ham", "ham10000")
    runner = CliRunner()
    ok = runner.invoke(
        main, ["ingest", "--data", str(root), "--output-dir", str(tmp_path / "out"), "--format", "ham10000"]
    )
    assert ok.exit_code == 0, ok.output
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "manifest.parquet",
        "report.json",
        "report.md",
        "report.html",
    }
    (tmp_path / "empty" / "melanoma").mkdir(parents=True)
    (tmp_path / "empty" / "melanoma" / "notes.txt").write_text("nothing")
    for data in (tmp_path / "empty", tmp_path / "missing", "gs://"):
        bad = runner.invoke(main, ["ingest", "--data", str(data), "--output-dir", str(tmp_path / "bad")])
        assert bad.exit_code != 0
        lines = bad.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in bad.output

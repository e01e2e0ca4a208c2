"""Labelling: the CSV formats detected and labelled, a named format checked against the files,
data.class_map merging source labels."""

from __future__ import annotations

import pytest

from components.core.config_base import ConfigError, load_section
from components.core.settings import DataConfig
from components.data.ingest import IngestError, ingest
from tests.helpers import write_class_folder
from tests.helpers.sources import csv_source


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


def test_named_format_must_match_the_files(tmp_path):
    root = csv_source(tmp_path, "ham10000")
    assert ingest(str(root), DataConfig(format="ham10000")).report["format"] == "ham10000"
    with pytest.raises(IngestError, match="siim2020 needs a CSV with columns"):
        ingest(str(root), DataConfig(format="siim2020"))
    with pytest.raises(ConfigError, match="data.format must be auto, folders, ham10000, isic2019 or siim2020"):
        load_section(DataConfig, {"format": "dicom"}, "data.")


def test_class_map_merges_source_labels(tmp_path):
    root = csv_source(tmp_path, "ham10000")
    result = ingest(str(root), DataConfig(class_map={"bcc": "carcinoma", "mel": "carcinoma"}))
    assert result.report["class_counts"] == {"carcinoma": 5, "nevus": 3}


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

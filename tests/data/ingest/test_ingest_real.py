"""Ingest and split on the real collections in LESION_DATA (skipped when unset)."""

from __future__ import annotations

import pytest

from components.core.settings import DataConfig
from components.data.ingest import ingest
from components.data.split import split_manifest

pytestmark = pytest.mark.real_data


def check_accounting_and_split(result) -> dict:
    r = result.report
    assert r["files_found"] == r["ingested"] + r["quarantined"] + r["ignored"] == len(result.manifest)
    df, split_report = split_manifest(result.manifest, DataConfig())
    assert len(df) == r["ingested"]
    for column in ("group_id", "md5"):
        keyed = df[df[column] != ""]
        assert (keyed.groupby(column).subset.nunique() == 1).all()
    return split_report


def test_isic9_duplicates_conflicts_and_leaks_are_found(lesion_data, tmp_path):
    result = ingest(str(lesion_data / "isic9"), DataConfig(), tmp_path)
    r = result.report
    assert r["files_found"] == 2359 and r["format"] == "folders"
    # The Kaggle copy files the same picture under two diagnoses, in Train and Test.
    assert r["label_conflict_groups"] > 100 and r["split_leak_groups"] > 0
    assert set(r["classes"]) >= {"melanoma", "nevus", "benign_keratosis", "actinic_keratosis"}
    split_report = check_accounting_and_split(result)
    assert split_report["source_test_split_kept"]
    # Test holds every source Test image, plus any near-duplicate tied to one.
    assert split_report["subset_sizes"]["test"] >= r["source_splits"]["test"]


def test_ham10000_lesions_stay_together(lesion_data, tmp_path):
    result = ingest(str(lesion_data / "ham10000"), DataConfig(), tmp_path)
    r = result.report
    assert r["format"] == "ham10000" and r["files_found"] == 7524
    assert r["classes"] == sorted(
        [
            "actinic_keratosis",
            "basal_cell_carcinoma",
            "benign_keratosis",
            "dermatofibroma",
            "melanoma",
            "nevus",
            "vascular_lesion",
        ]
    )
    assert (result.manifest[result.manifest.status == "ingested"].group_id != "").all()
    split_report = check_accounting_and_split(result)
    assert all(split_report["class_counts"][s]["dermatofibroma"] > 0 for s in ("train", "val", "test"))


def test_isic9_small_classes_after_quarantine_are_warned_and_can_stop_the_run(lesion_data, tmp_path):
    """Issue 12: label-conflict quarantine leaves isic9's seborrheic keratosis with a
    handful of images per subset; the split says so, and the stop threshold refuses it."""
    from components.data.split import SplitError, split
    from pipeline.config import RunConfig

    cfg = RunConfig.load("configs/isic9.yaml").data
    ingest(str(lesion_data / "isic9"), cfg, tmp_path / "manifest")
    report = split(tmp_path / "manifest", cfg, tmp_path / "splits")
    counts = report["class_counts"]
    small = sorted(c for c in counts["train"] if any(counts[s][c] < 10 for s in ("train", "val", "test")))
    assert "seborrheic_keratosis" in small
    assert [w.split()[1] for w in report["class_size_warnings"]] == small
    seb = {s: n for s, n in ((s, counts[s]["seborrheic_keratosis"]) for s in ("train", "val", "test")) if n < 10}
    assert (
        f"class seborrheic_keratosis has few images after quarantine and split "
        f"({', '.join(f'{s} {n}' for s, n in seb.items())}): fewer than"
    ) in report["class_size_warnings"][small.index("seborrheic_keratosis")]
    with pytest.raises(SplitError, match=r"data.min_images_per_class_split=10\): .*seborrheic_keratosis \("):
        split(tmp_path / "manifest", cfg.model_copy(update={"min_images_per_class_split": 10}), tmp_path / "stopped")

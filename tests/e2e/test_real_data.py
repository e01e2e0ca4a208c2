"""ingest + split + normalize on slices of the real collections in LESION_DATA
(../shared/data in CI). Slices are copied into the test's temporary folder: a symlink
leaving its source is refused by ingest (symlink_outside_source), as a user's would be."""

import shutil

import pandas as pd
import pytest

from components.core.settings import DataConfig
from components.data import tfrecords
from components.data.ingest import ingest
from components.data.normalize import normalize
from components.data.split import split

pytestmark = pytest.mark.real_data

ISIC9_CLASSES = [
    "actinic_keratosis",
    "basal_cell_carcinoma",
    "benign_keratosis",
    "dermatofibroma",
    "melanoma",
    "nevus",
    "seborrheic_keratosis",
    "squamous_cell_carcinoma",
    "vascular_lesion",
]


def copy_slice(src_root, dst_root, relpaths):
    for rel in relpaths:
        dst = dst_root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src_root / rel, dst)


def run_steps(source, tmp_path, cfg):
    result = ingest(str(source), cfg, tmp_path / "manifest")
    split(tmp_path / "manifest", cfg, tmp_path / "splits")
    meta = normalize(tmp_path / "splits", cfg, tmp_path / "normalized")
    return result, pd.read_parquet(tmp_path / "splits" / "splits.parquet"), meta


def test_isic9_slice_keeps_kaggle_test_split(lesion_data, tmp_path):
    src = lesion_data / "isic9"
    picked = []
    for part, per_class in (("Train", 12), ("Test", 3)):
        for class_dir in sorted((src / part).iterdir()):
            picked += [f.relative_to(src) for f in sorted(class_dir.glob("*.jpg"))[:per_class]]
    copy_slice(src, tmp_path / "isic9", picked)
    cfg = DataConfig(image_size=48, val_fraction=0.25, test_fraction=0.0)
    result, splits, meta = run_steps(tmp_path / "isic9", tmp_path, cfg)

    report = result.report
    assert report["files_found"] == len(picked) == 9 * 15
    assert report["files_found"] == report["ingested"] + report["quarantined"] + report["ignored"]
    assert report["classes"] == ISIC9_CLASSES
    # The Kaggle Test folder is the test split, untouched; val comes from Train only.
    test_rows = splits[splits.subset == "test"]
    assert set(test_rows.relpath.str.split("/").str[0]) == {"Test"}
    assert set(splits[splits.subset != "test"].relpath.str.split("/").str[0]) == {"Train"}
    assert meta["counts"]["test"] == len(test_rows) == (splits.split == "test").sum()
    assert meta["classes"] == ISIC9_CLASSES
    assert all(n > 0 for n in meta["class_counts"]["val"])
    images, _, _ = tfrecords.read_all(tfrecords.shard_paths(tmp_path / "normalized", "train"), 48)
    assert images.shape == (meta["counts"]["train"], 48, 48, 3)


def test_ham10000_slice_never_splits_a_lesion(lesion_data, tmp_path):
    src = lesion_data / "ham10000"
    meta_csv = pd.read_csv(src / "HAM10000_metadata.csv")
    # Whole lesions, about 24 images per diagnosis, in CSV order (a lesion's images are adjacent).
    lesions = meta_csv.groupby("dx").apply(
        lambda g: g[g.lesion_id.isin(g.lesion_id.unique()[:16])], include_groups=False
    )
    rows = meta_csv[meta_csv.lesion_id.isin(lesions.lesion_id)]
    copy_slice(src, tmp_path / "ham", ["HAM10000_metadata.csv"] + [f"images/{i}.jpg" for i in rows.image_id])
    cfg = DataConfig(image_size=48, format="ham10000", val_fraction=0.2, test_fraction=0.2)
    result, splits, meta = run_steps(tmp_path / "ham", tmp_path, cfg)

    report = result.report
    assert report["files_found"] == len(rows) + 1  # the images and the label file
    assert report["files_found"] == report["ingested"] + report["quarantined"] + report["ignored"]
    assert report["classes"] == [
        "actinic_keratosis",
        "basal_cell_carcinoma",
        "benign_keratosis",
        "dermatofibroma",
        "melanoma",
        "nevus",
        "vascular_lesion",
    ]
    assert sum(report["class_counts"].values()) == report["ingested"]
    subsets_per_lesion = splits.groupby("group_id").subset.nunique()
    assert subsets_per_lesion.max() == 1, "a lesion spans two splits"
    assert (splits.group_id != "").all()
    for subset in ("train", "val", "test"):
        assert all(n > 0 for n in meta["class_counts"][subset]), f"a class is missing from {subset}"
    assert sum(meta["counts"].values()) == report["ingested"]

"""Split: grouped by lesion/patient, identical content and near-duplicates; stratified;
deterministic; the source's Test kept; a clear error when a class is too small."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from components.core.settings import DataConfig
from components.data.split import SplitError, split, split_manifest

LESIONPIPE = str(Path(sys.executable).parent / "lesionpipe")


def manifest(rows: list[dict]) -> pd.DataFrame:
    defaults = {
        "group_id": "",
        "split": "",
        "md5": "",
        "status": "ingested",
        "reason_code": "",
        "reason": "",
        "duplicate_of": "",
        "near_duplicate_group": "",
    }
    frame = pd.DataFrame([{**defaults, **row} for row in rows])
    frame["md5"] = [m or f"md5-{u}" for m, u in zip(frame.md5, frame.uri)]
    return frame


def lesions(per_class: int = 20, images_per_lesion: int = 3) -> list[dict]:
    return [
        {"uri": f"{cls}/{lesion}/{i}.jpg", "label": cls, "group_id": f"{cls}-{lesion}"}
        for cls in ("melanoma", "nevus")
        for lesion in range(per_class)
        for i in range(images_per_lesion)
    ]


def subsets_of(df: pd.DataFrame, column: str) -> pd.Series:
    return df.groupby(column).subset.nunique()


def test_lesions_never_span_subsets_and_classes_are_stratified():
    df, report = split_manifest(manifest(lesions(per_class=300)), DataConfig(val_fraction=0.2, test_fraction=0.2))
    assert (subsets_of(df, "group_id") == 1).all()
    for subset, target in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        for label in ("melanoma", "nevus"):
            # 300 lesions a class: the binomial spread of a share is ~0.03
            assert report["class_counts"][subset][label] / 900 == pytest.approx(target, abs=0.08)


def _subset_by_lesion(rows: list[dict], cfg: DataConfig) -> dict[str, str]:
    df, _ = split_manifest(manifest(rows), cfg)
    return dict(zip(df.group_id, df.subset))


@pytest.mark.parametrize("seed", [0, 1, 123])
def test_ten_percent_more_lesions_moves_no_existing_lesion(seed):
    cfg = DataConfig(seed=seed, val_fraction=0.15, test_fraction=0.15)
    first = lesions(per_class=60, images_per_lesion=2)
    grown = lesions(per_class=66, images_per_lesion=2)
    before, after = _subset_by_lesion(first, cfg), _subset_by_lesion(grown, cfg)
    assert {g: after[g] for g in before} == before


def test_removing_or_editing_other_images_moves_no_lesion():
    cfg = DataConfig(val_fraction=0.2, test_fraction=0.2)
    rows = lesions(per_class=40, images_per_lesion=2)
    before = _subset_by_lesion(rows, cfg)
    fewer = [r for r in rows if not r["group_id"].endswith(("-3", "-17"))]
    edited = [{**r, "md5": f"edited-{r['uri']}"} if r["uri"].endswith("/1.jpg") else r for r in fewer]
    after = _subset_by_lesion(edited, cfg)
    assert {g: before[g] for g in after} == after


def test_a_rare_class_has_a_group_in_every_subset_and_the_report_names_the_ones_placed():
    rows = lesions(per_class=40, images_per_lesion=1) + [
        {"uri": f"rare/{i}.jpg", "label": "dermatofibroma", "group_id": f"rare-{i}"} for i in range(3)
    ]
    placed = set()
    for seed in range(10):
        _, report = split_manifest(manifest(rows), DataConfig(seed=seed, val_fraction=0.2, test_fraction=0.2))
        placed.update(report["groups_placed_by_minimum"])
        assert {s: report["class_counts"][s]["dermatofibroma"] for s in ("train", "val", "test")} == {
            "train": 1,
            "val": 1,
            "test": 1,
        }
    # three groups fall in three different subsets by hash alone in 14 % of seeds
    assert placed & {f"group:rare-{i}" for i in range(3)}


def test_an_image_joining_two_lesions_puts_both_in_the_higher_subset():
    cfg = DataConfig(val_fraction=0.2, test_fraction=0.2)
    rows = lesions(per_class=40, images_per_lesion=1)
    before = _subset_by_lesion(rows, cfg)
    train = next(g for g, s in before.items() if s == "train" and g.startswith("melanoma"))
    test = next(g for g, s in before.items() if s == "test" and g.startswith("melanoma"))
    # the same image arrives again under the test lesion's id: ingest keeps one copy
    copy_of = next(r for r in rows if r["group_id"] == train)
    rows.append(
        {
            **copy_of,
            "uri": "again.jpg",
            "group_id": test,
            "md5": f"md5-{copy_of['uri']}",
            "status": "ignored",
            "reason_code": "duplicate",
        }
    )
    after = _subset_by_lesion(rows, cfg)
    assert after[train] == after[test] == "test"
    assert {g: s for g, s in after.items() if g not in (train, test)} == {
        g: s for g, s in before.items() if g not in (train, test)
    }


def test_duplicates_and_near_duplicates_link_lesions():
    rows = lesions(per_class=10, images_per_lesion=1)
    # melanoma-0 and melanoma-1 share an image (ingest kept one copy, ignored the other);
    # melanoma-2 and melanoma-3 are near-duplicates.
    rows.append(
        {
            "uri": "dup.jpg",
            "label": "melanoma",
            "group_id": "melanoma-1",
            "md5": "md5-melanoma/0/0.jpg",
            "status": "ignored",
            "reason_code": "duplicate",
            "reason": "exact duplicate",
        }
    )
    frame = manifest(rows)
    frame.loc[frame.group_id.isin(["melanoma-2", "melanoma-3"]), "near_duplicate_group"] = "near-00001"
    for seed in range(5):
        df, _ = split_manifest(frame, DataConfig(seed=seed))
        subset = df.set_index("group_id").subset
        assert subset["melanoma-0"] == subset["melanoma-1"]
        assert subset["melanoma-2"] == subset["melanoma-3"]
        assert "dup.jpg" not in set(df.uri)


def test_split_is_deterministic_and_seeded(tmp_path):
    path = tmp_path / "ingest"
    path.mkdir()
    manifest(lesions()).to_parquet(path / "manifest.parquet")
    first = split(path, DataConfig(seed=1), tmp_path / "a")
    again = split(path, DataConfig(seed=1), tmp_path / "b")
    assert first == again
    a = pd.read_parquet(tmp_path / "a" / "splits.parquet")
    b = pd.read_parquet(tmp_path / "b" / "splits.parquet")
    other, _ = split_manifest(manifest(lesions()), DataConfig(seed=2))
    assert a.subset.tolist() == b.subset.tolist() != other.subset.tolist()


def test_source_test_split_is_kept_with_its_groups():
    rows = lesions(per_class=10, images_per_lesion=2)
    for row in rows:
        if row["group_id"].endswith(("-0", "-1")) and row["uri"].endswith("0.jpg"):
            row["split"] = "test"
    df, report = split_manifest(manifest(rows), DataConfig())
    assert report["source_test_split_kept"]
    test_groups = {r["group_id"] for r in rows if r.get("split") == "test"}
    assert set(df[df.subset == "test"].group_id) == test_groups  # whole lesions, and only those
    assert set(df[df.split == "test"].subset) == {"test"}


def test_too_few_groups_is_a_clear_error():
    rows = lesions(per_class=10) + [
        {"uri": f"df/{i}.jpg", "label": "dermatofibroma", "group_id": "df-0"} for i in range(8)
    ]
    with pytest.raises(SplitError, match="class 'dermatofibroma' has 1 independent groups"):
        split_manifest(manifest(rows), DataConfig())


def _uneven_source(root):
    """Real image files: two classes of 40 images, melanoma with 3 (distinct drawings)."""
    from tests.helpers import write_class_folder

    write_class_folder(root, classes=("nevus", "basal_cell_carcinoma"), per_class=40, size=40)
    write_class_folder(root, classes=("melanoma",), per_class=3, size=40, seed=11)
    return root


def test_a_class_with_few_images_per_subset_is_a_warning_in_the_report_and_on_stderr(tmp_path, capsys):
    from components.data.ingest import ingest

    cfg = DataConfig(val_fraction=0.25, test_fraction=0.25, warn_images_per_class_split=3)
    ingest(str(_uneven_source(tmp_path / "data")), cfg, tmp_path / "ingested")
    report = split(tmp_path / "ingested", cfg, tmp_path / "split")
    counts = {s: report["class_counts"][s]["melanoma"] for s in ("train", "val", "test")}
    assert counts == {"train": 1, "val": 1, "test": 1}
    assert report["class_size_warnings"] == [
        "class melanoma has few images after quarantine and split (train 1, val 1, test 1): fewer than "
        "data.warn_images_per_class_split=3, its metrics will be noisy"
    ]
    assert (
        json.loads((tmp_path / "split" / "split_report.json").read_text())["class_size_warnings"]
        == report["class_size_warnings"]
    )
    assert f"warning: {report['class_size_warnings'][0]}" in capsys.readouterr().err
    # 0 turns the warning off; classes at the threshold are fine.
    assert (
        split(tmp_path / "ingested", cfg.model_copy(update={"warn_images_per_class_split": 0}), tmp_path / "quiet")[
            "class_size_warnings"
        ]
        == []
    )
    assert (
        split(tmp_path / "ingested", cfg.model_copy(update={"warn_images_per_class_split": 1}), tmp_path / "one")[
            "class_size_warnings"
        ]
        == []
    )


def test_the_stop_threshold_ends_the_run_before_training_with_one_line(tmp_path):
    data = _uneven_source(tmp_path / "data")
    proc = subprocess.run(
        [
            LESIONPIPE,
            "run",
            "--data",
            str(data),
            "--output-dir",
            "out",
            "--set",
            "data.val_fraction=0.25",
            "--set",
            "data.test_fraction=0.25",
            "--set",
            "data.num_shards=1",
            "--set",
            "data.ingest_partitions=1",
            "--set",
            "data.min_images_per_class_split=2",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    last = output.strip().splitlines()[-1]
    assert last.startswith(
        "Error: split failed: too few images per class after quarantine and split "
        "(data.min_images_per_class_split=2): melanoma (train 1, val 1, test 1); add images"
    ), last
    assert "] train ..." not in proc.stderr  # stopped before training
    # The warning (default threshold 10) was on the quiet console before the stop.
    assert re.search(r"^ +warning: class melanoma has few images after quarantine and split", proc.stderr, re.M)

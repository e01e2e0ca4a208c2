"""The retraining loop on real images and a real MLflow server: data v1 (whole HAM10000
lesions of four diagnoses) trains the champion; data v2 = v1 + ~10 % new lesions trains
the next model. Every v1 lesion keeps its subset, the champion is never compared on an
image it trained or validated on, a planted clearly-better model is promoted and an
equally good one is not, and a model trained on synthetic images never replaces the real
champion. Tiny seed CNN, 32 px, one epoch: the models are poor, the loop is real."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.core.tracking import pipeline_run
from components.data import tfrecords
from components.data.ingest import ingest
from components.data.normalize import normalize
from components.data.split import split
from components.evaluation.evaluate import evaluate, load_scored
from components.registry.champion import find_champion
from components.registry.champion_gate import CHALLENGER, CHAMPION
from components.registry.rescoring import score_champion_on_test_split
from components.scoring.metrics import Scored, classification_metrics
from components.training.train import train
from pipeline.config import RunConfig
from tests.helpers.models import log_keras_model
from tests.helpers.registry import gate_config, promote
from tests.helpers.tiny_data import make_tiny_shards, tiny_config

pytestmark = pytest.mark.real_data

DIAGNOSES = ("bcc", "bkl", "mel", "nv")  # the synthetic set's four classes, so the two can meet at the gate
V1_LESIONS, NEW_LESIONS = 45, 5  # per diagnosis: v2 has ~11 % more lesions
SIZE = 32


def _config() -> RunConfig:
    return RunConfig.from_dict(
        {
            "data": {"format": "ham10000", "image_size": SIZE, "val_fraction": 0.2, "test_fraction": 0.3},
            "train": {"epochs": 1, "batch_size": 32, "early_stopping_patience": 10},
            "evaluate": {"worst_images": 0, "gradcam_images": 0, "bootstrap_resamples": 200},
        }
    )


def _lesions(lesion_data: Path) -> tuple[pd.DataFrame, set[str], set[str]]:
    """The metadata rows of the first V1 + NEW lesions of each diagnosis (sorted ids), v1's ids, the new ids."""
    rows = pd.read_csv(lesion_data / "ham10000" / "HAM10000_metadata.csv")
    rows = rows[rows.dx.isin(DIAGNOSES)]
    v1, new = set(), set()
    for _, of_dx in rows.groupby("dx"):
        ids = sorted(of_dx.lesion_id.unique())
        v1 |= set(ids[:V1_LESIONS])
        new |= set(ids[V1_LESIONS : V1_LESIONS + NEW_LESIONS])
    return rows[rows.lesion_id.isin(v1 | new)], v1, new


def _prepare(lesion_data: Path, rows: pd.DataFrame, root: Path, cfg: RunConfig) -> tuple[Path, pd.DataFrame]:
    """The data version ``rows`` as a HAM10000 folder (copies: a symlink leaving the source
    is refused) through ingest, split and normalize; (normalized folder, the split's rows)."""
    source = root / "source"
    (source / "images").mkdir(parents=True)
    rows.to_csv(source / "HAM10000_metadata.csv", index=False)
    for image_id in rows.image_id:
        shutil.copyfile(lesion_data / "ham10000" / "images" / f"{image_id}.jpg", source / "images" / f"{image_id}.jpg")
    ingest(str(source), cfg.data, root / "ingested")
    split(root / "ingested", cfg.data, root / "split")
    normalize(root / "split", cfg.data, root / "normalized")
    return root / "normalized", pd.read_parquet(root / "split" / "splits.parquet")


def _trained(normalized: Path, root: Path, cfg: RunConfig, tracking_uri: str) -> tuple[str, str, Scored]:
    """A model trained on ``normalized`` and logged to its own MLflow run; (its file, its URI, its test scores)."""
    result = train(normalized, None, cfg.train, root / "model")
    evaluate(result.model_path, normalized, cfg.evaluate, root / "evaluation")
    classes = tfrecords.read_meta(normalized)["classes"]
    uri = _logged(result.model_path, root.name, tracking_uri, classes)
    return result.model_path, uri, load_scored(root / "evaluation")


def _logged(model_path: str, run_name: str, tracking_uri: str, classes: list[str]) -> str:
    """``model_path`` logged by a run of its own (a planted model: a new model URI)."""
    run_id = pipeline_run(tracking_uri, "retraining-loop", run_name, f"kfp-{run_name}-{time.time_ns()}")
    return log_keras_model(model_path, SIZE, tracking_uri, run_id, classes)


def _clearly_better(scored: Scored, classes: list[str]) -> Scored:
    """Scores that put 0.85 on the true class of every test image: balanced accuracy 1."""
    probs = np.full((len(scored.y_true), len(classes)), 0.15 / (len(classes) - 1))
    probs[np.arange(len(scored.y_true)), scored.y_true] = 0.85
    return Scored(scored.y_true, probs, classification_metrics(scored.y_true, probs, classes, "melanoma"))


def _unseen_test_images(normalized: Path, champion_splits: pd.DataFrame) -> tuple[int, int]:
    """(test images of ``normalized``, those whose content and lesion the champion's train
    and validation splits do not hold), counted from the split files, apart from the gate's code."""
    images = tfrecords.read_images(normalized)["subsets"]["test"]
    learned = champion_splits[champion_splits.subset.isin(["train", "val"])]
    seen_md5, seen_lesions = set(learned.md5), set(learned.group_id)
    unseen = [m not in seen_md5 and g not in seen_lesions for m, g in zip(images["md5"], images["group_id"])]
    return len(unseen), sum(unseen)


def test_retraining_keeps_lesions_in_place_and_compares_only_on_unseen_images(
    lesion_data, mlflow_server, tmp_path, capsys
):
    cfg = _config()
    name = f"retraining-loop-{tmp_path.name}"
    gate = gate_config(min_test_images=20)
    rows, v1_ids, new_ids = _lesions(lesion_data)

    # v1 -> the first champion.
    v1, splits_v1 = _prepare(lesion_data, rows[rows.lesion_id.isin(v1_ids)], tmp_path / "v1", cfg)
    _, v1_uri, v1_scored = _trained(v1, tmp_path / "v1", cfg, mlflow_server)
    first = promote(mlflow_server, name, v1_uri, v1_scored, v1, gate, "1" * 64)
    assert (first["alias"], first["version"]) == (CHAMPION, "1")
    classes = tfrecords.read_meta(v1)["classes"]

    # v2 = v1 + new lesions: every v1 lesion kept its subset.
    v2, splits_v2 = _prepare(lesion_data, rows, tmp_path / "v2", cfg)
    subset_v1 = splits_v1.groupby("group_id").subset.first()
    subset_v2 = splits_v2.groupby("group_id").subset.first()
    moved = (subset_v2[subset_v1.index] != subset_v1).sum()
    assert set(subset_v2.index) == v1_ids | new_ids and moved == 0

    # The model trained on v2 meets the champion on the v2 test images neither trained or validated on.
    v2_path, v2_uri, v2_scored = _trained(v2, tmp_path / "v2", cfg, mlflow_server)
    second = promote(mlflow_server, name, v2_uri, v2_scored, v2, gate, "2" * 64)
    total, unseen = _unseen_test_images(v2, splits_v1)
    images = second["test_images"]
    assert (images["total"], images["compared"]) == (total, unseen)
    assert sum(images["left_out"].values()) == total - unseen
    with capsys.disabled():
        print(
            f"\nretraining loop: {len(v1_ids)} -> {len(v1_ids | new_ids)} lesions, {moved} v1 lesions changed "
            f"subset; the gate compared {images['compared']} of {images['total']} v2 test images, left out "
            f"{images['left_out']}; v2 model: {second['alias']} ({second['reason'][:120]})"
        )

    champion = find_champion(mlflow_server, name)
    # An equally good model: the champion's own predictions on v2's test split. It stays challenger.
    own, problem = score_champion_on_test_split(f"models:/{name}/{champion.version}", mlflow_server, v2, cfg.evaluate)
    assert problem == ""
    equal = promote(mlflow_server, name, _logged(v2_path, "equal", mlflow_server, classes), own, v2, gate, "2" * 64)
    assert equal["alias"] == CHALLENGER and "not shown better than the champion" in equal["reason"]
    assert equal["difference"]["estimate"] == 0 == equal["difference"]["low"]

    # A model trained on synthetic images of the same classes, perfect on its test split:
    # never over the real champion, not even with allow_incompatible_data.
    synthetic_dir = make_tiny_shards(tmp_path / "synthetic", tiny_config())
    synthetic_scores = _perfect_scores_of(synthetic_dir, classes)
    for allow in (False, True):
        synthetic = promote(
            mlflow_server,
            name,
            _logged(v2_path, f"synthetic-{allow}", mlflow_server, classes),
            synthetic_scores,
            synthetic_dir,
            gate_config(min_test_images=20, allow_incompatible_data=allow),
            "3" * 64,
        )
        assert synthetic["alias"] == CHALLENGER and "never replaces a real champion" in synthetic["reason"]
    assert find_champion(mlflow_server, name).version == champion.version

    # A clearly better model (right on every v2 test image) is promoted.
    better = promote(
        mlflow_server,
        name,
        _logged(v2_path, "better", mlflow_server, classes),
        _clearly_better(v2_scored, classes),
        v2,
        gate,
        "2" * 64,
    )
    assert better["alias"] == CHAMPION, better["reason"]
    assert better["previous_champion"] == f"version {champion.version}"
    assert find_champion(mlflow_server, name).version == better["version"]

    # v2 split with another seed, as a run whose data.seed changed: part of its test split is
    # what the champion (trained on v2) learned from. The gate leaves exactly those images out.
    reseeded, _ = _prepare(lesion_data, rows, tmp_path / "reseeded", cfg.with_overrides(["data.seed=7"]))
    moved_split = promote(
        mlflow_server,
        name,
        _logged(v2_path, "reseeded", mlflow_server, classes),
        _perfect_scores_of(reseeded, classes),
        reseeded,
        gate,
        "4" * 64,
    )
    total, unseen = _unseen_test_images(reseeded, splits_v2)
    images = moved_split["test_images"]
    assert (images["total"], images["compared"]) == (total, unseen) and 0 < unseen < total
    assert images["left_out"]["the champion trained or validated on (the image or its lesion)"] == total - unseen
    assert f"{unseen} of {total} test images compared, left out: {total - unseen} the champion" in moved_split["reason"]
    with capsys.disabled():
        print(f"another split seed: the gate compared {unseen} of {total} test images, left out {images['left_out']}")


def _perfect_scores_of(normalized: Path, classes: list[str]) -> Scored:
    """Perfect scores on the test split of ``normalized`` (its labels read from the shards)."""
    labels, _ = tfrecords.read_labels(tfrecords.shard_paths(normalized, "test"))
    assert tfrecords.read_meta(normalized)["classes"] == classes
    placeholder = Scored(labels, np.zeros((len(labels), len(classes))), {})
    return _clearly_better(placeholder, classes)

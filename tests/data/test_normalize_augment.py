"""normalize and augment on small generated images: shards, train-only statistics,
oversampling of train only with a recorded, seeded policy."""

import json

import numpy as np
import pytest

from components.core.settings import AugmentConfig, DataConfig
from components.data import tfrecords
from components.data.augment import Transform, augment, plan_counts
from components.data.ingest import ingest
from components.data.normalize import normalize
from components.data.split import split
from tests.helpers import write_class_folder


@pytest.fixture(scope="module")
def normalized(tmp_path_factory):
    root = tmp_path_factory.mktemp("norm")
    data = write_class_folder(root / "data", classes=("melanoma", "nevus", "dermatofibroma"), per_class=9, size=40)
    # An unbalanced set: remove most dermatofibroma images.
    for p in sorted((data / "dermatofibroma").iterdir())[5:]:
        p.unlink()
    cfg = DataConfig(image_size=32, val_fraction=0.2, test_fraction=0.2, num_shards=2)
    ingest(str(data), cfg, root / "manifest")
    split(root / "manifest", cfg, root / "splits")
    meta = normalize(root / "splits", cfg, root / "normalized")
    return root, cfg, meta


def test_shards_hold_every_split_image_at_target_size(normalized):
    root, cfg, meta = normalized
    assert meta["classes"] == ["dermatofibroma", "melanoma", "nevus"]
    total = 0
    for subset in ("train", "val", "test"):
        images, labels, uris = tfrecords.read_all(tfrecords.shard_paths(root / "normalized", subset), 32)
        assert images.shape[1:] == (32, 32, 3) and images.dtype == np.uint8
        assert len(images) == meta["counts"][subset] > 0
        assert np.bincount(labels, minlength=3).tolist() == meta["class_counts"][subset]
        total += len(images)
    assert total == 9 + 9 + 5
    assert not list((root / "normalized").glob("*.partial"))


def test_mean_std_come_from_train_only(normalized):
    root, _, meta = normalized
    train, _, _ = tfrecords.read_all(tfrecords.shard_paths(root / "normalized", "train"), 32)
    pixels = train.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(meta["mean"], pixels.mean(0), atol=1e-3)
    np.testing.assert_allclose(meta["std"], pixels.std(0), atol=1e-3)
    everything = (
        np.concatenate(
            [tfrecords.read_all(tfrecords.shard_paths(root / "normalized", s), 32)[0] for s in ("train", "val", "test")]
        )
        .reshape(-1, 3)
        .mean(0)
    )
    assert not np.allclose(meta["mean"], everything, atol=1e-3)


def test_augment_balances_train_only_and_records_policy(normalized, tmp_path):
    root, _, meta = normalized
    before = meta["class_counts"]["train"]
    report = augment(root / "normalized", AugmentConfig(), tmp_path / "aug", seed=5)
    assert report["train_counts_before"] == before
    assert max(report["train_counts_after"]) == max(before)
    assert report["train_counts_after"][0] > before[0]  # the minority class grew
    images, labels, uris = tfrecords.read_all(tfrecords.shard_paths(tmp_path / "aug", "train"), 32)
    assert len(images) == sum(report["added"])
    assert all("#aug" in u for u in uris)
    policy = json.loads((tmp_path / "aug" / "policy.json").read_text())
    assert len(policy["samples"]) == len(images)
    assert {"source_uri", "rotation_degrees", "zoom", "hue_shift"} <= set(policy["samples"][0])
    assert not tfrecords.shard_paths(tmp_path / "aug", "val") and not tfrecords.shard_paths(tmp_path / "aug", "test")
    again = augment(root / "normalized", AugmentConfig(), tmp_path / "aug2", seed=5)
    assert again == report
    images2, _, _ = tfrecords.read_all(tfrecords.shard_paths(tmp_path / "aug2", "train"), 32)
    np.testing.assert_array_equal(images, images2)


def test_the_streamed_readers_give_read_alls_records_in_its_order(normalized):
    root, _, _ = normalized
    paths = tfrecords.shard_paths(root / "normalized", "train")
    images, labels, uris = tfrecords.read_all(paths, 32)
    streamed_labels, streamed_uris = tfrecords.read_labels(paths)
    np.testing.assert_array_equal(streamed_labels, labels)
    assert streamed_uris == uris
    streamed = np.stack(list(tfrecords.image_dataset(paths, 32, len(labels)).as_numpy_iterator()))
    np.testing.assert_array_equal(streamed, images)
    picked = [len(labels) - 1, 0, 3]
    assert [i for i, _ in tfrecords.images_at(paths, 32, picked)] == [0, 3, len(labels) - 1]  # file order
    for i, image in tfrecords.images_at(paths, 32, picked):
        np.testing.assert_array_equal(image, images[i])
    assert list(tfrecords.images_at(paths, 32, [])) == []


def test_augment_streams_the_split_and_each_image_is_its_policy_transform_of_its_source(
    normalized, tmp_path, monkeypatch
):
    root, _, meta = normalized
    # Over every class's training count: sources used more than once.
    cfg = AugmentConfig(target_per_class=2 * max(meta["class_counts"]["train"]) + 1)
    monkeypatch.setattr(tfrecords, "read_all", None)  # augment never holds the split
    augment(root / "normalized", cfg, tmp_path, seed=3)
    monkeypatch.undo()
    policy = json.loads((tmp_path / "policy.json").read_text())
    sources, source_labels, source_uris = tfrecords.read_all(tfrecords.shard_paths(root / "normalized", "train"), 32)
    images, labels, uris = tfrecords.read_all(tfrecords.shard_paths(tmp_path, "train"), 32)
    assert sorted(uris) == sorted(s["uri"] for s in policy["samples"]) and len(uris) == sum(policy["added"])
    made = {uri: (image, label) for image, label, uri in zip(images, labels, uris)}
    fields = Transform.__dataclass_fields__
    for sample in policy["samples"]:
        source = source_uris.index(sample["source_uri"])
        image, label = made[sample["uri"]]
        assert label == source_labels[source] == meta["classes"].index(sample["label"])
        expected = Transform(**{k: v for k, v in sample.items() if k in fields}).apply(sources[source])
        np.testing.assert_array_equal(image, expected)
    # The same seed draws the same plan.
    augment(root / "normalized", cfg, tmp_path / "again", seed=3)
    assert json.loads((tmp_path / "again" / "policy.json").read_text())["samples"] == policy["samples"]


def test_plan_counts_respects_target_factor_and_switch():
    assert plan_counts([100, 10, 50], AugmentConfig(max_factor=4)) == [0, 30, 50]
    assert plan_counts([100, 10], AugmentConfig(target_per_class=20)) == [0, 10]
    assert plan_counts([100, 10], AugmentConfig(enabled=False)) == [0, 0]


def test_transform_changes_pixels_deterministically():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    t = Transform.draw(np.random.default_rng(1), AugmentConfig())
    out = t.apply(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    np.testing.assert_array_equal(out, Transform.draw(np.random.default_rng(1), AugmentConfig()).apply(image))

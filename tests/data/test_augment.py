"""augment: oversampling of train only with a recorded, seeded policy, streamed from the split."""

import json

import numpy as np

from components.core.settings import AugmentConfig
from components.data import tfrecords
from components.data.augment import Transform, augment, plan_counts


def test_augment_balances_train_only_and_records_policy(normalized, tmp_path):
    root, _, meta = normalized
    before = meta["class_counts"]["train"]
    report = augment(root / "normalized", AugmentConfig(seed=5), tmp_path / "aug")
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
    again = augment(root / "normalized", AugmentConfig(seed=5), tmp_path / "aug2")
    assert again == report
    images2, _, _ = tfrecords.read_all(tfrecords.shard_paths(tmp_path / "aug2", "train"), 32)
    np.testing.assert_array_equal(images, images2)


def test_augment_streams_the_split_and_each_image_is_its_policy_transform_of_its_source(
    normalized, tmp_path, monkeypatch
):
    root, _, meta = normalized
    # Over every class's training count: sources used more than once.
    cfg = AugmentConfig(target_per_class=2 * max(meta["class_counts"]["train"]) + 1, seed=3)
    monkeypatch.setattr(tfrecords, "read_all", None)  # augment never holds the split
    augment(root / "normalized", cfg, tmp_path)
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
    augment(root / "normalized", cfg, tmp_path / "again")
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

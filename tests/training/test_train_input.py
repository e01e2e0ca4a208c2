"""train.cache: decoded training images kept in memory when they fit in
train.cache_memory_mb, in a file under the step's working folder when they do not, and
the choice printed; the validation images in memory only within what the training cache
leaves of that budget, else read from the shards at every validation. Real tf.data on a
tiny shard.

Also: online augmentation's zoom crops part of the image; the dataset knows its epoch length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from components.data import tfrecords
from components.training.train_input import (
    cache_plan,
    input_cache_folder,
    training_class_counts,
    training_dataset,
    validation_images,
)
from tests.helpers.tiny_data import tiny_config

LABELS = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]  # 10 images of 32x32x3: 0.03 MB decoded


def write_tiny_shard(folder: Path) -> Path:
    path = folder / "train-00000-of-00001.tfrecord"
    tfrecords.write_shard(path, ((np.full((32, 32, 3), 20 * i, np.uint8), y, f"x{i}") for i, y in enumerate(LABELS)))
    return path


def epoch(dataset) -> list[tuple[float, int]]:
    """The (image value, label) pairs one pass yields, in a fixed order."""
    return sorted((float(x[0, 0, 0]), int(y)) for images, labels in dataset for x, y in zip(images, labels))


def test_the_budget_decides_memory_disk_or_none(tmp_path):
    fits, over = tiny_config(cache_memory_mb=1).train, tiny_config(cache_memory_mb=0).train
    assert cache_plan(fits, len(LABELS), 32, tmp_path).kind == "memory"
    plan = cache_plan(over, len(LABELS), 32, tmp_path / "cache")
    assert (plan.kind, plan.path.parent) == ("disk", tmp_path / "cache")
    assert "over train.cache_memory_mb=0" in plan.why
    assert cache_plan(over, len(LABELS), 32, None).kind == "none"
    assert cache_plan(tiny_config(cache=False).train, len(LABELS), 32, tmp_path).kind == "none"
    # 400,000 images at 224 px (ISIC 2024) do not fit the default budget; HAM10000 does.
    default = tiny_config().train
    assert cache_plan(default, 400_000, 224, tmp_path).kind == "disk"
    assert cache_plan(default, 10_015, 224, tmp_path).kind == "memory"


@pytest.mark.parametrize("budget_mb, kind", [(0, "disk"), (1, "memory")])
def test_the_chosen_cache_serves_the_second_epoch(tmp_path, capsys, budget_mb, kind):
    source = write_tiny_shard(tmp_path)
    tc = tiny_config(cache_memory_mb=budget_mb, batch_size=4).train
    with input_cache_folder(tmp_path / "work" / "input-cache") as cache_dir:
        dataset = training_dataset([str(source)], 32, tc, 3, len(LABELS), cache_dir=cache_dir)
        assert f"training input cache: {kind}" in capsys.readouterr().out
        first = epoch(dataset)
        assert len(first) == len(LABELS)
        assert bool(list(cache_dir.glob("train*.index"))) == (kind == "disk")
        source.unlink()  # only a cache can give the second epoch now
        assert epoch(dataset) == first
    assert not cache_dir.exists()  # scratch: gone once training ends


def test_a_cache_folder_left_by_a_killed_run_starts_empty(tmp_path):
    left = tmp_path / "input-cache"
    left.mkdir()
    (left / "train.index").write_text("half-written")
    (left / "train.lockfile").write_text("")
    with input_cache_folder(left) as cache_dir:
        assert cache_dir == left and not any(cache_dir.iterdir())


def test_no_cache_reads_the_shards_every_epoch(tmp_path, capsys):
    source = write_tiny_shard(tmp_path)
    tc = tiny_config(cache_memory_mb=0, batch_size=4).train
    dataset = training_dataset([str(source)], 32, tc, 3, len(LABELS), cache_dir=None)
    assert "training input cache: none" in capsys.readouterr().out
    assert len(epoch(dataset)) == len(LABELS)
    source.unlink()
    with pytest.raises(Exception, match="No such file|NotFound|not found"):
        epoch(dataset)


def test_balanced_sampling_caches_each_class_in_its_own_file(tmp_path):
    source = write_tiny_shard(tmp_path)
    tc = tiny_config(cache_memory_mb=0, imbalance="balanced_sampling", batch_size=6).train
    with input_cache_folder(tmp_path / "input-cache") as cache_dir:
        dataset = training_dataset([str(source)], 32, tc, 3, len(LABELS), cache_dir=cache_dir)
        drawn = np.concatenate([labels.numpy() for _, labels in dataset.take(10)])
        assert set(drawn.tolist()) == {0, 1, 2}
        assert {p.name.split(".")[0] for p in cache_dir.glob("*.index")} == {f"train-class{c}" for c in range(3)}


def test_validation_images_stay_in_memory_within_what_the_training_cache_leaves(tmp_path, capsys):
    source = write_tiny_shard(tmp_path)  # 10 validation images: 0.029 MB decoded

    def cache_line(train_count: int, budget_mb: int, **train) -> str:
        validation_images(
            [str(source)], 32, tiny_config(cache_memory_mb=budget_mb, **train).train, len(LABELS), train_count
        )
        return capsys.readouterr().out

    assert "validation input cache: memory" in cache_line(10, 1)
    assert "validation input cache: none" in cache_line(10, 0)
    # 335 training images in memory take 0.984 of the 1 MB: the validation images do not fit.
    assert "validation input cache: none" in cache_line(335, 1)
    # 400 do not fit either (the training cache goes to disk), and with train.cache off
    # nothing is cached for training: the whole budget is left.
    assert "validation input cache: memory" in cache_line(400, 1)
    assert "validation input cache: memory" in cache_line(335, 1, cache=False)


@pytest.mark.parametrize("budget_mb, cached", [(1, True), (0, False)])
def test_validation_reads_the_shards_at_every_validation_unless_cached(tmp_path, budget_mb, cached):
    import keras

    from components.training.callbacks import validation_metrics

    source = write_tiny_shard(tmp_path)
    images = validation_images(
        [str(source)], 32, tiny_config(cache_memory_mb=budget_mb).train, len(LABELS), len(LABELS)
    )
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax")]
    )
    labels = np.asarray(LABELS)
    first = validation_metrics(model, images, labels, ["a", "b", "c"], 4, "b")
    source.unlink()  # only a cache can give the second validation now
    if cached:
        assert validation_metrics(model, images, labels, ["a", "b", "c"], 4, "b") == first
    else:
        with pytest.raises(Exception, match="No such file|NotFound|not found"):
            validation_metrics(model, images, labels, ["a", "b", "c"], 4, "b")


def test_online_zoom_crops_a_random_part_of_the_image_at_full_size():
    import tensorflow as tf

    from components.training.train_input import online_augment_fn

    gradient = tf.constant(np.tile(np.linspace(0, 255, 64, dtype=np.float32), (64, 1))[..., None].repeat(3, -1))

    def value_ranges(zoom: float) -> np.ndarray:
        augment = online_augment_fn(zoom)
        outputs = [augment(gradient, 0, tf.constant([i, 7], tf.int64))[0].numpy() for i in range(24)]
        assert all(o.shape == (64, 64, 3) for o in outputs)
        return np.array([o.max() - o.min() for o in outputs])

    # Flips, turns, brightness and contrast keep the whole 0-255 ramp in view; a crop of
    # 50-100 % of the side shows only part of it.
    whole, zoomed = value_ranges(0.0), value_ranges(0.5)
    assert np.median(zoomed) < 0.85 * np.median(whole), (whole, zoomed)


def test_the_training_dataset_knows_its_epoch_length(normalized):
    import tensorflow as tf

    cfg = tiny_config(online_augment=True, batch_size=8).train
    paths = tfrecords.shard_paths(normalized, "train")
    count = int(training_class_counts(normalized, None).sum())
    dataset = training_dataset(paths, 32, cfg, 4, count)
    assert int(dataset.cardinality()) == -(-count // 8) == sum(1 for _ in dataset)
    with pytest.raises(tf.errors.FailedPreconditionError, match="expected to contain"):
        sum(1 for _ in training_dataset(paths, 32, cfg, 4, count + 5))

"""The training input pipeline: TFRecord shards -> shuffled (or class-balanced), online
augmented batches for fit(), and the validation split's images streamed from its shards
(cached in memory when they fit the budget) with its labels in memory."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.core import filenames
from components.core.settings import TrainConfig
from components.data import tfrecords


def online_augment_fn(zoom: float = 0.0):
    """Random flips, 90-degree turns, brightness and contrast, and with ``zoom`` a random
    square crop of (1 - zoom) to 1 of the side scaled back up, from stateless ops fed by
    a seeded random stream: deterministic, and no Python in the hot loop."""
    import tensorflow as tf

    def augment(image, label, seeds):
        s = tf.random.experimental.stateless_split(seeds, 7)
        if zoom:
            size = tf.shape(image)[:2]
            side = tf.random.stateless_uniform([], s[5], 1.0 - zoom, 1.0)
            corner = tf.random.stateless_uniform([2], s[6], 0.0, 1.0) * (1.0 - side)
            box = tf.concat([corner, corner + side], 0)[tf.newaxis]
            image = tf.image.crop_and_resize(image[tf.newaxis], box, [0], size)[0]
        image = tf.image.stateless_random_flip_left_right(image, s[0])
        image = tf.image.stateless_random_flip_up_down(image, s[1])
        turns = tf.random.stateless_uniform([], s[2], 0, 4, dtype=tf.int32)
        image = tf.image.rot90(image, turns)
        image = tf.image.stateless_random_brightness(image, 0.1 * 255.0, s[3])
        image = tf.image.stateless_random_contrast(image, 0.9, 1.1, s[4])
        return tf.clip_by_value(image, 0.0, 255.0), label

    return augment


@dataclass
class CachePlan:
    """Where training keeps its decoded images between epochs: ``memory``, ``disk`` (in
    ``path``, a tf.data cache file prefix) or ``none``; ``why`` says what decided it."""

    kind: str
    path: Path | None
    why: str


# The cache's name under the train step's working folder.
CACHE_DIR = "input-cache"


def decoded_mb(count: int, image_size: int) -> float:
    """What ``count`` decoded images (uint8, with their labels) take in a tf.data cache."""
    return count * (image_size * image_size * 3 + 8) / 2**20


def cache_plan(tc: TrainConfig, count: int | None, image_size: int, cache_dir: str | Path | None) -> CachePlan:
    """train.cache in memory when ``count`` decoded images fit in train.cache_memory_mb,
    else on disk under ``cache_dir``, else (no folder) not at all."""
    if not tc.cache:
        return CachePlan("none", None, "train.cache is off")
    if count is not None:
        need_mb = decoded_mb(count, image_size)
        size = f"{count} decoded images at {image_size} px are {need_mb:,.0f} MB"
        if need_mb <= tc.cache_memory_mb:
            return CachePlan("memory", None, f"{size}, within train.cache_memory_mb={tc.cache_memory_mb}")
        why = f"{size}, over train.cache_memory_mb={tc.cache_memory_mb}"
    else:
        why = "the number of images is not known"
    if cache_dir is None:
        return CachePlan("none", None, f"{why}, and there is no working folder to cache to")
    return CachePlan("disk", Path(cache_dir) / "train", f"{why}: cached in a file under {cache_dir}")


@contextlib.contextmanager
def input_cache_folder(path: Path) -> Iterator[Path]:
    """An empty scratch folder for a file cache while training runs, removed after: files
    left by a killed run (a half-written cache, its lock file) would make tf.data refuse
    or reuse them, and a cache is never part of the output."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def training_dataset(
    paths: list[str],
    image_size: int,
    tc: TrainConfig,
    num_classes: int,
    count: int | None = None,
    cache_dir: str | Path | None = None,
):
    """Batches of (float32 image in [0, 255], label) for fit(): parallel parse, optional
    cache of the decoded uint8 images (see cache_plan: in memory, in a file under
    ``cache_dir``, an empty folder from input_cache_folder, or none), shuffle, balanced
    sampling, online augmentation, prefetch.
    ``count``, the number of records, makes the epoch length known to Keras (else every
    epoch ends by running out of data, with a warning)."""
    import tensorflow as tf

    plan = cache_plan(tc, count, image_size, cache_dir)
    print(f"training input cache: {plan.kind} ({plan.why})", flush=True)

    files = tf.data.Dataset.from_tensor_slices(paths)
    records = files.interleave(
        tf.data.TFRecordDataset,
        cycle_length=max(1, min(4, len(paths))),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    parse = tfrecords.parse_fn(image_size)
    ds = records.map(lambda r: parse(r)[:2], num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if count is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(count))
    if plan.kind == "memory":
        ds = ds.cache()
    if tc.imbalance == "balanced_sampling":
        # Each class its own endless, shuffled stream; draw from them uniformly. A file
        # cache takes one writer at a time: each class caches its own file.
        def class_stream(c: int):
            stream = ds.filter(lambda _, label: label == c)
            if plan.kind == "disk":
                stream = stream.cache(f"{plan.path}-class{c}")
            return stream.shuffle(1024, seed=tc.seed + c).repeat()

        per_class = [class_stream(c) for c in range(num_classes)]
        ds = tf.data.Dataset.sample_from_datasets(
            per_class, weights=[1.0 / num_classes] * num_classes, seed=tc.seed, stop_on_empty_dataset=False
        )
    else:
        if plan.kind == "disk":
            ds = ds.cache(str(plan.path))
        ds = ds.shuffle(4096, seed=tc.seed, reshuffle_each_iteration=True)
    ds = ds.map(
        lambda image, label: (tf.cast(image, tf.float32), label),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if tc.online_augment:
        seeds = tf.data.Dataset.random(seed=tc.seed, rerandomize_each_iteration=True).batch(2)
        augment = online_augment_fn(tc.online_zoom)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda example, s: augment(*example, s), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
    return ds.batch(tc.batch_size).prefetch(tf.data.AUTOTUNE)


def training_class_counts(normalized_dir: str | Path, augmented_dir: str | Path | None) -> np.ndarray:
    """Images per class the model trains on: the train split plus what augment added."""
    counts = np.asarray(tfrecords.read_meta(normalized_dir)["class_counts"]["train"])
    policy = Path(augmented_dir or "", filenames.AUGMENT_POLICY)
    if augmented_dir and policy.is_file():
        counts = counts + np.asarray(json.loads(policy.read_text())["added"])
    return counts


def validation_images(paths: list[str], image_size: int, tc: TrainConfig, count: int, train_count: int):
    """The validation split's uint8 images for components.scoring.inference, in the order of its
    labels (components.data.tfrecords.read_labels): cached in memory when they fit in what
    train.cache_memory_mb leaves after the training cache of ``train_count`` images (see
    cache_plan), else read from the shards at every validation. The choice is printed."""
    training = cache_plan(tc, train_count, image_size, None)
    left_mb = tc.cache_memory_mb - (decoded_mb(train_count, image_size) if training.kind == "memory" else 0)
    need_mb = decoded_mb(count, image_size)
    size = (
        f"{count} decoded validation images at {image_size} px are {need_mb:,.0f} MB, "
        f"{'within' if need_mb <= left_mb else 'over'} the {left_mb:,.0f} MB of "
        f"train.cache_memory_mb={tc.cache_memory_mb} that the training cache ({training.kind}) leaves"
    )
    images = tfrecords.image_dataset(paths, image_size, count)
    if need_mb <= left_mb:
        print(f"validation input cache: memory ({size})", flush=True)
        return images.cache()
    print(f"validation input cache: none ({size}: read from the shards at every validation)", flush=True)
    return images


@dataclass
class TrainingData:
    """What every model trained in one step shares: the splits' shards, sizes and classes,
    and the validation split (images streamed, see validation_images; labels in memory)."""

    meta: dict
    train_paths: list[str]
    class_counts: np.ndarray
    val_images: object  # tf.data.Dataset of uint8 images, in the order of val_labels
    val_labels: np.ndarray

    @classmethod
    def load(cls, normalized_dir: str | Path, augmented_dir: str | Path | None, tc: TrainConfig) -> TrainingData:
        """``tc``: the step's train settings, whose cache budget decides where validation images live."""
        meta = tfrecords.read_meta(normalized_dir)
        train_paths = tfrecords.shard_paths(normalized_dir, "train")
        if augmented_dir:
            train_paths += tfrecords.shard_paths(augmented_dir, "train")
        val_paths = tfrecords.shard_paths(normalized_dir, "val")
        val_labels, _ = tfrecords.read_labels(val_paths)
        class_counts = training_class_counts(normalized_dir, augmented_dir)
        val_images = validation_images(val_paths, meta["image_size"], tc, len(val_labels), int(class_counts.sum()))
        return cls(meta, train_paths, class_counts, val_images, val_labels)

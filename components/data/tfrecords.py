"""The TFRecord shard format shared by normalize, augment, train and evaluate.

Each record holds one image as raw ``uint8`` HxWx3 bytes at the target size (decoding
is a reshape: no Python in the training hot loop), its class index and its source URI.
A shard folder also holds ``dataset.json``: classes, image size, per-split counts and
the train-only per-channel mean/std.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

META_FILE = "dataset.json"
# The test split's group ids (lesion or patient) by URI, for the bootstrap of the test
# metrics (components.scoring.intervals); absent from folders made before it existed.
TEST_GROUPS_FILE = "test_groups.json"
# The test images' source metadata (components.data.labels.METADATA_COLUMNS), by URI.
TEST_METADATA_FILE = "test_metadata.json"
# Every split image's md5 and group id by subset, and the file size limit it was ingested
# under: what a model trained and validated on, and how to re-read a test image as ingested.
IMAGES_FILE = "images.json"


def _tf():
    # Imported on first use: the CLI and the pipeline definition import this module, and
    # compile/submit/--help should not pay TensorFlow's start-up.
    import tensorflow

    return tensorflow


def write_shard(path: str | Path, records: Iterable[tuple[np.ndarray, int, str]]) -> int:
    """Write ``(image uint8 HxWx3, label index, uri)`` records; return how many.

    The shard appears under its name only once complete (written to a temp name, then
    renamed), so a killed step never leaves a shard that looks whole.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    count = 0
    tf = _tf()
    with tf.io.TFRecordWriter(str(tmp)) as writer:
        for image, label, uri in records:
            example = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "image": tf.train.Feature(
                            bytes_list=tf.train.BytesList(value=[np.ascontiguousarray(image, dtype=np.uint8).tobytes()])
                        ),
                        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                        "uri": tf.train.Feature(bytes_list=tf.train.BytesList(value=[uri.encode("utf-8")])),
                    }
                )
            )
            writer.write(example.SerializeToString())
            count += 1
    tmp.replace(path)
    return count


def shard_paths(folder: str | Path, subset: str) -> list[str]:
    return sorted(str(p) for p in Path(folder).glob(f"{subset}-*.tfrecord"))


def read_meta(folder: str | Path) -> dict:
    return json.loads((Path(folder) / META_FILE).read_text())


def write_meta(folder: str | Path, meta: dict) -> None:
    from components.core import atomic

    atomic.write_text(Path(folder) / META_FILE, json.dumps(meta, indent=2))


def write_test_groups(folder: str | Path, unit: str, groups: dict[str, str]) -> None:
    """``groups``: URI -> group id of each test image that has one; ``unit``: what a
    group is, plural ("lesions", "patients")."""
    from components.core import atomic

    atomic.write_text(Path(folder) / TEST_GROUPS_FILE, json.dumps({"unit": unit, "groups": groups}))


def read_test_groups(folder: str | Path, uris: list[str]) -> tuple[list[str] | None, str]:
    """(the group id of each of ``uris``, '' for none; what a group is), or (None, '')
    when the folder has no group ids."""
    path = Path(folder) / TEST_GROUPS_FILE
    if not path.is_file():
        return None, ""
    saved = json.loads(path.read_text())
    return [saved["groups"].get(u, "") for u in uris], saved["unit"]


def write_test_metadata(folder: str | Path, metadata: dict[str, dict[str, str]]) -> None:
    """``metadata``: URI -> {column: value} of each test image the source describes."""
    from components.core import atomic

    atomic.write_text(Path(folder) / TEST_METADATA_FILE, json.dumps(metadata))


def read_test_metadata(folder: str | Path, uris: list[str]) -> list[dict[str, str]] | None:
    """The metadata of each of ``uris`` ({} for none), or None when the folder has none."""
    path = Path(folder) / TEST_METADATA_FILE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return [saved.get(u, {}) for u in uris] if saved else None


def write_images(folder: str | Path, splits, max_file_bytes: int) -> None:
    """``splits``: the split step's rows (uri, md5, group_id, subset)."""
    from components.core import atomic

    subsets = {
        subset: {"uri": rows.uri.tolist(), "md5": rows.md5.tolist(), "group_id": rows.group_id.fillna("").tolist()}
        for subset, rows in splits.groupby("subset")
    }
    atomic.write_text(Path(folder) / IMAGES_FILE, json.dumps({"max_file_bytes": max_file_bytes, "subsets": subsets}))


def read_images(folder: str | Path) -> dict | None:
    """What write_images wrote, or None for a folder written before it existed."""
    path = Path(folder) / IMAGES_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def parse_fn(image_size: int):
    tf = _tf()
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "uri": tf.io.FixedLenFeature([], tf.string),
    }

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, spec)
        image = tf.reshape(tf.io.decode_raw(ex["image"], tf.uint8), (image_size, image_size, 3))
        return image, ex["label"], ex["uri"]

    return parse


def read_all(paths: list[str], image_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All records of ``paths`` in memory as (uint8 images, labels, uris): for tests and
    benchmarks only, as it holds a whole split (the steps stream: see image_dataset)."""
    tf = _tf()
    images, labels, uris = [], [], []
    parse = parse_fn(image_size)
    for serialized in tf.data.TFRecordDataset(paths):
        image, label, uri = parse(serialized)
        images.append(image.numpy())
        labels.append(int(label))
        uris.append(uri.numpy().decode("utf-8"))
    empty = np.zeros((0, image_size, image_size, 3), np.uint8)
    return (np.stack(images) if images else empty), np.asarray(labels, np.int64), uris


# Records parsed together by read_labels: their serialized images pass through memory
# (at 224 px 256 records are ~40 MB), though only labels and URIs are kept.
_LABEL_BATCH = 256


def read_labels(paths: list[str]) -> tuple[np.ndarray, list[str]]:
    """(labels, uris) of every record of ``paths`` in file order, the order of
    image_dataset, without keeping any image."""
    tf = _tf()
    spec = {"label": tf.io.FixedLenFeature([], tf.int64), "uri": tf.io.FixedLenFeature([], tf.string)}
    labels, uris = [np.zeros(0, np.int64)], []
    for batch in tf.data.TFRecordDataset(paths).batch(_LABEL_BATCH).map(lambda s: tf.io.parse_example(s, spec)):
        labels.append(batch["label"].numpy())
        uris += [u.decode("utf-8") for u in batch["uri"].numpy()]
    return np.concatenate(labels), uris


def image_dataset(paths: list[str], image_size: int, count: int):
    """A tf.data.Dataset of the uint8 images of ``paths``, one record at a time in file
    order (the order of read_labels), ``count`` of them: the length Keras and
    components.scoring.inference need to know."""
    tf = _tf()
    parse = parse_fn(image_size)
    return (
        tf.data.TFRecordDataset(paths)
        .map(lambda r: parse(r)[0], num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .apply(tf.data.experimental.assert_cardinality(count))
    )


def images_at(paths: list[str], image_size: int, indices: Iterable[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(position, uint8 image) of the records at positions ``indices`` of ``paths`` (file
    order), in file order: one pass that parses only those records and stops after the
    last, holding one image at a time."""
    tf = _tf()
    wanted = sorted({int(i) for i in indices})
    if not wanted:
        return
    parse = parse_fn(image_size)
    records = tf.data.TFRecordDataset(paths).take(wanted[-1] + 1).enumerate()
    chosen = tf.constant(wanted, tf.int64)
    for i, record in records.filter(lambda i, _: tf.reduce_any(tf.equal(i, chosen))):
        yield int(i), parse(record)[0].numpy()

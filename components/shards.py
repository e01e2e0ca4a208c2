"""The TFRecord shard format shared by normalize, augment, train and evaluate.

Each record holds one image as raw ``uint8`` HxWx3 bytes at the target size (decoding
is a reshape: no Python in the training hot loop), its class index and its source URI.
A shard folder also holds ``dataset.json``: classes, image size, per-split counts and
the train-only per-channel mean/std.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

META_FILE = "dataset.json"


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
            example = tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[np.ascontiguousarray(image, dtype=np.uint8).tobytes()])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                "uri": tf.train.Feature(bytes_list=tf.train.BytesList(value=[uri.encode("utf-8")])),
            }))
            writer.write(example.SerializeToString())
            count += 1
    tmp.replace(path)
    return count


def shard_paths(folder: str | Path, subset: str) -> list[str]:
    return sorted(str(p) for p in Path(folder).glob(f"{subset}-*.tfrecord"))


def read_meta(folder: str | Path) -> dict:
    return json.loads((Path(folder) / META_FILE).read_text())


def write_meta(folder: str | Path, meta: dict) -> None:
    from components import atomic

    atomic.write_text(Path(folder) / META_FILE, json.dumps(meta, indent=2))


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
    """All records of ``paths`` in memory as (uint8 images, labels, uris)."""
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

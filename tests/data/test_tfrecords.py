"""The TFRecord shard format's readers: streamed, all at once, or picked images, the same records."""

import numpy as np

from components.data import tfrecords


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

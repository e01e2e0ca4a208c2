"""Imbalance remedies: class weights, focal loss, logit adjustment, balanced sampling."""

from __future__ import annotations

import numpy as np
import pytest

from components.data import tfrecords
from components.training.imbalance import class_weights, logit_adjusted_loss, sparse_focal_loss
from components.training.train_input import training_class_counts, training_dataset
from tests.helpers.tiny_data import tiny_config


def test_imbalance_class_weights_focal_loss_and_balanced_sampling(normalized, tmp_path):
    counts = np.array([10, 30, 60])
    weights = class_weights(counts)
    assert weights[0] == pytest.approx(100 / 30) and weights[2] == pytest.approx(100 / 180)
    assert sum(w * c for w, c in zip(weights.values(), counts)) == pytest.approx(counts.sum())
    assert class_weights(np.array([1, 500]), cap=10.0) == {0: 10.0, 1: pytest.approx(501 / 1000)}

    import keras

    y_true, y_pred = np.array([0, 1]), np.array([[0.9, 0.1], [0.6, 0.4]], dtype=np.float32)
    ce = keras.losses.sparse_categorical_crossentropy(y_true, y_pred).numpy()
    focal = np.asarray(sparse_focal_loss(2.0)(y_true, y_pred))
    np.testing.assert_allclose(focal, ce * (1 - np.array([0.9, 0.4])) ** 2, rtol=1e-5)

    # Logit adjustment: the loss is the cross-entropy of softmax(logits + log prior).
    counts = np.array([10, 90])
    logits = np.array([[2.0, 0.5], [0.1, 0.3]])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    shifted = logits + np.log(counts / counts.sum())
    expected = -(shifted - np.log(np.exp(shifted).sum(1, keepdims=True)))[[0, 1], [0, 1]]
    adjusted = np.asarray(logit_adjusted_loss(counts)(y_true, probs.astype(np.float32)))
    np.testing.assert_allclose(adjusted, expected, rtol=1e-5)
    # A rare-class image the model scores at 0.6 costs more than plain cross-entropy says.
    assert adjusted[0] > -np.log(probs[0, 0])

    # 2 images of class 0, 6 of class 1, 40 of class 2: balanced sampling draws each a third of the time.
    skewed = tmp_path / "train-00000-of-00001.tfrecord"
    labels = [0] * 2 + [1] * 6 + [2] * 40
    tfrecords.write_shard(skewed, ((np.full((32, 32, 3), i, np.uint8), y, f"x{i}") for i, y in enumerate(labels)))
    cfg = tiny_config(imbalance="balanced_sampling", batch_size=30).train
    drawn = np.concatenate([y.numpy() for _, y in training_dataset([str(skewed)], 32, cfg, 3).take(40)])
    share = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.all(np.abs(share - 1 / 3) < 0.04), share
    assert training_class_counts(normalized, None).sum() == tfrecords.read_meta(normalized)["counts"]["train"]

"""Grad-CAM: where in an image a model's score for a class comes from."""

from __future__ import annotations

import numpy as np


def gradcam(model, images: np.ndarray, class_index: int) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017): the last feature map weighted by the pooled
    gradient of the class probability, ReLU, scaled to [0, 1] and resized to the image.
    For an ensemble, its first member's."""
    import keras
    import tensorflow as tf

    def feature_maps(model) -> list:
        return [
            layer
            for layer in model.layers
            if len(layer.output.shape) == 4 and not isinstance(layer, keras.layers.InputLayer)
        ]

    while not feature_maps(model):  # an ensemble: the heatmap of its first member
        model = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    feature_layer = feature_maps(model)[-1]
    grad_model = keras.Model(model.inputs, [feature_layer.output, model.output])
    x = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        features, probs = grad_model(x, training=False)
        score = probs[:, class_index]
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(tf.cast(features, tf.float32) * weights, axis=-1))[..., None]
    cam = tf.image.resize(cam, images.shape[1:3])[..., 0].numpy()
    peak = cam.reshape(len(cam), -1).max(1)[:, None, None]
    return cam / np.maximum(peak, 1e-8)

"""Remedies for class imbalance (train.imbalance): class weights, focal loss and the
logit-adjusted loss; ``loss_and_class_weights`` picks what the config asks for."""

from __future__ import annotations

import numpy as np

from components.core.settings import TrainConfig


def class_weights(counts: np.ndarray, cap: float = 0.0) -> dict[int, float]:
    """Inverse-frequency weights (mean 1 over the training images), at most ``cap`` (0: no cap)."""
    weights = {i: float(counts.sum() / (len(counts) * max(int(c), 1))) for i, c in enumerate(counts)}
    return {i: min(w, cap) if cap else w for i, w in weights.items()}


def sparse_focal_loss(gamma: float):
    """Focal loss (Lin et al. 2017) on integer labels: cross-entropy scaled by
    (1 - p_true)^gamma, so easy majority-class images count less."""
    import keras
    from keras import ops

    def focal_loss(y_true, y_pred):
        ce = keras.losses.sparse_categorical_crossentropy(y_true, y_pred)
        return ops.power(1.0 - ops.exp(-ce), gamma) * ce

    return focal_loss


def logit_adjusted_loss(class_counts: np.ndarray, tau: float = 1.0):
    """Logit-adjusted cross-entropy (Menon et al. 2021) on the model's probabilities:
    the loss sees softmax(logits + tau * log prior), the model outputs softmax(logits).
    Frequent classes must then win by their prior's margin, so the plain argmax aims at
    balanced error, without class weights scaling rare classes' gradients a hundredfold."""
    import keras
    from keras import ops

    prior = np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)
    prior_weight = ops.convert_to_tensor((prior / prior.sum()) ** tau, dtype="float32")

    def logit_adjusted(y_true, y_pred):
        adjusted = ops.cast(y_pred, "float32") * prior_weight
        adjusted = adjusted / ops.sum(adjusted, axis=-1, keepdims=True)
        return keras.losses.sparse_categorical_crossentropy(y_true, adjusted)

    return logit_adjusted


def loss_and_class_weights(tc: TrainConfig, class_counts: np.ndarray):
    """(Keras loss, class_weight for fit() or None) for ``tc.imbalance``."""
    import keras

    if tc.imbalance == "focal":
        return sparse_focal_loss(tc.focal_gamma), None
    if tc.imbalance == "logit_adjusted":
        return logit_adjusted_loss(class_counts), None
    weights = class_weights(class_counts, tc.max_class_weight) if tc.imbalance == "class_weight" else None
    return keras.losses.SparseCategoricalCrossentropy(), weights

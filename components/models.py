"""Model architectures by name. Every model takes images as float32 pixels in
[0, 255] and returns class probabilities; the train-set mean/std normalization is a
layer inside the model, so serving needs no preprocessing beyond resizing."""
from __future__ import annotations

from typing import Callable

import keras
import numpy as np
from keras import layers


def _normalized_input(image_size: int, mean: list[float], std: list[float]):
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = layers.Normalization(mean=np.asarray(mean), variance=np.asarray(std) ** 2, name="train_mean_std")(inputs)
    return inputs, x


def seed_cnn(num_classes: int, image_size: int, mean: list[float], std: list[float], dropout: float = 0.2) -> keras.Model:
    """The seed tutorial's network: three conv/max-pool blocks, dropout, dense."""
    inputs, x = _normalized_input(image_size, mean, std)
    for filters in (16, 32, 64):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Dropout(dropout)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    # float32 softmax keeps probabilities exact under mixed precision.
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name="seed_cnn")


MODELS: dict[str, Callable[..., keras.Model]] = {
    "seed_cnn": seed_cnn,
}


def build_model(name: str, num_classes: int, image_size: int, mean: list[float], std: list[float],
                dropout: float = 0.2) -> keras.Model:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} (train.model: one of {', '.join(sorted(MODELS))})")
    return MODELS[name](num_classes, image_size, mean, std, dropout=dropout)

"""One model out of several: the mean of the members' probabilities (train.ensemble)."""

from __future__ import annotations


def ensemble_model(members: list, image_size: int):
    """One model whose output is the mean of the members' probabilities (each member a
    whole saved model, preprocessing included)."""
    import keras

    inputs = keras.Input((image_size, image_size, 3), name="image")
    outputs = []
    for i, member in enumerate(members):
        member.name = f"member_{i}"  # two members of one architecture would share a name
        outputs.append(member(inputs))
    probs = keras.layers.Average(dtype="float32", name="probabilities")(outputs)
    return keras.Model(inputs, probs, name="ensemble")

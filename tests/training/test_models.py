"""Models by name: every name builds a probability model, user mistakes are one line, a
transfer backbone loads its ImageNet weights from a local file and freezes as asked."""

from __future__ import annotations

import numpy as np
import pytest

from components.training.models import ModelError, backbone_layers, build_model, set_backbone_trainable
from tests.helpers.tiny_data import MEAN, STD

MOBILENET_V2_035 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


@pytest.mark.parametrize(
    "name, size, kwargs",
    [
        ("seed_cnn", 32, {}),
        ("small_resnet", 32, {}),
        ("mobilenet_v2", 32, {"alpha": 0.35}),
        ("mobilenet", 32, {"alpha": 0.25}),
    ],
)
def test_every_model_name_builds_a_probability_model(name, size, kwargs):
    model = build_model(name, 5, size, MEAN, STD, **kwargs)
    probs = model.predict(np.random.default_rng(0).uniform(0, 255, (3, size, size, 3)).astype(np.float32), verbose=0)
    assert probs.shape == (3, 5)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_user_mistakes_in_model_settings_are_one_line_errors(tmp_path):
    with pytest.raises(ModelError, match="unknown model 'vgg99'.*seed_cnn"):
        build_model("vgg99", 3, 32, MEAN, STD)
    with pytest.raises(ModelError, match="weights file not found: .*missing.h5"):
        build_model("mobilenet_v2", 3, 96, MEAN, STD, weights=str(tmp_path / "missing.h5"), alpha=0.35)
    with pytest.raises(ModelError, match="has no alpha 0.3"):
        build_model("mobilenet_v2", 3, 96, MEAN, STD, alpha=0.3)


def test_transfer_backbone_loads_imagenet_weights_from_a_local_file(weights_dir):
    import h5py

    path = weights_dir / MOBILENET_V2_035
    model = build_model("mobilenet_v2", 7, 96, MEAN, STD, weights=str(path), alpha=0.35)
    with h5py.File(path, "r") as f:
        stored = np.asarray(f["Conv1"]["Conv1"]["kernel:0"])
    np.testing.assert_array_equal(model.get_layer("Conv1").get_weights()[0], stored)

    set_backbone_trainable(model, 0)
    assert {w.path.split("/")[0] for w in model.trainable_weights} == {"logits"}
    set_backbone_trainable(model, 10)
    trainable = [layer for layer in backbone_layers(model) if layer.trainable]
    assert 0 < len(trainable) <= 10 and not any("bn" in layer.name.lower() for layer in trainable)

    set_backbone_trainable(model, None, freeze_batchnorm=False, batchnorm_momentum=0.9)
    norms = [layer for layer in backbone_layers(model) if "bn" in layer.name.lower()]
    assert norms and all(layer.trainable and layer.momentum == 0.9 for layer in norms)

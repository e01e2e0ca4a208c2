"""The train step's entry (components.training.train): determinism with a seed, and an
ensemble that trains every member, averages their probabilities and skips finished members
when restarted. Real TF on 32 px images."""

from __future__ import annotations

import numpy as np

from components.data import tfrecords
from components.training.train import train
from tests.helpers.tiny_data import tiny_config


def test_training_is_deterministic_with_a_seed_on_cpu(normalized, tmp_path):
    cfg = tiny_config(model="seed_cnn", epochs=2, online_augment=True, online_zoom=0.2, imbalance="class_weight")
    first = train(normalized, None, cfg.train, tmp_path / "a")
    second = train(normalized, None, cfg.train, tmp_path / "b")
    assert first.history["loss"] == second.history["loss"]
    import keras

    a = keras.models.load_model(first.model_path, compile=False).get_weights()
    b = keras.models.load_model(second.model_path, compile=False).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_an_ensemble_trains_every_member_and_averages_their_probabilities(normalized, tmp_path, mlflow_server):
    import keras
    from mlflow import MlflowClient

    from components.core import tracking
    from components.evaluation.gradcam import gradcam

    run_id = tracking.pipeline_run(mlflow_server, "ensemble-test", "run", "", {})
    cfg = tiny_config(
        model="seed_cnn",
        epochs=2,
        max_train_minutes=10,
        balance_decisions=True,
        ensemble=[{"model": "small_resnet", "seed": 7}, {"seed": 8, "epochs": 1}],
    )
    result = train(normalized, None, cfg.train, tmp_path, tracking_uri=mlflow_server, mlflow_run_id=run_id)
    assert [m.epochs_run for m in result.members] == [2, 2, 1] and result.epochs_run == 5

    images, _, _ = tfrecords.read_all(tfrecords.shard_paths(normalized, "test"), 32)
    images = images.astype(np.float32)
    ensemble = keras.models.load_model(result.model_path, compile=False)
    members = [keras.models.load_model(tmp_path / "members" / str(i) / "model.keras", compile=False) for i in range(3)]
    member_probs = [m.predict(images, verbose=0) for m in members]
    np.testing.assert_allclose(ensemble.predict(images, verbose=0), np.mean(member_probs, axis=0), atol=1e-5)
    assert not np.allclose(member_probs[0], member_probs[2], atol=1e-3)  # same network, another seed
    assert [layer.name for layer in ensemble.layers] == ["image", "member_0", "member_1", "member_2", "probabilities"]
    assert members[1].name == "small_resnet"

    # Each member's epochs under its own name in the one MLflow run, and the ensemble's validation score.
    metrics = MlflowClient(mlflow_server).get_run(run_id).data.metrics
    assert {
        "member0_val_balanced_accuracy",
        "member1_val_balanced_accuracy",
        "member2_val_balanced_accuracy",
        "ensemble_val_balanced_accuracy",
    } <= set(metrics)
    assert "val_balanced_accuracy" not in metrics
    # Decision offsets are fitted once, for the ensemble, not for each member.
    assert "val_tta_balanced_accuracy_balanced_decisions" in metrics
    assert (tmp_path / "decision_bias.json").is_file() and not list((tmp_path / "members").rglob("decision_bias.json"))

    # Grad-CAM looks into the first member.
    heat = gradcam(ensemble, images[:2], 0)
    assert heat.shape == (2, 32, 32) and 0 <= heat.min() and heat.max() <= 1

    # Started again on the same folder (a restarted step), finished members are not trained again.
    epochs_seen: list[int] = []

    class Count(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            epochs_seen.append(epoch)

    again = train(normalized, None, cfg.train, tmp_path, extra_callbacks=[Count()])
    assert epochs_seen == [] and again.epochs_run == 5
    np.testing.assert_allclose(
        keras.models.load_model(again.model_path, compile=False).predict(images, verbose=0),
        np.mean(member_probs, axis=0),
        atol=1e-5,
    )

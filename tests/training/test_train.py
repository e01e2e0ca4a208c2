"""Training: models by name, transfer weights, two phases, imbalance, determinism,
early stopping with best weights, resume after a kill. Real TF on 32 px images."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from components.data import tfrecords
from components.training.callbacks import EPOCH_LINE, BestEpochTracker, read_epoch_log
from components.training.imbalance import class_weights, logit_adjusted_loss, sparse_focal_loss
from components.training.models import ModelError, backbone_layers, build_model, set_backbone_trainable
from components.training.train import train
from components.training.train_input import training_class_counts, training_dataset
from tests.helpers.tiny_data import make_tiny_shards, tiny_config

MEAN, STD = [120.0, 110.0, 100.0], [50.0, 50.0, 50.0]
MOBILENET_V2_035 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


@pytest.fixture(scope="module")
def normalized(tmp_path_factory) -> Path:
    return make_tiny_shards(tmp_path_factory.mktemp("tiny"))


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


def _snapshot_callback(layer_name: str, store: list):
    import keras

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            store.append(self.model.get_layer(layer_name).get_weights()[0].copy())

    return Snapshot()


def test_two_phases_freeze_the_backbone_then_fine_tune_it(normalized, tmp_path, capsys):
    import keras

    cfg = tiny_config(model="mobilenet", alpha=0.25, epochs=2, frozen_epochs=1, lr_schedule="cosine")
    keras.utils.set_random_seed(cfg.train.seed)  # the initialisation train() will draw
    initial = build_model("mobilenet", 4, 32, MEAN, STD, alpha=0.25).get_layer("conv1").get_weights()[0]
    kernels: list[np.ndarray] = []
    result = train(normalized, None, cfg.train, tmp_path, extra_callbacks=[_snapshot_callback("conv1", kernels)])
    assert len(kernels) == 2 and result.epochs_run == 2
    # Same seed, same random initialisation: unchanged after the frozen epoch, moved after fine-tuning.
    np.testing.assert_array_equal(kernels[0], initial)
    assert not np.allclose(kernels[1], kernels[0])
    epochs = read_epoch_log(tmp_path)
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert epochs[1]["learning_rate"] < cfg.train.fine_tune_learning_rate  # cosine decay is under way
    assert (tmp_path / "model.keras").is_file() and (tmp_path / "frozen_phase.weights.h5").is_file()
    # One line per epoch, numbered out of all epochs: the frozen phase's single epoch too.
    lines = [found[1] for found in map(EPOCH_LINE.search, capsys.readouterr().out.splitlines()) if found]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert re.fullmatch(
        r"epoch 2/2  loss [\d.]+  val_loss [\d.]+  val_balanced_accuracy [\d.]+  "
        r"val_melanoma_auc [\d.]+  learning_rate [\de.+-]+  \(\d+ s\)",
        lines[1],
    )


def test_training_is_deterministic_with_a_seed_on_cpu(normalized, tmp_path):
    cfg = tiny_config(model="seed_cnn", epochs=2, online_augment=True, online_zoom=0.2, imbalance="class_weight")
    first = train(normalized, None, cfg.train, tmp_path / "a")
    second = train(normalized, None, cfg.train, tmp_path / "b")
    assert first.history["loss"] == second.history["loss"]
    import keras

    a = keras.models.load_model(first.model_path, compile=False).get_weights()
    b = keras.models.load_model(second.model_path, compile=False).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_online_zoom_crops_a_random_part_of_the_image_at_full_size():
    import tensorflow as tf

    from components.training.train_input import online_augment_fn

    gradient = tf.constant(np.tile(np.linspace(0, 255, 64, dtype=np.float32), (64, 1))[..., None].repeat(3, -1))

    def value_ranges(zoom: float) -> np.ndarray:
        augment = online_augment_fn(zoom)
        outputs = [augment(gradient, 0, tf.constant([i, 7], tf.int64))[0].numpy() for i in range(24)]
        assert all(o.shape == (64, 64, 3) for o in outputs)
        return np.array([o.max() - o.min() for o in outputs])

    # Flips, turns, brightness and contrast keep the whole 0-255 ramp in view; a crop of
    # 50-100 % of the side shows only part of it.
    whole, zoomed = value_ranges(0.0), value_ranges(0.5)
    assert np.median(zoomed) < 0.85 * np.median(whole), (whole, zoomed)


def test_early_stopping_keeps_the_best_epochs_weights_across_a_restart(tmp_path):
    model = build_model("seed_cnn", 3, 32, MEAN, STD)
    values = {0: 0.5, 1: 0.7, 2: 0.6, 3: 0.65}
    weights_at = {}
    model.stop_training = False  # what fit() sets before the first epoch
    tracker = BestEpochTracker(tmp_path, "val_balanced_accuracy", patience=2)
    callback = tracker.callback(phase_start=0)
    callback.set_model(model)
    for epoch in range(3):
        model.get_layer("logits").set_weights([w + epoch for w in model.get_layer("logits").get_weights()])
        weights_at[epoch] = model.get_layer("logits").get_weights()[0].copy()
        callback.on_epoch_end(epoch, {"val_balanced_accuracy": values[epoch]})
        assert not model.stop_training
    # A new process: the best value and epoch come back from the output folder.
    restarted = BestEpochTracker(tmp_path, "val_balanced_accuracy", patience=2)
    assert (restarted.best, restarted.best_epoch) == (0.7, 1)
    callback = restarted.callback(phase_start=0)
    callback.set_model(model)
    callback.on_epoch_end(3, {"val_balanced_accuracy": values[3]})
    assert model.stop_training  # two epochs without beating epoch 1
    restarted.restore_best(model)
    np.testing.assert_array_equal(model.get_layer("logits").get_weights()[0], weights_at[1])


def test_keep_last_trains_the_whole_schedule_and_saves_its_end(normalized, tmp_path):
    import keras

    cfg = tiny_config(model="seed_cnn", epochs=3, early_stopping_patience=1, keep="last", lr_schedule="cosine")
    snapshots: list[list[np.ndarray]] = []

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append([w.copy() for w in self.model.get_weights()])

    result = train(normalized, None, cfg.train, tmp_path, extra_callbacks=[Snapshot()])
    # Patience 1 would stop a "best" run at the first epoch that does not improve.
    assert result.epochs_run == 3 and result.best_epoch == 2
    saved = keras.models.load_model(result.model_path, compile=False).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(saved, snapshots[-1]))
    assert json.loads((tmp_path / "history.json").read_text())["keep"] == "last"
    (tmp_path / "fresh").mkdir()
    tracker = BestEpochTracker(tmp_path / "fresh", "val_loss", patience=None)
    model = build_model("seed_cnn", 3, 32, MEAN, STD)
    model.stop_training = False
    callback = tracker.callback(phase_start=0)
    callback.set_model(model)
    for epoch, loss in enumerate([0.5, 0.9, 1.0, 1.2]):
        callback.on_epoch_end(epoch, {"val_loss": loss})
    assert not model.stop_training and tracker.best_epoch == 0


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


def test_the_training_dataset_knows_its_epoch_length(normalized):
    import tensorflow as tf

    cfg = tiny_config(online_augment=True, batch_size=8).train
    paths = tfrecords.shard_paths(normalized, "train")
    count = int(training_class_counts(normalized, None).sum())
    dataset = training_dataset(paths, 32, cfg, 4, count)
    assert int(dataset.cardinality()) == -(-count // 8) == sum(1 for _ in dataset)
    with pytest.raises(tf.errors.FailedPreconditionError, match="expected to contain"):
        sum(1 for _ in training_dataset(paths, 32, cfg, 4, count + 5))


@pytest.mark.parametrize("budget_mb, cache", [(8192, "memory"), (0, "none")])
def test_validation_metrics_equal_those_of_the_split_held_in_memory(normalized, capsys, budget_mb, cache):
    import keras

    from components.scoring.metrics import classification_metrics
    from components.training.callbacks import validation_metrics
    from components.training.train_input import TrainingData

    meta = tfrecords.read_meta(normalized)
    keras.utils.set_random_seed(1)
    model = build_model("seed_cnn", 4, 32, meta["mean"], meta["std"])
    # The reference: the whole split in memory as float32, predicted in batches of 8.
    images, labels, _ = tfrecords.read_all(tfrecords.shard_paths(normalized, "val"), 32)
    probs = np.asarray(model.predict(images.astype(np.float32), batch_size=8, verbose=0), dtype=np.float64)
    m = classification_metrics(labels, probs, meta["classes"], "melanoma")
    expected = {
        "val_loss": float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0)).mean()),
        "val_accuracy": m["accuracy"],
        "val_balanced_accuracy": m["balanced_accuracy"],
        "val_macro_f1": m["macro_f1"],
        "val_macro_auc": m["macro_auc"] or 0.0,
        "val_melanoma_auc": m.get("melanoma_auc") or 0.0,
    }
    assert len(labels) > 8  # more than one batch

    data = TrainingData.load(normalized, None, tiny_config(cache_memory_mb=budget_mb).train)
    assert f"validation input cache: {cache}" in capsys.readouterr().out
    np.testing.assert_array_equal(data.val_labels, labels)
    for _ in range(2):  # the second from the cache, if any
        assert validation_metrics(model, data.val_images, data.val_labels, meta["classes"], 8, "melanoma") == expected


RESUMABLE_TRAINING = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import keras
    from components.training.train import train
    sys.path.insert(0, "tests")
    from tiny_data import tiny_config

    normalized, out, kill_epoch = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])

    class SignalMidEpoch(keras.callbacks.Callback):
        # In epoch kill_epoch, after two batches: tell the test, then wait to be killed.
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == kill_epoch and batch == 1:
                (out / "kill-me").write_text(str(self.epoch))
                time.sleep(600)

    cfg = tiny_config(model="mobilenet", alpha=0.25, epochs=3, frozen_epochs=1, batch_size=8)
    result = train(normalized, None, cfg.train, out, extra_callbacks=[SignalMidEpoch()] if kill_epoch >= 0 else [])
    print("EPOCHS_RUN", result.epochs_run)
""")


def test_a_killed_training_resumes_from_its_last_completed_epoch(normalized, tmp_path):
    script = tmp_path / "train_once.py"
    script.write_text(RESUMABLE_TRAINING)
    out = tmp_path / "model"
    out.mkdir()
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    # Killed in the middle of epoch 2 (0-based), the second fine-tuning epoch.
    proc = subprocess.Popen(
        [sys.executable, str(script), str(normalized), str(out), "2"],
        env=env,
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 240
    while not (out / "kill-me").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "training never reached epoch 2"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    before = [e["epoch"] for e in read_epoch_log(out)]
    assert before == [0, 1]  # the frozen epoch and one fine-tuning epoch complete, epoch 2 cut off
    assert (out / "backup" / "fine_tune").is_dir()

    done = subprocess.run(
        [sys.executable, str(script), str(normalized), str(out), "-1"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    log = (out / "epochs.jsonl").read_text().splitlines()
    epochs = [json.loads(line)["epoch"] for line in log]
    # The restart neither redid the frozen phase nor the finished fine-tuning epoch.
    assert epochs == [0, 1, 2]
    assert "epoch 3/3 " in done.stdout and "epoch 1/3 " not in done.stdout and "epoch 2/3 " not in done.stdout
    assert "EPOCHS_RUN 3" in done.stdout
    assert not (out / "backup" / "fine_tune").exists()  # removed once training finished


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
    result = train(normalized, None, cfg.train, tmp_path, mlflow_server, run_id)
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


def test_the_epoch_log_survives_a_line_cut_short_by_a_kill(tmp_path):
    from components.training.callbacks import EPOCH_LOG_FILE, append_line

    (tmp_path / EPOCH_LOG_FILE).write_text('{"epoch": 0, "loss": 1.0}\n{"epoch": 1, "lo')  # killed mid-write
    append_line(tmp_path / EPOCH_LOG_FILE, '{"epoch": 1, "loss": 0.5}')
    assert read_epoch_log(tmp_path) == [{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5}]


def test_a_killed_backup_write_leaves_the_previous_backup_whole(normalized, tmp_path):
    """Keras' own BackupAndRestore overwrote its one weights file in place: a kill while
    it wrote left an HDF5 file the next run could not open."""
    from components.training.callbacks import backup_and_restore

    cfg = tiny_config(epochs=2).train
    model = build_model("seed_cnn", 4, 32, MEAN, STD)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    paths = tfrecords.shard_paths(normalized, "train")
    data = training_dataset(paths, 32, cfg, 4)
    model.fit(data, epochs=1, callbacks=[backup_and_restore(tmp_path / "backup")], verbose=0)
    # fit() removes its backup when it ends; keep one as a killed run leaves it.
    backup = backup_and_restore(tmp_path / "kept")
    backup.set_model(model)
    backup._current_epoch = 1
    backup._save_model()
    saved = [w.copy() for w in model.get_weights()]
    (tmp_path / "kept" / ".partial-epoch-00002.weights.h5").write_bytes(b"\x89HDF\r\n half written")  # the kill
    fresh = build_model("seed_cnn", 4, 32, MEAN, STD)
    fresh.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    restore = backup_and_restore(tmp_path / "kept")
    restore.set_model(fresh)
    restore.on_train_begin()
    assert fresh._initial_epoch == 1
    for got, want in zip(fresh.get_weights(), saved):
        np.testing.assert_array_equal(got, want)


def test_balanced_decisions_are_fitted_on_validation_and_used_by_the_evaluate_step(
    normalized, tmp_path, capsys, monkeypatch
):
    """train.balance_decisions: offsets fitted on the validation split's TTA probabilities
    (after the temperature fitted on them, train.calibrate), saved beside the model, and the
    pipeline's evaluate step decides with them."""
    import keras

    from components.core.settings import EvaluateConfig
    from components.evaluation.evaluate import evaluate
    from components.scoring import decisions
    from components.scoring.calibration import apply_temperature
    from components.scoring.decisions import decide, fit_balanced_bias, in_class_order, saved_decision_bias
    from components.scoring.inference import predict_probabilities

    # The tiny set has 4 validation images a class: below the floor, every offset would be 0.
    monkeypatch.setattr(decisions, "MIN_IMAGES_TO_FIT", 4)
    cfg = tiny_config(model="seed_cnn", epochs=1, balance_decisions=True)
    result = train(normalized, None, cfg.train, tmp_path / "model")
    classes = tfrecords.read_meta(normalized)["classes"]
    saved = in_class_order(saved_decision_bias(tmp_path / "model"), classes)
    assert np.abs(saved).max() > 0.01
    assert "decision offsets fitted on the validation split: its balanced accuracy" in capsys.readouterr().out

    model = keras.models.load_model(result.model_path, compile=False)
    val_paths = tfrecords.shard_paths(normalized, "val")
    val_labels, _ = tfrecords.read_labels(val_paths)
    val_probs = predict_probabilities(model, tfrecords.image_dataset(val_paths, 32, len(val_labels)), tta=True)
    temperature = json.loads((tmp_path / "model" / "calibration.json").read_text())["temperature"]
    val_probs = apply_temperature(val_probs, temperature)
    np.testing.assert_allclose(saved, fit_balanced_bias(val_probs, val_labels, len(classes)), atol=1e-5)

    ev = evaluate(result.model_path, normalized, EvaluateConfig(tta=True), tmp_path / "eval")
    assert ev.metrics["decision_bias"] == dict(zip(classes, saved))
    assert (
        np.asarray(ev.metrics["confusion_matrix"]).sum(0).tolist()
        == np.bincount(decide(ev.probs, saved), minlength=len(classes)).tolist()
    )

"""The training callbacks: early stopping with the best epoch's weights across a restart,
validation metrics equal to those of the split held in memory, an epoch log and a backup
that survive a kill mid-write."""

from __future__ import annotations

import numpy as np
import pytest

from components.data import tfrecords
from components.training.callbacks import BestEpochTracker, read_epoch_log
from components.training.models import build_model
from components.training.train_input import training_dataset
from tests.helpers.tiny_data import MEAN, STD, tiny_config


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

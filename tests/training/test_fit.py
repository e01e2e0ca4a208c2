"""One model's phases (components.training.fit): frozen then fine-tuned, keep best or last,
and a killed training resumed from its last completed epoch. Real TF on 32 px images."""

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

from components.training.callbacks import EPOCH_LINE, BestEpochTracker, read_epoch_log
from components.training.models import build_model
from components.training.train import train
from tests.helpers.tiny_data import MEAN, STD, tiny_config


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


RESUMABLE_TRAINING = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import keras
    from components.training.train import train
    from tests.helpers.tiny_data import tiny_config

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

"""Multi-worker training (components.training.distributed): the global batch's split, and two
real workers on 127.0.0.1 killed mid-training and restarted, the other worker with an
empty folder as a TFJob's restarted pod has, then stopped by the chief alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from components.core.errors import UserError
from components.training.callbacks import read_epoch_log
from components.training.distributed import replica_batch_size
from tests.helpers.servers import worker_environments
from tests.helpers.tiny_data import make_tiny_shards


def test_the_global_batch_splits_evenly_over_the_replicas():
    assert replica_batch_size(64, 2) == 32
    assert replica_batch_size(16, 4) == 4
    assert replica_batch_size(8, 1) == 8
    with pytest.raises(UserError, match=r"train.batch_size 30 does not split evenly over 4 replicas .* multiple of 4"):
        replica_batch_size(30, 4)
    with pytest.raises(UserError, match="train.batch_size 2 does not split evenly over 4 replicas"):
        replica_batch_size(2, 4)


RESUMABLE_WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import keras
    from components.training.train import train
    from components.training.train_job import is_chief, weights_checksum
    from tests.helpers.tiny_data import tiny_config

    normalized, out, kill_epoch, chief_stops_epoch = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

    class WaitToBeKilled(keras.callbacks.Callback):
        # At the start of epoch kill_epoch: tell the test, then wait to be killed.
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == kill_epoch:
                (out / "kill-me").write_text(str(epoch))
                time.sleep(600)

    class ChiefAloneStops(keras.callbacks.Callback):
        # As the chief's own clock would with train.max_train_minutes.
        def on_epoch_end(self, epoch, logs=None):
            if epoch == chief_stops_epoch and is_chief():
                self.model.stop_training = True

    cfg = tiny_config(model="mobilenet", alpha=0.25, epochs=4, frozen_epochs=1, batch_size=8)
    result = train(normalized, None, cfg.train, out, extra_callbacks=[WaitToBeKilled(), ChiefAloneStops()])
    print("EPOCHS_RUN", result.epochs_run, "WEIGHTS", weights_checksum(result.model_path))
""")


def test_killed_workers_resume_from_the_chiefs_last_epoch_and_stop_when_the_chief_does(tmp_path):
    normalized = make_tiny_shards(tmp_path)
    script = tmp_path / "worker.py"
    script.write_text(RESUMABLE_WORKER)
    root = Path(__file__).resolve().parents[2]

    def start(environments: list[dict], folders: list[Path], kill_epoch: int, chief_stops_epoch: int):
        return [
            subprocess.Popen(
                [sys.executable, str(script), str(normalized), str(folder), str(kill_epoch), str(chief_stops_epoch)],
                env={**os.environ, **env, "PYTHONPATH": str(root)},
                cwd=root,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for env, folder in zip(environments, folders)
        ]

    chief_out = tmp_path / "chief"
    first = [chief_out, tmp_path / "scratch-1"]
    for folder in first:
        folder.mkdir()
    # Killed at the start of epoch 2 (0-based), the second fine-tuning epoch.
    procs = start(worker_environments(2), first, 2, -1)
    deadline = time.time() + 240
    while not all((folder / "kill-me").exists() for folder in first):
        for proc in procs:
            assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "training never reached epoch 2"
        time.sleep(0.2)
    for proc in procs:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert [e["epoch"] for e in read_epoch_log(chief_out)] == [0, 1]

    # The restarted other worker has lost its folder: it continues from the chief's. After
    # epoch 2 the chief alone asks to stop: the other worker stops with it (else it would
    # wait for the chief in epoch 3's collectives, and fail when the chief is gone).
    second = [chief_out, tmp_path / "scratch-2"]
    second[1].mkdir()
    outputs = []
    for proc in start(worker_environments(2), second, -1, 2):
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output[-3000:]
        outputs.append(output)
    for output in outputs:
        # Neither worker redid the frozen phase or the finished fine-tuning epoch (had one
        # of them, the two would not have met in the same collectives).
        assert "at epoch 3" in output.split("resuming from ")[1].splitlines()[0]
        assert "epoch 3/4 " in output and "epoch 2/4 " not in output and "epoch 4/4 " not in output
        assert "EPOCHS_RUN 3" in output
    weights = {output.split("WEIGHTS ")[1].split()[0] for output in outputs}
    assert len(weights) == 1
    log = [json.loads(line)["epoch"] for line in (chief_out / "epochs.jsonl").read_text().splitlines()]
    assert log == [0, 1, 2]
    assert not (chief_out / "backup" / "fine_tune").exists()  # removed once training finished

"""Two identical runs in one output folder at once (docs/reliability.md says they may
share it): each trains in a checkpoint folder of its own, and a finished run removes only
its own. Was: one folder (a hash of data and settings) for both, and the first to finish
removed the one the other was still training in."""

import json
import subprocess
import sys
from pathlib import Path

from components.training.checkpoints import claimed, remove_unless_held
from tests.helpers.tiny_data import make_tiny_shards, tiny_config

TRAIN_STEP = """
import json, sys
from types import SimpleNamespace
from components.training.train import train_step
root, cfg = sys.argv[1], json.loads(sys.argv[2])
model = SimpleNamespace(path=f"{root}/model-{sys.argv[3]}", metadata={})
shards = SimpleNamespace(path=f"{root}/normalized")
train_step(shards, SimpleNamespace(path=f"{root}/no-augment"), cfg, "same-data",
           f"{root}/out/checkpoints", "checkpoints-test", f"sqlite:///{root}/mlflow-{sys.argv[3]}.db",
           f"run-{sys.argv[3]}", f"kfp-{sys.argv[3]}", model)
print(json.dumps(model.metadata))
"""


def test_identical_runs_in_one_output_folder_train_in_checkpoint_folders_of_their_own(tmp_path):
    make_tiny_shards(tmp_path)
    train = tiny_config(epochs=2).train.to_dict()
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", TRAIN_STEP, str(tmp_path), json.dumps(train), name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parents[2],
        )
        for name in ("a", "b")
    ]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (_, stderr) in zip(runs, outputs):
        assert run.returncode == 0, stderr[-3000:]
    folders = [Path(json.loads(stdout.strip().splitlines()[-1])["checkpoints"]) for stdout, _ in outputs]
    assert folders[0] != folders[1]
    assert {f.parent for f in folders} == {tmp_path / "out" / "checkpoints"}
    for folder in folders:  # each trained all its epochs in its own folder
        epochs = [json.loads(line)["epoch"] for line in (folder / "epochs.jsonl").read_text().splitlines()]
        assert epochs == [0, 1]
    assert remove_unless_held(folders[0]) and not folders[0].exists() and folders[1].is_dir()


def test_a_folder_held_by_a_live_training_is_neither_shared_nor_removed(tmp_path):
    folder = tmp_path / "0123abcd"
    with claimed(folder) as first:
        with claimed(folder) as second:
            assert (first, second) == (folder, tmp_path / "0123abcd-2")
            assert not remove_unless_held(first) and first.is_dir()
    with claimed(folder) as again:  # the same run started again (the first was killed): its folder
        assert again == folder
    assert remove_unless_held(folder) and not folder.exists()

"""A train output folder: what makes it a finished model, written so that a crash or a
full disk never leaves a folder that a later run takes for finished work."""

from types import SimpleNamespace

import pytest

from components.core.settings import TrainConfig
from components.training.checkpoints import progress_so_far
from components.training.trained_model import HISTORY_FILE, save_finished


def test_a_full_disk_leaves_no_history_marker_so_the_next_run_resumes_instead_of_reusing(small_disk):
    """Was: history.json (the "training finished" marker) written in place: cut short by
    ENOSPC, the next run said "training finished earlier" and failed on JSONDecodeError."""
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    out = small_disk(64)  # the model fits; a long history does not
    history = {"history": {"loss": [0.123456789] * 20_000}, "best_epoch": 0, "device": "cpu"}
    data = SimpleNamespace(meta={"classes": ["melanoma", "nevus"], "image_size": 32})
    with pytest.raises(OSError, match="No space left on device"):
        save_finished(model, data, TrainConfig(), out, "", "", history)
    assert not (out / HISTORY_FILE).exists()
    assert "finished" not in progress_so_far(out)
    assert [p.name for p in out.iterdir() if "partial" in p.name] == []

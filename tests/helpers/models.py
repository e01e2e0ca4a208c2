"""Log a bare .keras file to MLflow as the train step logs its output folder."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from components.core import filenames
from components.training.trained_model import log_trained_model


def log_keras_model(
    model_path: str | Path,
    image_size: int,
    tracking_uri: str,
    run_id: str,
    classes: list[str],
    resize_mode: str = "pad",
    synthetic: bool = False,
    decision_bias: dict[str, float] | None = None,
) -> str:
    """A train output folder around ``model_path`` (its classes, model info and decision
    offsets), logged to the run ``run_id`` by components.training.trained_model; its URI."""
    with tempfile.TemporaryDirectory(prefix="lesion-test-model-") as scratch:
        folder = Path(scratch)
        shutil.copyfile(model_path, folder / filenames.MODEL)
        (folder / filenames.CLASSES).write_text(json.dumps(classes))
        info = {"image_size": image_size, "resize_mode": resize_mode, "synthetic": synthetic}
        (folder / filenames.MODEL_INFO).write_text(json.dumps(info))
        if decision_bias:
            (folder / filenames.DECISION_BIAS).write_text(json.dumps({"decision_bias": decision_bias}))
        return log_trained_model(folder, tracking_uri, run_id)

"""A train output folder as the train step and the TFJob chief leave it, and logging it
to MLflow: the model (filenames.MODEL), its classes (filenames.CLASSES), how it reads
images and what it was trained on (filenames.MODEL_INFO), and its decision offsets when
it has them (filenames.DECISION_BIAS). Everything MLflow's copy carries comes from the
folder, so a model logged by either trainer is read the same way by predict, evaluate
and the champion gate."""

from __future__ import annotations

import json
from pathlib import Path

from components.core import filenames


def write_model_info(folder: str | Path, normalized_meta: dict) -> None:
    """Beside the saved model, from the normalize step's meta: its image size and resize
    mode, so that predict and evaluate read images as training did, and whether it was
    trained on the generated demo data (components.data.synthetic), so that every use of
    it can say so."""
    info = {
        "image_size": int(normalized_meta["image_size"]),
        "resize_mode": normalized_meta.get("resize_mode", "pad"),
        "synthetic": bool(normalized_meta.get("synthetic")),
    }
    (Path(folder) / filenames.MODEL_INFO).write_text(json.dumps(info))


def log_trained_model(model_dir: str | Path, tracking_uri: str, run_id: str) -> str:
    """Log the model in ``model_dir`` (a finished train output folder) to the MLflow run
    ``run_id``, with its classes, model info and decision offsets in its metadata; returns
    its model URI."""
    from components.core import tracking
    from components.scoring.decisions import saved_decision_bias

    folder = Path(model_dir)
    classes = json.loads((folder / filenames.CLASSES).read_text())
    info = json.loads((folder / filenames.MODEL_INFO).read_text())
    return tracking.log_model(
        str(folder / filenames.MODEL),
        int(info["image_size"]),
        tracking_uri,
        run_id,
        classes,
        info.get("resize_mode", "pad"),
        bool(info.get("synthetic")),
        saved_decision_bias(folder),
    )

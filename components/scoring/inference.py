"""Load a trained model from any URI and score images with exactly the preprocessing
the pipeline used (components.data.imaging.load_for_model at the model's size and resize
mode): for training's validation, ``lesionpipe predict``, ``lesionpipe evaluate`` and the
champion gate."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from components.core import filenames
from components.core.errors import UserError
from components.data.imaging import ImageError, load_for_model
from components.data.sources import read_bytes
from components.scoring.decisions import decide, in_class_order, saved_decision_bias

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/", "gs://", "s3://", "http://", "https://")


class ModelLoadError(UserError):
    """A model URI that names nothing loadable: one line for the user."""


class ModelUnavailable(UserError):
    """The store that holds a model did not hand it over (a server error, a timeout, a
    refused permission): nothing is known about the model, and trying again may work."""


@dataclass
class LoadedModel:
    model: object  # keras.Model
    classes: list[str]
    image_size: int
    resize_mode: str
    uri: str
    # The MLflow run that logged the model ('' for a local file): the pipeline run whose
    # settings (its evaluate.* params) scored it.
    run_id: str = ""
    # Trained on the generated demo data (components.data.synthetic), not on medical images.
    synthetic: bool = False
    # Per-class offsets of the decision, fitted on validation (components.scoring.decisions).
    decision_bias: list[float] | None = None

    def synthetic_warning(self) -> str:
        """The line every command that uses a synthetic model shows ('' otherwise)."""
        if not self.synthetic:
            return ""
        return (
            f"WARNING: {self.uri} is a SYNTHETIC model: trained on generated images, not medical images; "
            "its outputs say nothing about real lesions"
        )

    def predict(self, images, batch_size: int = 64, tta: bool = False) -> np.ndarray:
        """Class probabilities of images in [0, 255] (see predict_probabilities)."""
        return predict_probabilities(self.model, images, batch_size, tta)

    def predicted_classes(self, probs: np.ndarray) -> list[str]:
        """The class each row of ``probs`` (this model's) is predicted to be."""
        return [self.classes[i] for i in decide(probs, self.decision_bias)]

    def probabilities_of_files(
        self, uris: list[str], batch_size: int = 64, tta: bool = False, read: Callable[[str], bytes] = read_bytes
    ) -> tuple[np.ndarray, list[str]]:
        """(class probabilities, error per URI, '' when fine) of image files, read with the
        model's preprocessing ``FILE_CHUNK_BATCHES`` batches at a time: memory bounded by
        the batch size, not by the number of files. An unreadable file is scored as a
        blank image; its error says so. ``read``: URI -> bytes (sources.read_as_ingested
        to hold each file to what ingest recorded)."""
        chunk = FILE_CHUNK_BATCHES * batch_size
        probs = [np.zeros((0, int(self.model.output_shape[-1])))]
        errors: list[str] = []
        for start in range(0, len(uris), chunk):
            images, chunk_errors = load_images(uris[start : start + chunk], self.image_size, self.resize_mode, read)
            probs.append(self.predict(images, batch_size, tta))
            errors += chunk_errors
        return np.concatenate(probs), errors


# Image files LoadedModel.probabilities_of_files holds at once, in batches: a whole number of
# batches, so every predict() batch holds the same images as in one pass over all files.
FILE_CHUNK_BATCHES = 16


def predict_probabilities(model, images, batch_size: int = 64, tta: bool = False) -> np.ndarray:
    """Class probabilities of images in [0, 255], shape (size, size, 3) each: an array of
    them, or a tf.data.Dataset of single images of known length (a split streamed from
    its shards, components.data.tfrecords.image_dataset), in batches of ``batch_size``, in order.
    With ``tta`` averaged over the 8 flips and 90-degree turns of each image (a lesion
    has no up or left), made on the fly in the same pass."""
    import tensorflow as tf

    dataset = images if isinstance(images, tf.data.Dataset) else tf.data.Dataset.from_tensor_slices(images)
    if dataset.cardinality() == 0:
        return np.zeros((0, int(model.output_shape[-1])))
    dataset = dataset.map(lambda x: tf.cast(x, tf.float32), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def views(image):
        turns = [tf.image.rot90(image, k) for k in range(4)]
        return tf.stack(turns + [tf.image.flip_left_right(t) for t in turns])

    if tta:
        dataset = dataset.map(views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
    options = tf.data.Options()
    # As Keras does for arrays: under several workers predict shares the images out one
    # by one (a split may have fewer shard files than there are workers).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(options)
    probs = np.asarray(model.predict(dataset, verbose=0), dtype=np.float64)
    return probs.reshape(-1, 8, probs.shape[-1]).mean(axis=1) if tta else probs


def _local_model_files(path: Path) -> tuple[Path, dict]:
    """The .keras file and metadata of a local model: a .keras file, a train step's output
    folder (model.keras + classes.json), or a downloaded MLflow model folder."""
    if path.is_file() and path.suffix == ".keras":
        classes_file, info_file = path.parent / filenames.CLASSES, path.parent / filenames.MODEL_INFO
        metadata = json.loads(info_file.read_text()) if info_file.is_file() else {}
        if classes_file.is_file():
            metadata["classes"] = json.loads(classes_file.read_text())
        metadata["decision_bias"] = saved_decision_bias(path.parent)
        return path, metadata
    if (path / "MLmodel").is_file():
        mlmodel = yaml.safe_load((path / "MLmodel").read_text())
        found = sorted(path.rglob("*.keras"))
        if not found:
            raise ModelLoadError(f"{path} is an MLflow model without a Keras model file")
        return found[0], {**(mlmodel.get("metadata") or {}), "mlflow_run_id": mlmodel.get("run_id") or ""}
    if (path / filenames.MODEL).is_file():
        return _local_model_files(path / filenames.MODEL)
    raise ModelLoadError(f"no model at {path} (a .keras file, a train output folder, or an MLflow model folder)")


def _download(uri: str, tracking_uri: str | None) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    from components.core import tracking

    if tracking_uri:
        # models:/ URIs are resolved by the registry, which does not follow tracking_uri=.
        tracking.use_store(tracking_uri)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri))
    except (MlflowException, OSError) as exc:  # requests' errors are OSErrors
        first_line = (str(getattr(exc, "message", "")) or str(exc) or type(exc).__name__).splitlines()[0]
        if not _is_missing(exc):
            raise ModelUnavailable(f"cannot download model {uri} now: {first_line}") from None
        raise ModelLoadError(f"cannot load model {uri}: {first_line}") from None


def _is_missing(exc: Exception) -> bool:
    """The store answered that the model, or a file of it, does not exist (as opposed to
    not answering, or refusing)."""
    from components.core import tracking

    if isinstance(exc, FileNotFoundError) or tracking.is_not_found(exc):
        return True
    return getattr(getattr(exc, "response", None), "status_code", None) == 404


def load_model(uri: str, tracking_uri: str | None = None) -> LoadedModel:
    """A model from a local path or any MLflow URI (``models:/<name>@champion``,
    ``models:/<name>/<version>``, ``runs:/<run>/model``, ...)."""
    import keras

    if not uri:
        raise ModelLoadError("no model URI given")
    path = _download(uri, tracking_uri) if uri.startswith(MLFLOW_SCHEMES) else Path(uri).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model not found: {uri}")
    keras_file, metadata = _local_model_files(path)
    try:
        model = keras.models.load_model(keras_file, compile=False)
    except (ValueError, OSError) as exc:
        raise ModelLoadError(f"cannot load Keras model {keras_file}: {str(exc).splitlines()[0]}") from None
    image_size = int(model.input_shape[1])
    classes = list(metadata.get("classes") or [f"class_{i}" for i in range(int(model.output_shape[-1]))])
    try:
        decision_bias = in_class_order(metadata.get("decision_bias"), classes)
    except ValueError as exc:
        raise ModelLoadError(f"cannot load model {uri}: {exc}") from None
    return LoadedModel(
        model,
        classes,
        image_size,
        str(metadata.get("resize_mode", "pad")),
        uri,
        str(metadata.get("mlflow_run_id") or ""),
        bool(metadata.get("synthetic")),
        decision_bias,
    )


def load_images(
    uris: list[str], size: int, mode: str, read: Callable[[str], bytes] = read_bytes
) -> tuple[np.ndarray, list[str]]:
    """Decode and resize images by URI (read with ``read``) in parallel; (images, error per URI, '' when fine)."""

    def one(uri: str) -> tuple[np.ndarray | None, str]:
        try:
            return load_for_model(read(uri), size, mode), ""
        except (ImageError, OSError) as exc:
            return None, str(exc)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, uris))
    blank = np.zeros((size, size, 3), np.uint8)
    images = (
        np.stack([image if image is not None else blank for image, _ in results])
        if results
        else np.zeros((0, size, size, 3), np.uint8)
    )
    return images, [error for _, error in results]

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
from components.data.imaging import MAX_PIXELS, ImageError, load_for_model
from components.data.sources import read_bytes
from components.data.sources.base import FileTooLarge
from components.scoring.calibration import apply_temperature
from components.scoring.decisions import decide_classes, in_class_order, saved_decision_bias
from components.scoring.operating_points import flag_threshold
from components.scoring.referral import uncertainty as uncertainty_score

# The class whose probability and operating point a model's answers single out.
MELANOMA = "melanoma"
# The folder inside a logged MLflow model that holds the whole train output folder
# (components.scoring.served_model): every file the train step leaves travels with it.
TRAIN_OUTPUT_ARTIFACT = "train_output"

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
    # Which model this is, as its answers name it: models:/<name>/<version> when loaded from
    # the registry, else the MLflow model id (models:/m-...) when known, else the URI.
    version: str = ""
    # Fitted on validation when training ended (filenames.FITTED_ON_VALIDATION): the
    # temperature of its probabilities (components.scoring.calibration), the threshold on
    # the melanoma probability of the melanoma flag (components.scoring.operating_points;
    # operating_points holds both points), the uncertainty above which an image is
    # referred (components.scoring.referral).
    temperature: float = 1.0
    melanoma_class: str = "melanoma"
    melanoma_threshold: float | None = None
    refer_threshold: float | None = None
    operating_points: dict | None = None
    referral: dict | None = None

    def synthetic_warning(self) -> str:
        """The line every command that uses a synthetic model shows ('' otherwise)."""
        if not self.synthetic:
            return ""
        return (
            f"WARNING: {self.uri} is a SYNTHETIC model: trained on generated images, not medical images; "
            "its outputs say nothing about real lesions"
        )

    def predict(self, images, batch_size: int = 64, tta: bool = False) -> np.ndarray:
        """Calibrated class probabilities of images in [0, 255] (see predict_views)."""
        return self.predict_with_views(images, batch_size, tta)[0]

    def predict_with_views(self, images, batch_size: int = 64, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(calibrated probabilities, each view's calibrated probabilities: images x views x classes)."""
        views = predict_views(self.model, images, batch_size, tta)
        return apply_temperature(views.mean(axis=1), self.temperature), apply_temperature(views, self.temperature)

    def predicted_classes(self, probs: np.ndarray) -> list[str]:
        """The class each row of ``probs`` (this model's) is predicted to be."""
        return [self.classes[i] for i in decide_classes(probs, self.decision_bias)]

    def melanoma_flags(self, probs: np.ndarray) -> np.ndarray | None:
        """Per row of ``probs``: melanoma probability at or above the stored operating
        point's threshold (None: the model has none)."""
        if self.melanoma_threshold is None or self.melanoma_class not in self.classes:
            return None
        return np.asarray(probs)[:, self.classes.index(self.melanoma_class)] >= self.melanoma_threshold

    def uncertainty(self, probs: np.ndarray, view_probs: np.ndarray | None = None) -> np.ndarray:
        """Per image: components.scoring.referral.uncertainty."""
        return uncertainty_score(probs, view_probs)

    def refer_flags(self, uncertainty: np.ndarray) -> np.ndarray | None:
        """Per image: uncertainty above the stored referral threshold (None: none stored)."""
        if self.refer_threshold is None:
            return None
        return np.asarray(uncertainty) > self.refer_threshold

    def probabilities_of_files(
        self,
        sources: list[str | bytes],
        batch_size: int = 64,
        tta: bool = False,
        max_bytes: int | None = None,
        max_pixels: int = MAX_PIXELS,
        read: Callable[[str], bytes] | None = None,
    ) -> tuple[np.ndarray, list[str]]:
        """(calibrated class probabilities, error per source, '' when fine) of image files,
        given by URI or as their bytes (see scores_of_files)."""
        probs, _, errors = self.scores_of_files(sources, batch_size, tta, max_bytes, max_pixels, read)
        return probs, errors

    def scores_of_files(
        self,
        sources: list[str | bytes],
        batch_size: int = 64,
        tta: bool = False,
        max_bytes: int | None = None,
        max_pixels: int = MAX_PIXELS,
        read: Callable[[str], bytes] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(calibrated class probabilities, the views' probabilities, error per source, ''
        when fine) of image files, given by URI or as their bytes, read with the model's
        preprocessing ``FILE_CHUNK_BATCHES``
        batches at a time: memory bounded by the batch size, not by the number of files.
        An unreadable file is scored as a blank image; its error says so. ``read``: URI ->
        bytes (sources.read_as_ingested holds each file to what ingest recorded)."""
        chunk = FILE_CHUNK_BATCHES * batch_size
        k = int(self.model.output_shape[-1])
        probs, views = [np.zeros((0, k))], [np.zeros((0, 8 if tta else 1, k))]
        errors: list[str] = []
        for start in range(0, len(sources), chunk):
            images, chunk_errors = load_images(
                sources[start : start + chunk], self.image_size, self.resize_mode, max_bytes, max_pixels, read
            )
            chunk_probs, chunk_views = self.predict_with_views(images, batch_size, tta)
            probs.append(chunk_probs)
            views.append(chunk_views)
            errors += chunk_errors
        return np.concatenate(probs), np.concatenate(views), errors


# Image files LoadedModel.probabilities_of_files holds at once, in batches: a whole number of
# batches, so every predict() batch holds the same images as in one pass over all files.
FILE_CHUNK_BATCHES = 16


def predict_probabilities(model, images, batch_size: int = 64, tta: bool = False) -> np.ndarray:
    """Class probabilities of images in [0, 255] (see predict_views), averaged over the
    views when ``tta``."""
    return predict_views(model, images, batch_size, tta).mean(axis=1)


def predict_views(model, images, batch_size: int = 64, tta: bool = False) -> np.ndarray:
    """Class probabilities, (images, views, classes), of images in [0, 255], shape (size,
    size, 3) each: an array of them, or a tf.data.Dataset of single images of known length
    (a split streamed from its shards, components.data.tfrecords.image_dataset), in batches
    of ``batch_size``, in order. One view, or with ``tta`` the 8 flips and 90-degree turns
    of each image (a lesion has no up or left), made on the fly in the same pass."""
    import tensorflow as tf

    dataset = images if isinstance(images, tf.data.Dataset) else tf.data.Dataset.from_tensor_slices(images)
    if dataset.cardinality() == 0:
        return np.zeros((0, 8 if tta else 1, int(model.output_shape[-1])))
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
    return probs.reshape(-1, 8 if tta else 1, probs.shape[-1])


def _local_model_files(path: Path) -> tuple[Path, dict]:
    """The .keras file and metadata of a local model: a .keras file, a train step's output
    folder (model.keras + classes.json), or a downloaded MLflow model folder."""
    if path.is_file() and path.suffix == ".keras":
        classes_file, info_file = path.parent / filenames.CLASSES, path.parent / filenames.MODEL_INFO
        metadata = json.loads(info_file.read_text()) if info_file.is_file() else {}
        if classes_file.is_file():
            metadata["classes"] = json.loads(classes_file.read_text())
        metadata["decision_bias"] = saved_decision_bias(path.parent)
        metadata["fitted_on_validation"] = {
            name: json.loads((path.parent / name).read_text())
            for name in filenames.FITTED_ON_VALIDATION[1:]
            if (path.parent / name).is_file()
        }
        return path, metadata
    if (path / "MLmodel").is_file():
        mlmodel = yaml.safe_load((path / "MLmodel").read_text())
        logged = {"mlflow_run_id": mlmodel.get("run_id") or "", "mlflow_model_id": mlmodel.get("model_id") or ""}
        # The image-taking model (served_model.py): MLflow keeps the artifact under its source
        # folder's name, and its MLmodel says where.
        artifacts = (mlmodel.get("flavors", {}).get("python_function", {}) or {}).get("artifacts") or {}
        train_output = path / ((artifacts.get(TRAIN_OUTPUT_ARTIFACT) or {}).get("path") or "artifacts/train_output")
        if (train_output / filenames.MODEL).is_file():
            keras_file, metadata = _local_model_files(train_output)
            return keras_file, {**metadata, **logged}
        # Logged by mlflow.tensorflow before the model took images: its metadata is in MLmodel.
        found = sorted(path.rglob("*.keras"))
        if not found:
            raise ModelLoadError(f"{path} is an MLflow model without a Keras model file")
        return found[0], {**(mlmodel.get("metadata") or {}), **logged}
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
    # An alias is resolved once, here: the files and the version the answers name are the same.
    version = registered_version(uri, tracking_uri) if uri.startswith("models:/") else ""
    path = _download(version or uri, tracking_uri) if uri.startswith(MLFLOW_SCHEMES) else Path(uri).expanduser()
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
    fitted = metadata.get("fitted_on_validation") or {}
    points, referral = fitted.get(filenames.OPERATING_POINTS), fitted.get(filenames.REFERRAL)
    return LoadedModel(
        model,
        classes,
        image_size,
        str(metadata.get("resize_mode", "pad")),
        uri,
        str(metadata.get("mlflow_run_id") or ""),
        bool(metadata.get("synthetic")),
        decision_bias,
        version or (f"models:/{metadata['mlflow_model_id']}" if metadata.get("mlflow_model_id") else uri),
        temperature=float((fitted.get(filenames.CALIBRATION) or {}).get("temperature", 1.0)),
        melanoma_class=str((points or {}).get("melanoma_class", "melanoma")),
        melanoma_threshold=flag_threshold(points),
        refer_threshold=None if not referral or referral.get("threshold") is None else float(referral["threshold"]),
        operating_points=points,
        referral=referral,
    )


def registered_version(uri: str, tracking_uri: str | None) -> str:
    """``models:/<name>/<version>`` that ``models:/<name>@<alias>`` or ``models:/<name>/<version>``
    names now; '' for other models:/ URIs (a logged model's id)."""
    from mlflow.exceptions import MlflowException

    from components.core import tracking

    name, at, alias = uri.removeprefix("models:/").partition("@")
    if not at:
        name, _, number = name.partition("/")
        return uri if number.isdigit() else ""
    try:
        found = tracking.client(tracking_uri or tracking.resolve_tracking_uri()).get_model_version_by_alias(name, alias)
    except (MlflowException, OSError) as exc:
        first_line = (str(getattr(exc, "message", "")) or str(exc) or type(exc).__name__).splitlines()[0]
        if not _is_missing(exc):
            raise ModelUnavailable(f"cannot resolve {uri} now: {first_line}") from None
        raise ModelLoadError(f"cannot load model {uri}: {first_line}") from None
    return f"models:/{name}/{found.version}"


def load_images(
    sources: list[str | bytes],
    size: int,
    mode: str,
    max_bytes: int | None = None,
    max_pixels: int = MAX_PIXELS,
    read: Callable[[str], bytes] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Decode and resize images, given by URI (read with ``read``, else read_bytes) or as
    their bytes, in parallel; (images, error per source, '' when fine). A file over
    ``max_bytes`` or ``max_pixels`` is refused before it is decoded."""

    def one(source: str | bytes) -> tuple[np.ndarray | None, str]:
        try:
            data = (read(source) if read else read_bytes(source, max_bytes)) if isinstance(source, str) else source
            if max_bytes is not None and len(data) > max_bytes:
                raise FileTooLarge(f"image file over {max_bytes} bytes ({len(data)}), refused before decoding")
            return load_for_model(data, size, mode, max_pixels), ""
        except (ImageError, OSError) as exc:
            return None, str(exc)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, sources))
    blank = np.zeros((size, size, 3), np.uint8)
    images = (
        np.stack([image if image is not None else blank for image, _ in results])
        if results
        else np.zeros((0, size, size, 3), np.uint8)
    )
    return images, [error for _, error in results]

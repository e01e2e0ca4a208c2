"""The model as MLflow logs, registers and serves it: a pyfunc model that takes images.

Its input is a table of images, one per row: ``image`` (the file's bytes; base64 in JSON)
or, in batch use only, ``uri`` (a path or any URI components.data.sources reads). Its
output is one answer per row (components.scoring.answers), the same as ``lesionpipe
predict``'s: a row that cannot be scored (not an image, truncated, too many pixels, too
many bytes) gets its error and no answer, and the other rows their answers. Inside it is
the whole train output folder (the Keras model and every file beside it), loaded by
components.scoring.inference.load_model as predict, evaluate and the champion gate load
it; the ``components`` package travels with it as code, so a server needs only the
pinned packages (requirements()) to answer as the pipeline scored."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from components.data.imaging import MAX_PIXELS
from components.scoring.answers import DECIDED, ERROR, MELANOMA_FLAG, MODEL_VERSION, REFER, image_answers
from components.scoring.inference import TRAIN_OUTPUT_ARTIFACT, LoadedModel, load_model

IMAGE, URI = "image", "uri"
TTA = "tta"
# model_config keys (mlflow.pyfunc.load_model(..., model_config=...); a server's
# SERVING_MODEL_CONFIG environment variable, which `lesionpipe serve` sets).
READ_URIS, VERSION = "read_uris", "model_version"
MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS = "max_image_bytes", "max_image_pixels"
# A server reads no paths or URIs (it would read its own files for whoever asks); images
# over 20 MiB or 64 megapixels are refused before they are decoded; the answers name the
# model's id unless told its registered version. MLflow takes only the keys logged here.
DEFAULT_CONFIG = {READ_URIS: False, MAX_IMAGE_BYTES: 20 * 2**20, MAX_IMAGE_PIXELS: MAX_PIXELS, VERSION: ""}
# What the model's code imports, pinned to the versions it was logged with.
REQUIREMENTS = (
    "mlflow",
    "tensorflow-cpu",
    "tensorflow",
    "keras",
    "numpy",
    "pandas",
    "pillow",
    "pyyaml",
    "pydantic",
    "google-cloud-storage",
)


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """Images in, one answer per image out (see the module's docstring)."""

    def load_context(self, context) -> None:
        train_output = Path(context.artifacts[TRAIN_OUTPUT_ARTIFACT])
        # From the logged model's own folder (its MLmodel names the model's id), when it is one.
        root = next((p for p in train_output.parents if (p / "MLmodel").is_file()), train_output)
        self.loaded: LoadedModel = load_model(str(root))
        self.config = {**DEFAULT_CONFIG, **(context.model_config or {})}
        self.loaded.version = self.config.get(VERSION) or self.loaded.version

    def predict(self, context, model_input, params: dict | None = None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        sources, errors = self._sources(frame)
        readable = [i for i, error in enumerate(errors) if not error]
        tta = bool((params or {}).get(TTA, False))
        probs = np.zeros((len(frame), len(self.loaded.classes)))
        views = np.zeros((len(frame), 8 if tta else 1, len(self.loaded.classes)))
        if readable:
            probs[readable], views[readable], read_errors = self.loaded.scores_of_files(
                [sources[i] for i in readable],
                tta=tta,
                max_bytes=int(self.config[MAX_IMAGE_BYTES]),
                max_pixels=int(self.config[MAX_IMAGE_PIXELS]),
            )
            for i, error in zip(readable, read_errors):
                errors[i] = error
        return pd.DataFrame(image_answers(self.loaded, probs, errors, views=views if tta else None), dtype=object)

    def _sources(self, frame: pd.DataFrame) -> tuple[list, list[str]]:
        """Each row's image (bytes or a URI) and its error ('' when it has one to read)."""
        sources: list = []
        errors: list[str] = []
        for _, row in frame.iterrows():
            image, uri = row.get(IMAGE), row.get(URI)
            if isinstance(image, (bytes, bytearray)):
                sources.append(bytes(image))
                errors.append("")
            elif isinstance(uri, str) and uri and self.config[READ_URIS]:
                sources.append(uri)
                errors.append("")
            else:
                sources.append(None)
                errors.append(
                    f"this model reads no {URI}s here (model_config {READ_URIS}: true to allow); send the "
                    f"image's bytes as {IMAGE}"
                    if isinstance(uri, str) and uri
                    else f"no {IMAGE} in this row (the image file's bytes; base64 in JSON)"
                )
        return sources, errors


def signature(loaded: LoadedModel):
    """Images in (optional ``image`` bytes and ``uri`` columns), the answers' columns out
    (those of ``loaded``: its classes, flags if it has them), and the ``tta`` parameter."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    [example] = image_answers(loaded, np.full((1, len(loaded.classes)), 1 / len(loaded.classes)), [""])
    kinds = {DECIDED: "string", MELANOMA_FLAG: "boolean", REFER: "boolean", MODEL_VERSION: "string", ERROR: "string"}
    return ModelSignature(
        inputs=Schema([ColSpec("binary", IMAGE, required=False), ColSpec("string", URI, required=False)]),
        outputs=Schema([ColSpec(kinds.get(column, "double"), column, required=False) for column in example]),
        params=ParamSchema([ParamSpec(TTA, "boolean", False)]),
    )


def requirements() -> list[str]:
    """REQUIREMENTS installed here, as ``name==version``."""
    pinned = []
    for name in REQUIREMENTS:
        try:
            pinned.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pinned


def log_served_model(train_output: str | Path, tracking_uri: str, run_id: str) -> str:
    """Log the finished train output folder ``train_output`` to the MLflow run ``run_id``
    as the image-taking model, with its signature, code and requirements, and its
    classes, image size, resize mode, synthetic flag and decision offsets in its
    metadata (shown in MLflow's UI); returns its model URI."""
    import components
    from components.core import tracking

    loaded = load_model(str(train_output))
    metadata = {
        "classes": loaded.classes,
        "image_size": loaded.image_size,
        "resize_mode": loaded.resize_mode,
        "synthetic": loaded.synthetic,
    }
    if loaded.decision_bias:
        metadata["decision_bias"] = dict(zip(loaded.classes, loaded.decision_bias))
    with tracking.logging_into(tracking_uri, run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ImageClassifier(),
            artifacts={TRAIN_OUTPUT_ARTIFACT: str(train_output)},
            code_paths=[str(Path(components.__file__).parent)],
            signature=signature(loaded),
            pip_requirements=requirements(),
            model_config=DEFAULT_CONFIG,
            metadata=metadata,
        )
    return info.model_uri

"""The registered model takes images: the same answers from `lesionpipe predict`,
`lesionpipe evaluate`, mlflow.pyfunc.load_model(...).predict and the real model server
(`lesionpipe serve`, which runs `mlflow models serve --env-manager local`) on real photos
(scikit-image's bundled ones); bad rows get their error, the others their answers."""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import struct
import sys
import urllib.request
import zlib
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import skimage
from click.testing import CliRunner
from PIL import Image

from components.core.tracking import client, pipeline_run, use_store
from components.scoring.inference import load_model
from components.scoring.served_model import IMAGE, MAX_IMAGE_BYTES, READ_URIS, URI
from components.training.train import train
from components.training.trained_model import log_trained_model
from pipeline.cli import main
from tests.helpers.servers import free_port, running_server
from tests.helpers.tiny_data import make_tiny_shards, tiny_config

NAME = "served-test-classifier"
PHOTOS = ["rocket.jpg", "retina.jpg", "hubble_deep_field.jpg", "coffee.png", "chelsea.png"]


@pytest.fixture(scope="module")
def champion(tmp_path_factory) -> dict:
    """A tiny model trained on generated shards, logged as the train step logs it and
    registered with the alias champion in an SQLite store."""
    root = tmp_path_factory.mktemp("served")
    cfg = tiny_config(epochs=1)
    train(make_tiny_shards(root, cfg), None, cfg.train, root / "model")
    store = f"sqlite:///{root / 'mlflow.db'}"
    run_id = pipeline_run(store, "served", "served-run", "kfp-served", {})
    model_uri = log_trained_model(root / "model", store, run_id)
    use_store(store)
    version = mlflow.register_model(model_uri, NAME).version
    client(store).set_registered_model_alias(NAME, "champion", version)
    photos = root / "photos"
    photos.mkdir()
    for name in PHOTOS:
        (photos / name).write_bytes((Path(skimage.data_dir) / name).read_bytes())
    return {
        "store": store,
        "uri": f"models:/{NAME}@champion",
        "version": f"models:/{NAME}/{version}",
        "model_id": mlflow.models.get_model_info(model_uri).model_id,
        "photos": photos,
    }


def photo_files(champion) -> list[Path]:
    return [champion["photos"] / name for name in PHOTOS]


def pyfunc_answers(champion, frame: pd.DataFrame, **config) -> pd.DataFrame:
    use_store(champion["store"])
    return mlflow.pyfunc.load_model(champion["uri"], model_config=config or None).predict(frame)


def test_the_logged_model_is_a_pyfunc_whose_signature_takes_images(champion):
    use_store(champion["store"])
    info = mlflow.models.get_model_info(champion["uri"])
    assert set(info.flavors) == {"python_function"}
    assert [(c.name, c.type.name) for c in info.signature.inputs.inputs] == [(IMAGE, "binary"), (URI, "string")]
    outputs = info.signature.outputs.input_names()
    assert outputs[0] == "predicted_class" and outputs[-2:] == ["model_version", "error"]
    assert [p.name for p in info.signature.params.params] == ["tta"]
    loaded = load_model(champion["uri"], champion["store"])  # what evaluate, predict and the gate load
    assert outputs[1 : 1 + len(loaded.classes)] == [f"p_{c}" for c in loaded.classes]
    assert loaded.version == champion["version"] and loaded.synthetic


@pytest.mark.parametrize("tta", [False, True])
def test_predict_evaluate_and_the_pyfunc_give_identical_probabilities(champion, tmp_path, tta):
    files = photo_files(champion)
    out = tmp_path / "predictions.csv"
    args = ["predict", "--model", champion["uri"], *map(str, files), "--out", str(out)]
    result = CliRunner().invoke(main, args + ["--tracking-uri", champion["store"]] + (["--tta"] if tta else []))
    assert result.exit_code == 0, result.output
    predicted = list(csv.DictReader(out.open()))
    frame = pd.DataFrame({IMAGE: [f.read_bytes() for f in files]})
    answers = pyfunc_answers(champion, frame) if not tta else None
    if tta:
        use_store(champion["store"])
        answers = mlflow.pyfunc.load_model(champion["uri"]).predict(frame, params={"tta": True})
    loaded = load_model(champion["uri"], champion["store"])
    probs, errors = loaded.probabilities_of_files(list(map(str, files)), tta=tta)  # what evaluate scores
    assert not any(errors)
    columns = [f"p_{c}" for c in loaded.classes]
    assert np.array_equal(answers[columns].to_numpy(dtype=float), probs)
    for row, answer in zip(predicted, answers.to_dict("records")):
        assert [float(row[c]) for c in columns] == [round(answer[c], 6) for c in columns]
        assert row["predicted_class"] == answer["predicted_class"]
        # predict resolved the alias; the pyfunc, loaded without `lesionpipe serve`, names its model id,
        # which is the registered version's.
        assert row["model_version"] == champion["version"]
        assert answer["model_version"] == f"models:/{champion['model_id']}"


def test_uris_are_read_only_when_the_model_config_allows(champion):
    frame = pd.DataFrame({URI: [str(photo_files(champion)[0])]})
    [refused] = pyfunc_answers(champion, frame).to_dict("records")
    assert refused["predicted_class"] is None and READ_URIS in refused["error"]
    [read] = pyfunc_answers(champion, frame, **{READ_URIS: True}).to_dict("records")
    assert read["error"] == "" and read["predicted_class"]


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's header)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR's fields, then its CRC
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def post(url: str, rows: list[bytes]) -> dict:
    body = {"dataframe_split": {"columns": [IMAGE], "data": [[base64.b64encode(r).decode()] for r in rows]}}
    request = urllib.request.Request(
        f"{url}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def test_the_served_champion_answers_jpegs_and_bad_rows_get_their_error(champion, tmp_path):
    files = photo_files(champion)
    jpeg = files[0].read_bytes()
    big = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)).save(big, "PNG")
    limit = 1_000_000  # the server's per-image byte limit, lowered for the test (default 20 MiB)
    assert len(big.getvalue()) > limit > max(f.stat().st_size for f in files)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "pipeline.cli", "serve", "--model", champion["uri"], "--port", str(port)]
    env = {"SERVING_MODEL_CONFIG": json.dumps({MAX_IMAGE_BYTES: limit}), "MLFLOW_TRACKING_URI": champion["store"]}
    with running_server(command + ["--tracking-uri", champion["store"]], f"{url}/health", tmp_path / "s.log", env=env):
        bad = [b"not an image at all", jpeg[: len(jpeg) // 2], png_claiming(20000, 20000), big.getvalue()]
        answers = post(url, [jpeg, *bad, files[1].read_bytes()])["predictions"]
        (tmp_path / "answers.json").write_text(json.dumps(answers, indent=1))  # for the record
        again = post(url, [f.read_bytes() for f in files])["predictions"]  # still up
    good = [answers[0], answers[-1]]
    assert all(a["error"] == "" and a["model_version"] == champion["version"] for a in good)
    errors = [a["error"] for a in answers[1:-1]]
    assert "not an image" in errors[0]
    assert "truncated" in errors[1]
    assert "too many pixels" in errors[2]
    assert f"over {limit} bytes" in errors[3]
    assert all(a["predicted_class"] is None for a in answers[1:-1])
    local = pyfunc_answers(champion, pd.DataFrame({IMAGE: [f.read_bytes() for f in files]}))
    expected = [answer | {"model_version": champion["version"]} for answer in local.to_dict("records")]
    assert again == expected  # the same answers, to the last bit; the version as lesionpipe serve resolved it


def test_a_restart_resolves_the_alias_anew(champion):
    """What a rolling restart of the model server does (docs/cluster.md): the alias is read
    when the model is loaded, so a moved alias names the new version."""
    store = champion["store"]
    use_store(store)
    moved = mlflow.register_model(f"models:/{champion['model_id']}", NAME).version
    try:
        client(store).set_registered_model_alias(NAME, "champion", moved)
        assert load_model(champion["uri"], store).version == f"models:/{NAME}/{moved}"
    finally:
        client(store).set_registered_model_alias(NAME, "champion", champion["version"].rpartition("/")[2])


def test_a_model_logged_before_it_took_images_still_loads(champion):
    """Versions registered by mlflow.tensorflow (the Keras model, its metadata in MLmodel)
    load as before for evaluate, predict and the champion gate."""
    import keras

    current = load_model(champion["uri"], champion["store"])
    metadata = {"classes": current.classes, "image_size": current.image_size, "resize_mode": "pad", "synthetic": True}
    store = champion["store"]
    use_store(store)
    run_id = pipeline_run(store, "served", "legacy-run", "kfp-legacy", {})
    keras_model = keras.models.load_model(champion["photos"].parent / "model" / "model.keras", compile=False)
    with mlflow.start_run(run_id=run_id):
        uri = mlflow.tensorflow.log_model(keras_model, name="model", metadata=metadata).model_uri
    legacy = load_model(uri, store)
    assert legacy.classes == current.classes and legacy.synthetic and legacy.version == uri  # models:/m-...
    files = list(map(str, photo_files(champion)))
    # A legacy version carries no temperature (calibration came later): its probabilities are
    # the Keras model's own, as the current version's are before its temperature.
    uncalibrated = dataclasses.replace(current, temperature=1.0)
    assert legacy.temperature == 1.0
    assert np.array_equal(legacy.probabilities_of_files(files)[0], uncalibrated.probabilities_of_files(files)[0])

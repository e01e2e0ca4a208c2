"""`lesionpipe predict` and `lesionpipe evaluate` through the real CLI (in process), on a
model trained on tiny synthetic shards and on images written as files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from components.data import synthetic, tfrecords
from components.training.train import train
from pipeline.cli import main
from tests.helpers import write_class_folder
from tests.helpers.tiny_data import make_tiny_shards, tiny_config


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("predict")
    normalized = make_tiny_shards(root)
    # 10 epochs: the grouped hash split leaves 25 of the 64 tiny images to train on (a stratified
    # split left 32); 3 epochs got 8-11 of the 16 images below right over data seeds, 10 get 12-15.
    train(normalized, None, tiny_config(epochs=10, learning_rate=0.003).train, root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    # Larger than the model's 32 px and not square-padded: the CLI must resize like normalize.
    return write_class_folder(tmp_path_factory.mktemp("images"), per_class=4, size=48, seed=99)


def test_predict_writes_every_class_probability_and_melanoma(model_dir, images, tmp_path):
    out = tmp_path / "predictions.csv"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    result = CliRunner().invoke(
        main, ["predict", "--model", str(model_dir), str(images), str(broken), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "17 images" in result.output and "1 unreadable" in result.output
    rows = list(csv.DictReader(out.open()))
    classes = json.loads((model_dir / "classes.json").read_text())
    assert list(rows[0]) == [
        "path",
        "predicted_class",
        *[f"p_{c}" for c in classes],
        "melanoma_probability",
        "melanoma_flag",
        "uncertainty",
        "refer",
        "model_version",
        "error",
        "synthetic_model",
    ]
    assert {r["model_version"] for r in rows} == {str(model_dir)}  # a local folder: its path
    # Trained on the generated shards: train() says so in model_info.json.
    assert {r["synthetic_model"] for r in rows} == {"True"}
    good = [r for r in rows if not r["error"]]
    assert len(good) == 16 and "not an image" in next(r for r in rows if r["error"])["error"]
    for row in good:
        probs = np.array([float(row[f"p_{c}"]) for c in classes])
        assert probs.sum() == pytest.approx(1.0, abs=1e-4)
        assert row["predicted_class"] == classes[int(probs.argmax())]
        assert float(row["melanoma_probability"]) == float(row["p_melanoma"])
    # The model learned something: most of the synthetic images get their own class.
    right = sum(r["predicted_class"] == Path(r["path"]).parent.name for r in good)
    assert right >= 10, right


def test_evaluate_scores_a_folder_with_the_pipelines_metrics_and_report(model_dir, images, tmp_path):
    out = tmp_path / "external" / "metrics.json"
    result = CliRunner().invoke(
        main, ["evaluate", "--model", str(model_dir / "model.keras"), "--data", str(images), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 16 and metrics["data"] == str(images)
    for key in (
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "melanoma_auc",
        "ece",
        "per_class",
        "confusion_matrix",
        "melanoma_sensitivity_at_90_specificity",
    ):
        assert key in metrics
    report = (tmp_path / "external" / "metrics_report" / "report.html").read_text()
    assert "confusion matrix" in report.lower() and "data:image/png;base64," in report


def test_evaluate_counts_images_of_classes_the_model_does_not_know(model_dir, tmp_path):
    folder = write_class_folder(tmp_path / "data", classes=synthetic.CLASSES[:2], per_class=3, size=40)
    # Another seed: the unknown class's images must not duplicate the known ones (ingest drops conflicts).
    write_class_folder(folder, classes=("lentigo",), per_class=3, size=40, seed=11)
    out = tmp_path / "m.json"
    result = CliRunner().invoke(main, ["evaluate", "--model", str(model_dir), "--data", str(folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["n"] == 6
    assert "not scored: 3 images (classes unknown to the model: lentigo)" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "--model", "models:/nope@champion", "x.jpg"], "Error: cannot load model models:/nope@champion"),
        (["predict", "--model", "/no/such/model.keras", "x.jpg"], "Error: model not found: /no/such/model.keras"),
        (["run", "--set", "train.model=vgg99"], "Error: unknown model 'vgg99'"),
        (["run", "--set", "train.imbalance=smote"], "Error: train.imbalance must be none, class_weight, focal"),
        (
            ["run", "--set", "train.model=mobilenet_v2", "--set", "train.weights=/no/such/weights.h5"],
            "Error: weights file not found: /no/such/weights.h5",
        ),
    ],
)
def test_user_mistakes_are_one_error_line(args, message, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert result.output.strip().splitlines()[-1].startswith(message), result.output
    assert "Traceback" not in result.output


def test_predict_reads_the_same_pixels_as_training(model_dir, tmp_path):
    """An image saved as PNG at the model's size predicts exactly as its shard record."""
    from PIL import Image

    from components.evaluation.predict import predict_files
    from components.scoring.inference import load_model

    normalized = model_dir.parent / "normalized"
    images, _, _ = tfrecords.read_all(tfrecords.shard_paths(normalized, "test"), 32)
    path = tmp_path / "one.png"
    Image.fromarray(images[0]).save(path)
    loaded = load_model(str(model_dir))
    row = predict_files(loaded, [str(path)])[0]
    direct = loaded.predict(images[:1])[0]
    assert [row[f"p_{c}"] for c in loaded.classes] == pytest.approx(direct.tolist(), abs=1e-6)


@pytest.mark.parametrize("tta", [False, True])
def test_files_are_scored_a_few_batches_at_a_time_as_in_one_pass(model_dir, images, tmp_path, monkeypatch, tta):
    from components.evaluation.predict import find_images
    from components.scoring import inference

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    files = find_images([str(images)])
    files.insert(5, str(broken))
    loaded = inference.load_model(str(model_dir))
    everything, errors = inference.load_images(files, loaded.image_size, loaded.resize_mode)
    one_pass = loaded.predict(everything, batch_size=4, tta=tta)
    monkeypatch.setattr(inference, "FILE_CHUNK_BATCHES", 1)  # 17 files: 5 chunks of one batch
    probs, chunked_errors = loaded.probabilities_of_files(files, batch_size=4, tta=tta)
    np.testing.assert_array_equal(probs, one_pass)
    assert chunked_errors == errors and bool(errors[5]) and not any(errors[:5] + errors[6:])


def test_a_champion_of_another_image_size_is_scored_on_the_test_files_as_in_one_pass(
    model_dir, images, tmp_path, monkeypatch
):
    from components.core.settings import DataConfig
    from components.data.ingest import ingest
    from components.data.normalize import normalize
    from components.data.split import split
    from components.registry.rescoring import score_champion_on_test_split
    from components.scoring import inference
    from components.scoring.metrics import classification_metrics

    data = DataConfig(image_size=40, val_fraction=0.25, test_fraction=0.5, num_shards=2)
    ingest(str(images), data, tmp_path / "ingest")
    split(tmp_path / "ingest", data, tmp_path / "split")
    normalize(tmp_path / "split", data, tmp_path / "normalized")
    labels, uris = tfrecords.read_labels(tfrecords.shard_paths(tmp_path / "normalized", "test"))
    loaded = inference.load_model(str(model_dir))  # 32 px: the test files are read again at its size
    # The reference: every test file in memory at once.
    probs = loaded.predict(inference.load_images(uris, 32, loaded.resize_mode)[0], batch_size=4)
    monkeypatch.setattr(inference, "FILE_CHUNK_BATCHES", 1)
    assert len(uris) > 4  # more than one chunk
    cfg = tiny_config().evaluate.model_copy(update={"batch_size": 4, "tta": False})
    scored, problem = score_champion_on_test_split(str(model_dir), "", tmp_path / "normalized", cfg)
    assert problem == ""
    assert scored.metrics == classification_metrics(labels, probs, loaded.classes, cfg.melanoma_class)
    np.testing.assert_array_equal(scored.probs, probs)


def test_a_model_trained_on_synthetic_data_is_flagged_by_predict_and_evaluate(model_dir, images, tmp_path):
    """train() writes model_info.json beside the model, which says whether it learned from
    the generated images (model_dir did); predict and evaluate say so, and only then."""
    import shutil

    from components.training.trained_model import write_model_info

    real = tmp_path / "real"
    shutil.copytree(model_dir, real)
    write_model_info(real, {"image_size": 32, "resize_mode": "pad", "synthetic": False})
    out = tmp_path / "real.csv"
    result = CliRunner().invoke(main, ["predict", "--model", str(real), str(images), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {r["synthetic_model"] for r in csv.DictReader(out.open())} == {"False"} and "SYNTHETIC" not in result.output

    flagged = model_dir
    out = tmp_path / "predictions.csv"
    result = CliRunner().invoke(main, ["predict", "--model", str(flagged), str(images), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"WARNING: {flagged} is a SYNTHETIC model: trained on generated images, not medical images" in result.output
    assert "(SYNTHETIC model: see the synthetic_model column)" in result.output
    assert {r["synthetic_model"] for r in csv.DictReader(out.open())} == {"True"}

    metrics_path = tmp_path / "external" / "metrics.json"
    result = CliRunner().invoke(
        main, ["evaluate", "--model", str(flagged / "model.keras"), "--data", str(images), "--out", str(metrics_path)]
    )
    assert result.exit_code == 0, result.output
    assert "is a SYNTHETIC model" in result.output and "(SYNTHETIC model)" in result.output
    metrics = json.loads(metrics_path.read_text())
    assert metrics["model_synthetic"] is True and metrics["synthetic"] is False  # the images are real files
    report = (tmp_path / "external" / "metrics_report" / "report.html").read_text()
    assert "SYNTHETIC model: trained on generated images" in report


def test_decision_offsets_for_other_classes_are_one_error_line(model_dir, images, tmp_path):
    import shutil

    from components.core import filenames

    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    (broken / filenames.DECISION_BIAS).write_text(json.dumps({"decision_bias": {"nevus": 1.0, "lentigo": -1.0}}))
    result = CliRunner().invoke(
        main, ["predict", "--model", str(broken), str(images), "--out", str(tmp_path / "p.csv")]
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert (
        result.output.strip()
        .splitlines()[-1]
        .startswith(f"Error: cannot load model {broken}: decision offsets are for classes ['lentigo', 'nevus']")
    ), result.output


HAM_CODES = {"melanoma": "mel", "nevus": "nv", "basal_cell_carcinoma": "bcc", "benign_keratosis": "bkl"}


@pytest.fixture
def ham_source(images, tmp_path) -> Path:
    """The 16 images as a HAM10000 source: flat image files and a metadata CSV, two
    images of each lesion (8 lesions)."""
    root = tmp_path / "ham"
    (root / "images").mkdir(parents=True)
    rows = []
    for i, path in enumerate(sorted(Path(images).rglob("*.jpg"))):
        name = f"ISIC_{i:07d}"
        (root / "images" / f"{name}.jpg").write_bytes(path.read_bytes())
        rows.append({"lesion_id": f"HAM_{i // 2:07d}", "image_id": name, "dx": HAM_CODES[path.parent.name]})
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


def test_evaluate_scores_lesions_beside_images_with_intervals(model_dir, ham_source, tmp_path):
    out = tmp_path / "metrics.json"
    result = CliRunner().invoke(
        main, ["evaluate", "--model", str(model_dir / "model.keras"), "--data", str(ham_source), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    # Per image: 16 images, intervals from resampling the 8 lesions.
    assert metrics["n"] == 16
    drawn = metrics["intervals"]
    assert (drawn["unit"], drawn["units"], drawn["resamples"], drawn["level"]) == ("lesions", 8, 1000, 0.95)
    low, high = drawn["values"]["balanced_accuracy"]
    assert low <= metrics["balanced_accuracy"] <= high
    # Per lesion: 8 lesions, each its two images' mean probabilities.
    lesions = metrics["per_lesion"]
    assert lesions["n"] == 8 and lesions["intervals"]["units"] == 8
    probs = np.load(tmp_path / "metrics_report" / "predictions.npz")["probs"]
    assert lesions["melanoma_auc"] is not None and lesions["per_class"]["melanoma"]["support"] == 2
    assert probs.shape == (16, 4)
    # The console line carries the intervals, the report the per-lesion table.
    assert f"balanced accuracy {metrics['balanced_accuracy']:.3f} [{low:.2f}, {high:.2f}]" in result.output
    assert "per lesion (8 lesions)" in result.output
    report = (tmp_path / "metrics_report" / "report.html").read_text()
    assert "Per lesion (8 lesions)" in report and "bootstrap over the 8 lesions" in report


def test_predict_with_lesions_writes_one_row_per_lesion(model_dir, ham_source, tmp_path):
    out = tmp_path / "p.csv"
    metadata = ham_source / "HAM10000_metadata.csv"
    stray = tmp_path / "stray.jpg"  # an image the CSV does not name
    stray.write_bytes((ham_source / "images" / "ISIC_0000000.jpg").read_bytes())
    result = CliRunner().invoke(
        main,
        [
            "predict",
            "--model",
            str(model_dir),
            str(ham_source / "images"),
            str(stray),
            "--out",
            str(out),
            "--lesions",
            str(metadata),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "8 lesions ->" in result.output and "1 images not in" in result.output
    images = {Path(r["path"]).stem: r for r in csv.DictReader(out.open())}
    lesions = list(csv.DictReader((tmp_path / "p_lesions.csv").open()))
    classes = json.loads((model_dir / "classes.json").read_text())
    assert list(lesions[0]) == [
        "lesion",
        "images",
        "predicted_class",
        *[f"p_{c}" for c in classes],
        "melanoma_probability",
        "melanoma_flag",
        "synthetic_model",
    ]
    assert [r["lesion"] for r in lesions] == [f"HAM_{i:07d}" for i in range(8)]
    for i, row in enumerate(lesions):
        pair = [images[f"ISIC_{2 * i + j:07d}"] for j in (0, 1)]
        assert row["images"] == "2"
        for c in classes:
            assert float(row[f"p_{c}"]) == pytest.approx(np.mean([float(p[f"p_{c}"]) for p in pair]), abs=2e-6)
        means = [float(row[f"p_{c}"]) for c in classes]
        assert row["predicted_class"] == classes[int(np.argmax(means))]
    # A CSV without the columns is one error line.
    bad = tmp_path / "bad.csv"
    bad.write_text("file,patient\na,b\n")
    result = CliRunner().invoke(
        main, ["predict", "--model", str(model_dir), str(stray), "--out", str(out), "--lesions", str(bad)]
    )
    assert result.exit_code == 1 and "needs an image column (image, image_id, image_name)" in result.output

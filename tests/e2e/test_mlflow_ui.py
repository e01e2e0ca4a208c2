"""Reviewing a run in the MLflow UI: a real `mlflow ui` on the test's own store, opened
in headless Chromium (Debian's chromium + chromedriver, driven by Selenium). Checks what
a reviewer sees: the experiment opens on its runs table (not the GenAI overview), the
run page says the verdict on top (test metrics, champion decision, registered version
and alias, the KFP run's link) and links the registered version, its Datasets panel lists
the source and the train/val/test subsets (digests, contexts, counts, source URL), the
evaluation report and the registered model's alias show up; screenshots go to the test's
tmp folder."""

from __future__ import annotations

import shutil
import sys
import time

import pytest

from components.core import run_descriptions
from components.core.tracking import (
    EXPERIMENT_KIND_TAG,
    MODEL_DEVELOPMENT,
    client,
    ensure_experiment,
    experiment_url,
    logged_model_id,
    logging_into,
    pipeline_run,
    run_url,
)
from components.data import tfrecords
from components.data.dataset_inputs import data_inputs, log_data_inputs
from components.evaluation.evaluate import evaluate, log_to_mlflow
from components.evaluation.report_html import PIPELINE_REPORT_TITLE, write_report
from components.registry.register import register
from components.training.models import build_model
from tests.helpers.models import log_keras_model
from tests.helpers.servers import free_port, running_server
from tests.helpers.tiny_data import make_tiny_shards, tiny_config

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
)
MODEL_NAME = "ui-test-classifier"
KFP_UI = "https://kfp.example.com"


def _chromium():
    from selenium import webdriver

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """An SQLite store holding one evaluated pipeline run, its dataset inputs and its
    registered champion."""
    root = tmp_path_factory.mktemp("ui_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = tiny_config()
    normalized = make_tiny_shards(root)
    meta = tfrecords.read_meta(normalized)
    model = build_model("seed_cnn", len(meta["classes"]), 32, meta["mean"], meta["std"])
    model.save(root / "model.keras")
    run_id = pipeline_run(uri, "ui-test", "lesion-pipeline-ui-test", "kfp-ui-test", cfg.flat_params())
    # As the train step does: epoch metrics first, so MLflow's table lists them before the test metrics.
    for epoch in range(2):
        client(uri).log_metric(run_id, "accuracy", 0.5 + epoch / 10, step=epoch)
        client(uri).log_metric(run_id, "loss", 1.0 - epoch / 10, step=epoch)
    model_uri = log_keras_model(str(root / "model.keras"), 32, uri, run_id, meta["classes"], synthetic=True)
    # As the report step does: the source and its subsets (make_tiny_shards' ingest and split).
    with logging_into(uri, run_id):
        log_data_inputs(root / "ingest", root / "split")
    ev = evaluate(root / "model.keras", normalized, cfg.evaluate, root / "evaluation")
    write_report(ev, root / "evaluation", PIPELINE_REPORT_TITLE, synthetic=True)
    log_to_mlflow(uri, run_id, ev.metrics, root / "evaluation")
    gate = register(
        evaluation_dir=root / "evaluation",
        normalized_dir=normalized,
        evaluate=cfg.evaluate,
        champion_gate=cfg.champion_gate,
        model_name=MODEL_NAME,
        model_uri=model_uri,
        data_fingerprint="f" * 64,
        tracking_uri=uri,
        mlflow_run_id=run_id,
        output_dir=root / "registration",
        kfp_url=run_descriptions.kfp_run_url(KFP_UI, "kfp-ui-test"),
    )
    return {
        "uri": uri,
        "run_id": run_id,
        "experiment_id": ensure_experiment(uri, "ui-test"),
        "gate": gate,
        "metrics": ev.metrics,
        "root": root,
        "model_id": logged_model_id(uri, run_id),
        "datasets": {context: d for d, context in data_inputs(root / "ingest", root / "split")},
    }


@pytest.fixture(scope="module")
def ui(store) -> str:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        store["uri"],
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with running_server(command, f"{url}/health", store["root"] / "ui.log"):
        yield url


def _wait_for_text(driver, texts: list[str], timeout: float = 90) -> str:
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    body = ""
    while time.time() < deadline:
        body = driver.find_element(By.TAG_NAME, "body").text
        if all(t in body for t in texts):
            return body
        time.sleep(1)
    raise AssertionError(f"{[t for t in texts if t not in body]} not shown; page text: {body[:2000]}")


def test_experiments_are_model_training_experiments_new_and_existing(tmp_path):
    """MLflow 3's UI opens an experiment on its runs table only with this tag; one made
    before (or by someone else) without it gets it the first time a step uses it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    new = ensure_experiment(uri, "made-by-the-pipeline")
    assert client(uri).get_experiment(new).tags[EXPERIMENT_KIND_TAG] == MODEL_DEVELOPMENT
    old = client(uri).create_experiment("made-before")
    assert EXPERIMENT_KIND_TAG not in client(uri).get_experiment(old).tags
    assert ensure_experiment(uri, "made-before") == old
    assert client(uri).get_experiment(old).tags[EXPERIMENT_KIND_TAG] == MODEL_DEVELOPMENT


def test_run_description_and_registered_version_carry_the_verdict(store):
    """What the run page's description and the model version page show, in the store."""
    gate, m = store["gate"], store["metrics"]
    note = client(store["uri"]).get_run(store["run_id"]).data.tags[run_descriptions.NOTE_TAG]
    assert note.startswith(f"Test metrics ({m['n']} images): balanced accuracy **{m['balanced_accuracy']:.3f}**")
    assert f"registered model `{MODEL_NAME}` version **{gate['version']}**, alias **@champion**" in note
    assert gate["reason"] in note and "SYNTHETIC data" in note
    # The intervals follow the verdict and the warning, which the UI must show unfolded.
    assert (
        f"95 % intervals (1000 resamples of {m['n']} images): balanced accuracy {m['balanced_accuracy']:.3f} [" in note
    )
    assert note.index("SYNTHETIC data") < note.index("95 % intervals")
    assert f"{KFP_UI}/#/runs/details/kfp-ui-test" in note
    version = client(store["uri"]).get_model_version(MODEL_NAME, gate["version"])
    assert version.run_id == store["run_id"]  # the run page lists it under "Registered models"
    assert version.tags["data.synthetic"] == "true"
    assert version.description.startswith("**SYNTHETIC data**") and "@champion" in version.description
    # The test metrics are the logged model's too: its page lists them.
    logged = client(store["uri"]).get_logged_model(store["model_id"])
    assert logged.source_run_id == store["run_id"]
    by_name = {metric.key: metric.value for metric in logged.metrics}
    assert by_name["test_balanced_accuracy"] == pytest.approx(store["metrics"]["balanced_accuracy"])


def test_mlflow_ui_shows_run_metrics_report_and_champion(store, ui, tmp_path):
    from selenium.webdriver.common.by import By

    driver = _chromium()
    m = store["metrics"]
    try:
        # The links lesionpipe prints (summary, console, model version) open the runs table
        # (MLflow 3.17 follows its sidebar switch, GenAI by default, not the experiment's tag).
        local_ui = experiment_url(store["uri"], store["experiment_id"]).removeprefix("http://127.0.0.1:5000")
        driver.get(ui + local_ui)
        experiment = _wait_for_text(
            driver, ["Model training", "lesion-pipeline-ui-test", "Run Name", "Created", "1 matching run"]
        )
        driver.save_screenshot(str(tmp_path / "experiment.png"))
        for genai in ("Detect Issues", "Observability", "Traces per"):
            assert genai not in experiment, experiment[:2000]

        run_page = f"{ui}/#/experiments/{store['experiment_id']}/runs/{store['run_id']}"
        driver.get(ui + run_url(store["uri"], store["run_id"]).removeprefix("http://127.0.0.1:5000"))
        body = _wait_for_text(
            driver,
            [
                "lesion-pipeline-ui-test",
                "Test metrics",
                "test_balanced_accuracy",
                "test_melanoma_auc",
                "Verdict: CHAMPION",
                "Show more",
                f"balanced accuracy {m['balanced_accuracy']:.3f}",
                "alias @champion",
                f"{MODEL_NAME} version 1",
                "SYNTHETIC data",
            ],
        )
        driver.save_screenshot(str(tmp_path / "run.png"))
        driver.find_element(By.XPATH, "//*[text()='Show more']").click()
        body = _wait_for_text(driver, [f"{KFP_UI}/#/runs/details/kfp-ui-test", "no champion yet", "95 % intervals"])
        link = driver.find_element(By.XPATH, f"//a[@href='{KFP_UI}/#/runs/details/kfp-ui-test']")
        assert link.text == f"{KFP_UI}/#/runs/details/kfp-ui-test"
        driver.save_screenshot(str(tmp_path / "run_description.png"))
        # The description, test metrics first, is on top: above the metrics table, whose
        # rows come in the order they were logged (training epochs first).
        assert body.index("Test metrics") < body.index("Verdict: CHAMPION") < body.index("Metrics (")
        registered = body[body.index("Registered models") :]
        assert registered.startswith("Registered models") and MODEL_NAME in registered[:200], registered[:200]

        # The Datasets panel: the source (name, digest, context) and "+3", which lists the
        # subsets; a subset opens the drawer with all four, its counts, fingerprint and source.
        datasets = store["datasets"]
        source = datasets.pop("source")
        assert f"Datasets\n{source.name} ({source.digest})\nSource\n+3\n" in body, body[body.index("Datasets") :][:300]
        driver.find_element(By.XPATH, "//button[normalize-space()='+3']").click()
        _wait_for_text(driver, [f"{d.name} ({d.digest})\n{context.capitalize()}" for context, d in datasets.items()])
        train = datasets["train"]
        driver.find_element(By.XPATH, f"//*[contains(text(), '{train.name}')]").click()
        drawer = _wait_for_text(
            driver,
            [
                "4 datasets used",
                f"images: {train.profile['images']}",
                f"fingerprint: {train.fingerprint}",
                f"Digest: {train.digest}",
                f"URL:\n{source.source.uri}",
            ],
        )
        listed = drawer[drawer.index("4 datasets used") :]
        for context, dataset in {"source": source, **datasets}.items():
            assert f"{dataset.name} ({dataset.digest})\n{context.capitalize()}" in listed, listed[:500]
        driver.save_screenshot(str(tmp_path / "datasets.png"))

        driver.get(f"{run_page}/artifacts/evaluation/report.html")
        _wait_for_text(driver, ["evaluation", "report.html", "confusion_matrix.png"])
        driver.save_screenshot(str(tmp_path / "report_artifact.png"))

        driver.get(f"{ui}/#/models/{MODEL_NAME}")
        body = _wait_for_text(driver, [MODEL_NAME, "Version 1", "@", "champion"])
        assert store["gate"]["alias"] == "champion"
        driver.save_screenshot(str(tmp_path / "registered_model.png"))

        driver.get(
            f"{ui}/#/experiments/{store['experiment_id']}/models/{store['model_id']}?workflowType=machine_learning"
        )
        _wait_for_text(driver, ["test_balanced_accuracy", "test_melanoma_auc"])
        driver.save_screenshot(str(tmp_path / "logged_model.png"))
    finally:
        driver.quit()
    pictures = ("experiment.png", "run.png", "run_description.png", "datasets.png", "report_artifact.png")
    for name in (*pictures, "registered_model.png", "logged_model.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert "champion" in body

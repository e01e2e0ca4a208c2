"""Reviewing a run in the MLflow UI: a real `mlflow ui` on the test's own store, opened
in headless Chromium (Debian's chromium + chromedriver, driven by Selenium). Checks that
the run, its metrics, its evaluation report and the registered model's alias show up;
screenshots go to the test's tmp folder."""
from __future__ import annotations

import shutil
import sys
import time

import pytest

from components import shards
from components.champion import log_gate, register_and_promote
from components.evaluate import evaluate, log_to_mlflow, write_report
from components.models import build_model
from components.tracking import ensure_experiment, log_model, pipeline_run
from tests.conftest import free_port, running_server
from tests.tiny_data import make_tiny_shards, tiny_config

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000")
MODEL_NAME = "ui-test-classifier"


def _chromium():
    webdriver = pytest.importorskip("selenium.webdriver")
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """An SQLite store holding one evaluated pipeline run and its registered champion."""
    root = tmp_path_factory.mktemp("ui_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = tiny_config()
    normalized = make_tiny_shards(root)
    meta = shards.read_meta(normalized)
    model = build_model("seed_cnn", len(meta["classes"]), 32, meta["mean"], meta["std"])
    model.save(root / "model.keras")
    run_id = pipeline_run(uri, "ui-test", "lesion-pipeline-ui-test", "kfp-ui-test", cfg.flat_params())
    model_uri = log_model(str(root / "model.keras"), 32, uri, run_id, meta["classes"])
    ev = evaluate(root / "model.keras", normalized, cfg.evaluate, root / "evaluation")
    gate = register_and_promote(uri, MODEL_NAME, model_uri, ev.metrics, normalized, cfg.evaluate, "f" * 64)
    write_report(ev, root / "evaluation", "UI test", synthetic=True, gate=gate)
    log_to_mlflow(uri, run_id, ev.metrics, root / "evaluation")
    log_gate(uri, run_id, gate)
    return {"uri": uri, "run_id": run_id, "experiment_id": ensure_experiment(uri, "ui-test"), "gate": gate, "root": root}


@pytest.fixture(scope="module")
def ui(store) -> str:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store["uri"],
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
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


def test_mlflow_ui_shows_run_metrics_report_and_champion(store, ui, tmp_path):
    driver = _chromium()
    try:
        run_page = f"{ui}/#/experiments/{store['experiment_id']}/runs/{store['run_id']}"
        driver.get(run_page)
        _wait_for_text(driver, ["lesion-pipeline-ui-test", "test_balanced_accuracy", "test_melanoma_auc"])
        driver.save_screenshot(str(tmp_path / "run.png"))

        driver.get(f"{run_page}/artifacts/evaluation/report.html")
        _wait_for_text(driver, ["evaluation", "report.html", "confusion_matrix.png"])
        driver.save_screenshot(str(tmp_path / "report_artifact.png"))

        driver.get(f"{ui}/#/models/{MODEL_NAME}")
        body = _wait_for_text(driver, [MODEL_NAME, "Version 1", "@", "champion"])
        assert store["gate"]["alias"] == "champion"
        driver.save_screenshot(str(tmp_path / "registered_model.png"))
    finally:
        driver.quit()
    for name in ("run.png", "report_artifact.png", "registered_model.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert "champion" in body

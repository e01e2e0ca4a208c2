from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.helpers.servers import free_port, running_server

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


MLFLOW_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(autouse=True)
def isolated_mlflow_uris():
    """mlflow.set_tracking_uri()/set_registry_uri() are process-wide and also export
    MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI: without this, one test's store leaks into the
    next test's clients and subprocesses."""
    import mlflow

    saved = {name: os.environ.pop(name, None) for name in MLFLOW_URI_VARIABLES}
    yield
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """A real `mlflow server` on 127.0.0.1 with an SQLite store and proxied artifacts."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--workers",
        "1",
    ]
    with running_server(command, f"{url}/health", root / "server.log"):
        yield url


def shared_folder(variable: str, what: str) -> Path:
    """The folder ``variable`` names. Unset: the test is skipped (a laptop without
    ../shared). Set to a folder that is not there: the test fails, since CI (.ci/run)
    always sets it and a skip there would hide that the data is gone."""
    value = os.environ.get(variable)
    if not value:
        pytest.skip(f"{variable} is not set ({what})")
    if not Path(value).is_dir():
        pytest.fail(f"{variable}={value} is not a folder ({what})")
    return Path(value)


@pytest.fixture(scope="session")
def lesion_data() -> Path:
    """../shared/data as CI lays it out (LESION_DATA)."""
    return shared_folder("LESION_DATA", "real ISIC/HAM10000 data")


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    """../shared/weights (LESION_WEIGHTS)."""
    return shared_folder("LESION_WEIGHTS", "ImageNet weights in ../shared/weights")


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory) -> str:
    """A real gcp-storage-emulator on 127.0.0.1 (in memory); STORAGE_EMULATOR_HOST points
    google-cloud-storage at it for the whole session, so no test reaches the network."""
    root = tmp_path_factory.mktemp("gcs_emulator")
    port = free_port()
    host = f"http://127.0.0.1:{port}"
    command = [
        str(Path(sys.executable).with_name("gcp-storage-emulator")),
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--in-memory",
    ]
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = host
    try:
        with running_server(command, f"{host}/storage/v1/b", root / "emulator.log", timeout=60):
            yield host
    finally:
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous


@pytest.fixture
def small_disk(tmp_path):
    """``make(kib) -> folder``: a real filesystem of ``kib`` KiB (a tmpfs), for what a full
    disk does. Mounting needs root (CI runs as root); elsewhere the test is skipped."""
    import subprocess

    mounted: list[Path] = []

    def make(kib: int) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        mount = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder)], capture_output=True, text=True
        )
        if mount.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)

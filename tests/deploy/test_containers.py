"""The images, run: ``lesionpipe run --runner container`` runs every step in our CPU image
over the Docker API (Podman's, in CI), logging to an MLflow server from our MLflow image,
and ``lesionpipe predict`` in the CPU image reads the model it registered.

The images are built by docker/build.sh (``make images``); .ci/run builds the CPU and MLflow
images and sets LESION_CONTAINERS=1, so there a missing engine or image fails these tests
instead of skipping them.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import ImagesConfig
from tests.helpers import write_class_folder

LESIONPIPE = str(Path(sys.executable).parent / "lesionpipe")
IMAGES = ImagesConfig()
# A tiny run: 4 classes of 8 images, one epoch, one shard each; training in the CPU image
# (CI builds no GPU image; the pipeline's train step runs in whatever images.gpu names).
TINY = [
    "data.image_size=32",
    "train.epochs=1",
    "train.batch_size=8",
    "data.num_shards=1",
    "data.ingest_partitions=1",
    f"images.gpu={IMAGES.cpu}",
]
# list, ingest partition, merge, gate, split, normalize shard, gather, augment, train, evaluate, register,
# report, and the exit handler's finish_run
TASKS = 13


def sets(overrides: list[str]) -> list[str]:
    return sum((["--set", item] for item in overrides), [])


@pytest.fixture(scope="module")
def engine():
    """The Docker API client, with the CPU and MLflow images built."""
    import docker

    required = os.environ.get("LESION_CONTAINERS") == "1"
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:  # noqa: BLE001
        message = f"no container engine at {os.environ.get('DOCKER_HOST', 'the default socket')} ({exc})"
        pytest.fail(message) if required else pytest.skip(message + ": .ci/run sets up Podman")
    for image in (IMAGES.cpu, IMAGES.mlflow):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            message = f"{image} is not built (make images)"
            pytest.fail(message) if required else pytest.skip(message)
    yield client
    client.close()


def lesionpipe(*args: str, cwd: Path, env: dict | None = None, timeout: int = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LESIONPIPE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def test_no_engine_is_one_line_that_says_how_to_start_one(tmp_path):
    proc = lesionpipe(
        "run", "--runner", "container", *sets(TINY), cwd=tmp_path, env={"DOCKER_HOST": "unix:///nonexistent.sock"}
    )
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()[-1:]
    assert line.startswith("Error: no container engine at unix:///nonexistent.sock")
    assert "podman system service" in line and "Traceback" not in proc.stderr


def test_a_missing_image_is_one_line_that_says_how_to_build_it(tmp_path, engine):
    missing = sets([*TINY, "images.cpu=localhost/no-such-image:0"])
    proc = lesionpipe("run", "--runner", "container", *missing, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "Error: image localhost/no-such-image:0 is not on this machine: "
        "build it with `make images` (docker/build.sh; docs/containers.md)"
    )


def test_a_step_that_fails_in_its_container_fails_the_run(tmp_path, engine):
    # kfp.local's own container run removes the container before reading its exit status
    # and, not finding it, counts the step a success.
    from kfp import dsl, local

    from pipeline.config import RunConfig
    from pipeline.containers import CONTAINERS_FILE, prepare

    @dsl.component(base_image=IMAGES.cpu, install_kfp_package=False)
    def exits_3():
        raise SystemExit(3)

    cfg = RunConfig().with_overrides([f"images.gpu={IMAGES.cpu}"])
    _, containers, _ = prepare(cfg, tmp_path, "http://127.0.0.1:1")
    local.init(runner=containers.runner(), pipeline_root=str(tmp_path / "pipeline_root"), raise_on_error=True)
    with pytest.raises(RuntimeError, match="FAILURE"), containers.active(tmp_path):
        exits_3()
    (result,) = json.loads((tmp_path / CONTAINERS_FILE).read_text())
    assert result["exit_code"] == 3 and result["image"] == IMAGES.cpu


@pytest.fixture
def output_dir(tmp_path, engine):
    """The run's --output-dir; the MLflow server container its run starts is removed after."""
    from pipeline.containers import SERVER_DIR, server_name

    yield tmp_path / "out"
    with contextlib.suppress(Exception):
        engine.containers.get(server_name((tmp_path / "out" / SERVER_DIR).resolve())).remove(force=True)


def test_the_demo_runs_in_the_images_end_to_end_and_predict_in_the_image_reads_its_model(tmp_path, engine, output_dir):
    from mlflow.tracking import MlflowClient

    data = write_class_folder(tmp_path / "images", classes=("MEL", "NV", "BCC", "BKL"), per_class=8)
    started = time.monotonic()
    args = ["run", "--runner", "container", "--data", str(data), *sets(TINY), "--output-dir", str(output_dir)]
    proc = lesionpipe(*args, cwd=tmp_path)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((output_dir / "latest" / "summary.json").read_text())
    # Every step ran in the CPU image, and its container exited 0.
    containers = json.loads((Path(summary["run_dir"]) / "containers.json").read_text())
    assert len(containers) == TASKS, containers
    assert {(c["image"], c["exit_code"]) for c in containers} == {(IMAGES.cpu, 0)}
    # What the steps wrote, as uid 10001, group-writable for the host user; the data read-only.
    model_dir = Path(summary["pipeline_run_dir"]) / "train-step" / "model"
    assert (model_dir / "model_info.json").is_file()
    assert model_dir.stat().st_uid == 10001 and model_dir.stat().st_mode & 0o070 == 0o070
    assert {p.stat().st_uid for p in data.rglob("*")} == {os.getuid()}
    # Logged over HTTP to the server from the MLflow image: FINISHED, metrics, the model registered.
    uri = summary["tracking_uri"]
    assert uri.startswith("http://127.0.0.1:")
    store = MlflowClient(uri)
    run = store.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_accuracy"] == pytest.approx(summary["metrics"]["accuracy"])
    assert len(store.get_metric_history(run.info.run_id, "loss")) == 1
    version = store.get_model_version(summary["registered_model"]["name"], summary["registered_model"]["version"])
    assert version.run_id == run.info.run_id
    model_uri = f"models:/{version.name}/{version.version}"
    # lesionpipe predict in the CPU image reads the registered model from the server.
    out = tmp_path / "predictions"
    out.mkdir()
    os.chown(out, -1, os.getgid())
    out.chmod(0o2775)
    engine.containers.run(
        IMAGES.cpu,
        ["lesionpipe", "predict", "--model", model_uri, "--tracking-uri", uri, str(data), "--out", f"{out}/p.csv"],
        network_mode="host",
        group_add=[str(os.getgid())],
        volumes={str(data): {"bind": str(data), "mode": "ro"}, str(out): {"bind": str(out), "mode": "rw"}},
        remove=True,
    )
    rows = (out / "p.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 * 8 and "melanoma_probability" in rows[0]
    print(f"container demo: {seconds:.0f} s")  # docs/containers.md compares it with the subprocess runner

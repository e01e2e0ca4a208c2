"""``lesionpipe run --runner container``: every step in our images through kfp.local's
``DockerRunner`` (Docker, or Podman's Docker API), logging over HTTP to an MLflow server
that runs from our MLflow image, as on the cluster.

Host paths keep their names inside the containers: the pipeline root and the checkpoints
(written by the images' user, uid 10001) and the data (read-only). The containers share
the host's network, so a step reaches the tracking server at the address this process
uses. kfp.local's own container run removes a container before it reads its exit status
and then counts the step a success; here each step's container is kept until its status
is read, and every step's image and exit status go to the run folder's containers.json.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.core.errors import UserError
from pipeline.config import RunConfig

BUILD_HINT = "build it with `make images` (docker/build.sh; docs/containers.md)"
SOCKET_HINT = (
    "start Docker, or Podman's Docker API: `podman system service --time=0 unix:///run/podman/podman.sock &` "
    "and `export DOCKER_HOST=unix:///run/podman/podman.sock`"
)
CONTAINERS_FILE = "containers.json"
SERVER_DIR = "mlflow-server"  # under --output-dir: the tracking server's store, kept between runs
SERVER_PORT = 5000
# The step's files (outputs, checkpoints) writable by the host user's group: the host user can
# delete what uid 10001 wrote.
UMASK_ENTRYPOINT = ["/bin/sh", "-c", 'umask 0002 && exec "$@"', "sh"]


def engine_client():
    """The Docker API client (DOCKER_HOST, else the default socket), or a one-line error."""
    import docker

    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure to reach the engine is said the same way
        where = os.environ.get("DOCKER_HOST", "the default Docker socket")
        raise UserError(f"no container engine at {where} ({type(exc).__name__}): {SOCKET_HINT}") from None
    return client


def check_images(client, images: list[str]) -> None:
    """Every image the run needs is present here (nothing is pulled: a local run checks our build)."""
    for image in dict.fromkeys(images):
        if not _has_image(client, image):
            raise UserError(f"image {image} is not on this machine: {BUILD_HINT}")


def _has_image(client, image: str) -> bool:
    import docker

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return False
    return True


def step_images(cfg: RunConfig) -> list[str]:
    return [cfg.images.cpu, cfg.images.gpu]


@dataclass
class ContainerRun:
    """What one container run needs: the engine, the host paths the steps see, and each
    step's container exit status as it ends."""

    client: Any
    mounts: dict[str, dict[str, str]]
    server: str = ""  # the tracking server's container, when this run started or reused one
    results: list[dict] = field(default_factory=list)
    _running: set = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def runner(self):
        from kfp import local

        return local.DockerRunner(network_mode="host", entrypoint=UMASK_ENTRYPOINT, group_add=[str(os.getgid())])

    @contextlib.contextmanager
    def active(self, run_dir: Path) -> Iterator[None]:
        """kfp.local's container run replaced by ``run_step`` for the block; at its end every
        container still running (an interrupted run) is killed and containers.json written."""
        from kfp.local import docker_task_handler

        original = docker_task_handler.run_docker_container
        docker_task_handler.run_docker_container = self.run_step
        try:
            yield
        finally:
            docker_task_handler.run_docker_container = original
            with self._lock:
                running = list(self._running)
            for container in running:
                with contextlib.suppress(Exception):
                    container.kill()
            (run_dir / CONTAINERS_FILE).write_text(json.dumps(self.results, indent=2))

    def run_step(self, client, image: str, command: list[str], volumes: dict, **run_args) -> int:
        """One step's container: its log printed as it comes, its exit status returned."""
        started = time.monotonic()
        container = client.containers.run(
            image=image, command=command, detach=True, volumes={**self.mounts, **volumes}, **run_args
        )
        with self._lock:
            self._running.add(container)
        try:
            for line in container.logs(stream=True, follow=True):
                print(line.decode(errors="replace"), end="")
            status = container.wait()["StatusCode"]
        finally:
            with self._lock:
                self._running.discard(container)
            with contextlib.suppress(Exception):
                container.remove(force=True)
        with self._lock:
            self.results.append(
                {
                    "task": _task_of(command),
                    "image": image,
                    "exit_code": status,
                    "seconds": round(time.monotonic() - started, 1),
                }
            )
        return status


def _task_of(command: list[str]) -> str:
    """The task a step's command runs: the folder of its executor output file."""
    for previous, arg in zip(command, command[1:]):
        if previous == "--executor_input":
            return Path(json.loads(arg)["outputs"]["outputFile"]).parent.name
    return ""


def prepare(cfg: RunConfig, output_dir: Path, tracking_uri: str | None) -> tuple[RunConfig, ContainerRun, str]:
    """Check the engine and the images, make the folders the steps write group-writable and
    start (or reuse) the tracking server. Returns the config with its local paths absolute
    (the steps run in /home/lesion), the run's container set-up and the tracking URI."""
    client = engine_client()
    check_images(client, step_images(cfg) + ([] if tracking_uri else [cfg.images.mlflow]))
    if tracking_uri and not tracking_uri.startswith(("http://", "https://")):
        raise UserError(
            f"--runner container logs to an MLflow server, not {tracking_uri}: give --tracking-uri http://... "
            "or none (a server starts from the MLflow image)"
        )
    out = Path(output_dir).resolve()
    writable = [out / "pipeline_root", out / "checkpoints"]
    for folder in writable:
        shared_folder(folder)
    # kfp.local mounts the pipeline root itself.
    mounts = {str(folder): {"bind": str(folder), "mode": "rw"} for folder in writable[1:]}
    local_paths = data_paths(cfg)
    for path in local_paths.values():
        mounts[str(path)] = {"bind": str(path), "mode": "ro"}
    cfg = cfg.with_overrides([f"{key}={path}" for key, path in local_paths.items()])
    if tracking_uri:
        return cfg, ContainerRun(client, mounts), tracking_uri
    uri = start_tracking_server(client, out / SERVER_DIR, cfg.images.mlflow)
    return cfg, ContainerRun(client, mounts, server=server_name(out / SERVER_DIR)), uri


def shared_folder(folder: Path) -> None:
    """A folder uid 10001 writes in through the host user's group (setgid: what it makes keeps
    the group)."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chown(folder, -1, os.getgid())
    folder.chmod(0o2775)


def data_paths(cfg: RunConfig) -> dict[str, Path]:
    """Local files the steps read, by config key: the data source and the training weights
    file, where they are local paths."""
    values = {"data.source": cfg.data.source, "train.weights": cfg.train.weights}
    return {
        key: Path(value).resolve()
        for key, value in values.items()
        if value and "://" not in value and Path(value).exists()
    }


def server_name(store: Path) -> str:
    return "lesion-mlflow-" + hashlib.sha256(str(store).encode()).hexdigest()[:12]


def start_tracking_server(client, store: Path, image: str) -> str:
    """The MLflow server of this output folder (its store under it), from the MLflow image on
    the host's network; reused while it runs, so the registry and the runs outlive one run."""
    import docker

    name = server_name(store)
    with contextlib.suppress(docker.errors.NotFound):
        existing = client.containers.get(name)
        if existing.status == "running":
            return f"http://127.0.0.1:{existing.labels['lesion.mlflow-port']}"
        existing.remove(force=True)
    shared_folder(store)
    port = _free_port()
    client.containers.run(
        image,
        command=[
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{store}/mlflow.db",
            "--artifacts-destination",
            f"{store}/artifacts",
            "--workers",
            "1",
        ],
        name=name,
        detach=True,
        network_mode="host",
        volumes={str(store): {"bind": str(store), "mode": "rw"}},
        entrypoint=UMASK_ENTRYPOINT + ["mlflow", "server"],
        group_add=[str(os.getgid())],
        labels={"lesion.mlflow-port": str(port)},
    )
    uri = f"http://127.0.0.1:{port}"
    _wait_healthy(client, name, uri)
    return uri


def _wait_healthy(client, name: str, uri: str, timeout_s: float = 120.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{uri}/health", timeout=5) as reply:
                if reply.status == 200:
                    return
        container = client.containers.get(name)
        if container.status not in ("running", "created", "configured"):
            tail = container.logs(tail=5).decode(errors="replace").strip()
            raise UserError(f"the MLflow server container {name} exited: {tail.splitlines()[-1] if tail else ''}")
        time.sleep(1)
    raise UserError(f"the MLflow server container {name} did not answer at {uri} within {timeout_s:.0f} s")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

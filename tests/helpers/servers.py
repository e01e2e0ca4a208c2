"""Real servers for tests: free ports, start-and-wait, TF_CONFIG for local workers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_environments(workers: int) -> list[dict[str, str]]:
    """TF_CONFIG for each of ``workers`` processes on 127.0.0.1, as the Training Operator
    sets it for a TFJob with Worker replicas only (worker 0 is the chief)."""
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(workers)]}
    return [
        {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})} for i in range(workers)
    ]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@contextmanager
def running_server(
    command: list[str], health_url: str, log_path: Path, timeout: float = 120, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """Start a real server, wait until ``health_url`` answers 200, stop it afterwards.
    If it never answers, fail with the end of its log."""
    log = open(log_path, "w")
    proc = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, cwd=log_path.parent, env={**os.environ, **(env or {})}
    )
    try:
        try:
            wait_http(health_url, timeout, proc)
        except (RuntimeError, TimeoutError) as exc:
            log.flush()
            pytest.fail(f"{exc}\n{log_path.read_text()[-3000:]}")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

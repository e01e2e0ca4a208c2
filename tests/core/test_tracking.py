"""MLflow faults at the start of a run: a tracking server that is down or hangs is
reported in one line within seconds, and runs that start together on a new SQLite store
create it once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from tests.helpers.fault_proxy import FaultProxy
from tests.helpers.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mode", ["refuse", "hang"])
def test_an_unreachable_tracking_server_is_one_line_within_seconds(tmp_path, mode):
    """Was: 4-5 minutes of HTTP retries inside a step, then a 120-line traceback."""
    with FaultProxy(("127.0.0.1", free_port()), mode) as proxy:
        proxy.fail()
        started = time.monotonic()
        result = CliRunner().invoke(main, ["run", "--tracking-uri", proxy.url, "--output-dir", str(tmp_path / "out")])
        elapsed = time.monotonic() - started
    assert result.exit_code == 1
    assert (
        result.output.strip().splitlines()[-1].startswith(f"Error: MLflow tracking server {proxy.url} does not answer")
    )
    assert "Traceback" not in result.output
    assert elapsed < 30
    assert not (tmp_path / "out").exists()  # no step started


CREATE_STORE = """
import sys
from components.core.tracking import ensure_store, pipeline_run
ensure_store(sys.argv[1])
pipeline_run(sys.argv[1], "race", "run-" + sys.argv[2], "kfp-" + sys.argv[2])
"""


def test_runs_starting_together_on_a_new_sqlite_store_create_it_once(tmp_path):
    """Was: one of two first runs failed in MLflow's schema migration ("Online migration
    expected to match one row", or "duplicate column name: step")."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [
        subprocess.Popen([sys.executable, "-c", CREATE_STORE, uri, str(i)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    errors = [p.communicate(timeout=180)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(e[-1500:] for e in errors)
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(uri).get_experiment_by_name("race")
    assert len(MlflowClient(uri).search_runs([experiment.experiment_id])) == 4

"""Transient failures retried, permanent ones not: a step that fails each way, its command
made by pipeline.retries, run by the real KFP local runner (the same shell script a
cluster's pod runs)."""

from pathlib import Path

import pytest
from kfp import dsl, local

from pipeline.retries import backoff_seconds, retry_transient


def flaky_step(counter: str, failures: int, kind: str) -> int:
    """Fails its first ``failures`` attempts, as ``kind`` says; counts attempts in a file."""
    from pathlib import Path

    from components.core.errors import Unavailable, UserError, user_errors

    path = Path(counter)
    attempt = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(attempt))
    with user_errors():
        if attempt <= failures and kind == "transient":
            raise Unavailable(f"MLflow tracking server does not answer (attempt {attempt})")
        if attempt <= failures:
            raise UserError(f"split: too few images of class nevus (attempt {attempt})")
        if attempt <= failures + 1 and kind == "bug":
            raise KeyError("a bug")
    return attempt


def run_flaky(tmp_path: Path, failures: int, kind: str, retries: int = 2) -> tuple[int, bool]:
    """(attempts made, whether the task succeeded)."""
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"), raise_on_error=False
    )
    op = retry_transient(dsl.component(flaky_step, install_kfp_package=False), retries, "1s")
    counter = tmp_path / "attempts"
    task = op(counter=str(counter), failures=failures, kind=kind)
    return int(counter.read_text()), "Output" in task.outputs


@pytest.mark.parametrize(
    "failures, kind, attempts, succeeded",
    [
        (2, "transient", 3, True),  # two outages, then it works: retried, after 1 s and 2 s
        (5, "transient", 3, False),  # an outage longer than the retries: 1 + 2 attempts, then fails
        (1, "permanent", 1, False),  # a user's mistake: never retried
        (0, "bug", 1, False),  # a bug (traceback, exit 1): never retried
    ],
)
def test_a_step_is_retried_only_after_a_transient_failure(tmp_path, failures, kind, attempts, succeeded):
    """Was: KFP's retry policy on every network step retried any failure (a bad config
    three times, with 30 s, 60 s, 120 s of backoff)."""
    assert run_flaky(tmp_path, failures, kind) == (attempts, succeeded)


def test_no_retries_leaves_the_command_as_kfp_made_it():
    plain = dsl.component(flaky_step, install_kfp_package=False)
    command = list(plain.component_spec.implementation.container.command)
    same = retry_transient(dsl.component(flaky_step, install_kfp_package=False), 0, "30s")
    assert same.component_spec.implementation.container.command == command


def test_backoff_durations_as_kfp_reads_them():
    assert [backoff_seconds(d) for d in ("30s", "2m", "1h")] == [30, 120, 3600]

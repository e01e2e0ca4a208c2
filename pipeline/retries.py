"""Retries of transient failures only, compiled into a step's command.

A step ends with components.core.errors.EXIT_TRANSIENT (75) when something it needs did
not answer, and with another status when a retry would fail the same way (a bad config,
bad data, a bug). KFP 2.17's retry policy (``PipelineTask.set_retry``: count and backoff,
nothing else in the IR's RetryPolicy) becomes an Argo retryStrategy that retries every
non-zero exit; Argo's ``retryStrategy.expression`` (``lastRetry.exitCode``) is not
reachable from KFP's IR in any KFP release. So the pipeline sets no KFP retry policy,
and the step's own command, the shell script KFP runs in the pod, runs the Python
executor again after exit 75 with exponential backoff, and passes any other exit status
through at once.
"""

from __future__ import annotations

from kfp.dsl import structures

from components.core.errors import EXIT_TRANSIENT

# In the line of KFP's lightweight-component script that runs the step's Python function.
EXECUTOR = "python3 -m kfp.dsl.executor_main"


def backoff_seconds(duration: str) -> int:
    """``cluster.retry_backoff`` ("30s", "2m", "1h") in seconds, as KFP reads durations."""
    return int(structures.convert_duration_to_seconds(duration))


def retry_loop(run: str, retries: int, backoff_s: int) -> str:
    """Shell that runs ``run``, and again up to ``retries`` times while it exits
    EXIT_TRANSIENT, waiting ``backoff_s``, then twice as long each time."""
    return (
        f"attempt=0; delay={backoff_s}\n"
        f"while :; do\n"
        f"  status=0\n"
        f"  {run} || status=$?\n"
        f'  if [ "$status" -ne {EXIT_TRANSIENT} ] || [ "$attempt" -ge {retries} ]; then exit "$status"; fi\n'
        f"  attempt=$((attempt + 1))\n"
        f'  echo "transient failure (exit {EXIT_TRANSIENT}): attempt $((attempt + 1)) of {retries + 1} '
        f'in ${{delay}}s" >&2\n'
        f'  sleep "$delay"; delay=$((delay * 2))\n'
        f"done\n"
    )


def retry_transient(component, retries: int, backoff: str):
    """The component, its command retrying transient failures (none when ``retries`` is 0)."""
    if retries == 0:
        return component
    container = component.component_spec.implementation.container
    lines = container.command[2].split("\n")
    (index,) = [i for i, line in enumerate(lines) if EXECUTOR in line]
    lines[index] = retry_loop(lines[index].strip(), retries, backoff_seconds(backoff))
    container.command[2] = "\n".join(lines)
    return component

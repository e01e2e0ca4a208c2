"""How a step ends when it cannot do its work: a user's mistake (bad data, bad config) with
one line, never a traceback; an outage of something it needs (the data source, the MLflow
tracking server or registry) with one line and an exit status that says a later attempt
may work, so that the cluster retries only those (pipeline/retries.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

# The step's process exit status: a permanent failure, which a retry would repeat ...
EXIT_PERMANENT = 2
# ... and a transient one (sysexits.h EX_TEMPFAIL: "try again later").
EXIT_TRANSIENT = 75
# MLflow's REST client words every failure to reach the server (refused, timed out, 5xx
# after its own retries) as "API request to <url> failed with ..." (mlflow.utils.rest_utils).
MLFLOW_UNREACHABLE = "API request to "
MLFLOW_TRANSIENT_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"})
# Transport errors of the HTTP clients under MLflow and google-cloud-storage, by name, so
# that this module imports neither.
TRANSIENT_TRANSPORT_ERRORS = frozenset(
    {
        "requests.exceptions.ConnectionError",
        "requests.exceptions.Timeout",
        "urllib3.exceptions.MaxRetryError",
        "urllib3.exceptions.NewConnectionError",
        "google.api_core.exceptions.ServiceUnavailable",
        "google.api_core.exceptions.TooManyRequests",
        "google.api_core.exceptions.InternalServerError",
    }
)


class UserError(ValueError):
    """A problem the user can fix; its message is shown as is."""


class Unavailable(UserError):
    """Something the step needs did not answer (source, tracking server, registry); the
    same step may work later. Its message is shown as is."""


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is an outage rather than a mistake: worth another attempt."""
    if isinstance(exc, Unavailable):
        return True
    names = {f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__}
    if names & TRANSIENT_TRANSPORT_ERRORS:
        return True
    if "mlflow.exceptions.MlflowException" in names:
        message = str(getattr(exc, "message", exc))
        return message.startswith(MLFLOW_UNREACHABLE) or getattr(exc, "error_code", "") in MLFLOW_TRANSIENT_CODES
    return False


def last_line(exc: BaseException) -> str:
    """The last non-empty line of an error's message (its type's name when it has none)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


@contextmanager
def user_errors() -> Iterator[None]:
    """A step's body: a UserError ends it with one line and EXIT_PERMANENT, an outage with
    one line and EXIT_TRANSIENT; any other exception (a bug) keeps its traceback, exit 1,
    and is not retried either."""
    try:
        yield
    except Exception as exc:
        transient = is_transient(exc)
        if not transient and not isinstance(exc, UserError):
            raise
        message = str(exc) if isinstance(exc, UserError) else last_line(exc)
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_TRANSIENT if transient else EXIT_PERMANENT) from None

"""User mistakes (bad data, bad config) end a step with one line, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(ValueError):
    """A problem the user can fix; its message is shown as is."""


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None

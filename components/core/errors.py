"""User mistakes (bad data, bad config) end a step with one line, never a traceback; so
does a full disk, which a person fixes too."""

from __future__ import annotations

import errno
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(ValueError):
    """A problem the user can fix; its message is shown as is."""


class DiskFull(UserError):
    """No space left where a step writes: where, and how much is free there."""

    def __init__(self, where: str | Path):
        super().__init__(disk_full_message(where))


# TensorFlow's and h5py's errors carry the OS's words, not an errno.
_DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, Exception) and any(words in str(exc) for words in _DISK_FULL_WORDS)


def disk_full_message(where: str | Path) -> str:
    """``the disk is full (no space left on device) writing <where>: 0 B free of 8 KiB``."""
    folder = Path(where)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        usage = shutil.disk_usage(folder)
        space = f": {_size(usage.free)} free of {_size(usage.total)} there"
    except OSError:
        space = ""
    return f"the disk is full (no space left on device) writing {where}{space}; free some space or use a larger disk"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@contextmanager
def user_errors(writing: str | Path | None = None) -> Iterator[None]:
    """A UserError, or a full disk (said to be ``writing`` when the error does not name
    a file), ends the step with one ``error:`` line and exit status 2."""
    try:
        yield
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        where = writing or getattr(exc, "filename", None) or "this step's output"
        print(f"error: {disk_full_message(where)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None

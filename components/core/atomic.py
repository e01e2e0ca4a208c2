"""Outputs that appear under their final name only once complete, so a killed or
retried step never leaves a half-written file or folder that looks finished; a step
that fails (a full disk) removes what it had written under the scratch name."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from components.core.errors import DiskFull, is_disk_full

PARTIAL_SUFFIX = ".partial"


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        tmp.write_text(text)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


@contextmanager
def output_dir(path: str | Path) -> Iterator[Path]:
    """Yield a scratch folder next to ``path``; rename it to ``path`` when the block
    succeeds, remove it when it fails (a full disk: DiskFull, naming ``path``)."""
    final = Path(path)
    tmp = final.with_name(final.name + PARTIAL_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):
            raise DiskFull(final) from None
        raise
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)

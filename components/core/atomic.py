"""Outputs that appear under their final name only once complete, so a killed or
retried step never leaves a half-written file or folder that looks finished."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    tmp.write_text(text)
    tmp.replace(path)


@contextmanager
def output_dir(path: str | Path) -> Iterator[Path]:
    """Yield a scratch folder next to ``path``; rename it to ``path`` when the block succeeds."""
    final = Path(path)
    tmp = final.with_name(final.name + PARTIAL_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)

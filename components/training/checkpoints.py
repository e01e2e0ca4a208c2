"""Where a local run's train step keeps its checkpoints, so that the same run started
again finds them and resumes, and what it finds there. A training holds its folder
locked: an identical run in the same output folder at the same time trains in a folder of
its own (``<hash>-2``), and neither removes the other's."""

import fcntl
import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from components.core import filenames
from components.core.settings import TrainConfig
from components.data import tfrecords
from components.training.callbacks import EPOCH_LOG_FILE, read_epoch_log
from components.training.trained_model import HISTORY_FILE


def checkpoint_dir(
    checkpoint_root: str | Path,
    normalized_dir: str | Path,
    augmented_dir: str | Path | None,
    tc: TrainConfig,
    data_fingerprint: str,
) -> Path:
    """Where a training of this data with these settings keeps its checkpoints, under
    ``checkpoint_root``: the same folder for the same run started again, so it resumes."""
    identity = [
        data_fingerprint,
        json.dumps(tc.to_dict(), sort_keys=True),
        (Path(normalized_dir) / tfrecords.META_FILE).read_text(),
    ]
    if augmented_dir and (Path(augmented_dir) / filenames.AUGMENT_POLICY).is_file():
        identity.append((Path(augmented_dir) / filenames.AUGMENT_POLICY).read_text())
    return Path(checkpoint_root) / hashlib.sha256("\n".join(identity).encode()).hexdigest()[:16]


LOCK_FILE = ".lock"


def _try_lock(folder: Path):
    """An open lock file of ``folder`` held exclusively, or None when another process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


@contextmanager
def claimed(folder: Path) -> Iterator[Path]:
    """``folder`` (checkpoint_dir's), or ``<folder>-2``, ``-3``... the first that no live
    training holds, locked for the block: a run killed earlier held none, so the same run
    started again gets its own folder back and resumes."""
    copy = 1
    candidate = folder
    while (handle := _try_lock(candidate)) is None:
        copy += 1
        candidate = folder.with_name(f"{folder.name}-{copy}")
    try:
        yield candidate
    finally:
        handle.close()


def remove_unless_held(folder: Path) -> bool:
    """Remove a finished run's checkpoint folder, unless a training holds it now (an
    identical run that started after this one ended and is reusing it)."""
    handle = _try_lock(folder) if folder.is_dir() else None
    if handle is None:
        return False
    with handle:
        shutil.rmtree(folder, ignore_errors=True)
    return True


def progress_so_far(out: Path) -> str:
    """What an earlier, interrupted training left in ``out``, for the log ('' if nothing)."""
    if (out / HISTORY_FILE).is_file():
        return f"training finished earlier in {out}: reusing its model"
    logs = sorted(out.rglob(EPOCH_LOG_FILE))
    if not logs:
        return ""
    epochs = sum(len(read_epoch_log(log.parent)) for log in logs)
    return f"resuming training from epoch {epochs} ({epochs} epochs done in {out})"

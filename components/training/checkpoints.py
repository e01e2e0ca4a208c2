"""Where a local run's train step keeps its checkpoints, so that the same run started
again finds them and resumes, and what it finds there."""

import hashlib
import json
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


def progress_so_far(out: Path) -> str:
    """What an earlier, interrupted training left in ``out``, for the log ('' if nothing)."""
    if (out / HISTORY_FILE).is_file():
        return f"training finished earlier in {out}: reusing its model"
    logs = sorted(out.rglob(EPOCH_LOG_FILE))
    if not logs:
        return ""
    epochs = sum(len(read_epoch_log(log.parent)) for log in logs)
    return f"resuming training from epoch {epochs} ({epochs} epochs done in {out})"

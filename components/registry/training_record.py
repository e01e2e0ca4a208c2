"""What a model learned from, carried with it: the md5s and group (lesion/patient) ids of
the images it trained and validated on, its classes and whether they were synthetic, as
one JSON artifact of the MLflow run that logged the model. The champion gate reads the
champion's to leave out of the comparison every test image either model has seen."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from components.core.errors import UserError

ARTIFACT = "training_record.json"
LEARNED_FROM = ("train", "val")


@dataclass(frozen=True)
class TrainingRecord:
    classes: list[str]
    synthetic: bool
    md5s: list[str]  # sorted, of every train and validation image
    groups: list[str]  # sorted lesion/patient ids of those images ('' left out)
    fingerprint: str  # sha256 of the md5s: equal records, equal fingerprints

    @classmethod
    def of(cls, normalized_dir: str | Path) -> TrainingRecord | None:
        """The record of a model trained on ``normalized_dir``; None for a folder without the
        images file (written before it existed)."""
        from components.data import tfrecords

        images = tfrecords.read_images(normalized_dir)
        if images is None:
            return None
        meta = tfrecords.read_meta(normalized_dir)
        learned = [images["subsets"].get(s, {}) for s in LEARNED_FROM]
        md5s = sorted({m for subset in learned for m in subset.get("md5", [])})
        groups = sorted({g for subset in learned for g in subset.get("group_id", []) if g})
        return cls(
            list(meta["classes"]),
            bool(meta.get("synthetic")),
            md5s,
            groups,
            hashlib.sha256("\n".join(md5s).encode()).hexdigest(),
        )


def log_record(tracking_uri: str, run_id: str, record: TrainingRecord) -> None:
    """The record as the artifact ``training_record.json`` of the model's MLflow run."""
    from components.core import tracking

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, ARTIFACT)
        path.write_text(json.dumps(asdict(record)))
        tracking.client(tracking_uri).log_artifact(run_id, str(path))


def log_record_of_version(tracking_uri: str, model_name: str, version: str, record: TrainingRecord) -> None:
    """The record into the run that logged version ``version`` of ``model_name`` (none: nothing)."""
    from components.core import tracking

    run_id = tracking.client(tracking_uri).get_model_version(model_name, version).run_id
    if run_id:
        log_record(tracking_uri, run_id, record)


class RecordUnavailable(UserError):
    """The champion's run or its record could not be read now (a timeout, a server error,
    a refusal): not the same as having none, so the comparison cannot be made yet."""


def load_record(tracking_uri: str, run_id: str) -> tuple[TrainingRecord | None, str]:
    """(the record logged in ``run_id``, ''), or (None, why there is none): no run, a
    deleted or purged run, a run logged before records. Any other failure to read it
    raises RecordUnavailable.

    The record is listed, then downloaded, through the run's own artifact repository:
    MlflowClient.download_artifacts (a runs:/ URI) reports every failure, timeouts and
    server errors included, as RESOURCE_DOES_NOT_EXIST (mlflow 3.17), so "not there" is
    read from the listing, where a missing file is simply absent."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from components.core import tracking

    if not run_id:
        return None, "it was registered without an MLflow run"
    try:
        run = tracking.client(tracking_uri).get_run(run_id)
    except MlflowException as exc:
        if tracking.is_not_found(exc):
            return None, f"its MLflow run {run_id} was purged"
        raise RecordUnavailable(f"cannot read its MLflow run {run_id} now: {_first_line(exc)}") from None
    if run.info.lifecycle_stage == "deleted":
        return None, f"its MLflow run {run_id} was deleted"
    try:
        repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=tracking_uri)
        if ARTIFACT not in {f.path for f in repo.list_artifacts()}:
            return None, f"its MLflow run {run_id} has no {ARTIFACT} (logged before records)"
        with tempfile.TemporaryDirectory() as folder:
            return TrainingRecord(**json.loads(Path(repo.download_artifacts(ARTIFACT, folder)).read_text())), ""
    except (MlflowException, OSError) as exc:  # requests' errors are OSErrors
        raise RecordUnavailable(f"cannot read {ARTIFACT} of its MLflow run {run_id} now: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    return (getattr(exc, "message", "") or str(exc) or type(exc).__name__).splitlines()[0]


@dataclass(frozen=True)
class FairTestImages:
    """The test images neither model trained or validated on, and how many were left out why."""

    keep: np.ndarray  # bool, one per test image in shard order
    left_out: dict[str, int]  # reason -> images

    def describe(self) -> str:
        kept, total = int(self.keep.sum()), len(self.keep)
        why = "; ".join(f"{n} {reason}" for reason, n in self.left_out.items() if n)
        return f"{kept} of {total} test images compared" + (f", left out: {why}" if why else "")


def fair_test_images(normalized_dir: str | Path, uris: list[str], records: dict[str, TrainingRecord]) -> FairTestImages:
    """Of the test images ``uris`` (shard order), those whose content (md5) and lesion or
    patient no model in ``records`` (who -> record) trained or validated on."""
    from components.data import tfrecords

    test = tfrecords.read_images(normalized_dir)["subsets"].get("test", {})
    md5_of = dict(zip(test.get("uri", []), test.get("md5", [])))
    group_of = dict(zip(test.get("uri", []), test.get("group_id", [])))
    keep = np.ones(len(uris), bool)
    left_out = {}
    for who, record in records.items():
        md5s, groups = set(record.md5s), set(record.groups)
        seen = np.array([md5_of.get(u) in md5s or group_of.get(u, "") in groups for u in uris], bool)
        left_out[f"{who} trained or validated on (the image or its lesion)"] = int((seen & keep).sum())
        keep &= ~seen
    return FairTestImages(keep, left_out)

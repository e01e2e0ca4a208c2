"""The run's data as MLflow dataset inputs, which the run page's "Datasets" panel lists:
the source (its ingested files) and the train/val/test subsets, each named after the
source, with the data fingerprint as its digest (the retraining gate's; a subset's is the
same over its own files), the source's URI, and its images per class as profile.

MLflow keeps a digest of at most 36 characters: the digest is the fingerprint's first 12
hex digits, as the console prints it, and the profile holds it whole. Only the report
step imports this module (it imports mlflow, which the data steps never load)."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import mlflow
import pandas as pd
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset

from components.core import filenames
from components.data.listing import content_fingerprint

# MLflow's dataset context per subset (the UI shows it as a tag beside the dataset).
CONTEXTS = {"train": "train", "val": "validation", "test": "test"}
SOURCE_CONTEXT = "source"


class SourceUri(DatasetSource):
    """Where the data was read from, as the user named it: a folder, a zip, a CSV, a gs://
    or synthetic:// URI. Type "external": the MLflow UI shows its URL as given."""

    def __init__(self, uri: str):
        self.uri = uri

    @staticmethod
    def _get_source_type() -> str:
        return "external"

    def load(self, dst_path=None):
        raise NotImplementedError("lesion-pipeline reads its sources itself (components.data.sources)")

    @staticmethod
    def _can_resolve(raw_source) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source) -> SourceUri:
        return cls(str(raw_source))

    def to_dict(self) -> dict:
        return {"url": self.uri}

    @classmethod
    def from_dict(cls, source_dict: dict) -> SourceUri:
        return cls(source_dict["url"])


class CountedDataset(MetaDataset):
    """Ingested files (rows with md5 and label) of one source: digest and profile from them."""

    def __init__(self, name: str, source_uri: str, rows: pd.DataFrame):
        self.fingerprint = content_fingerprint(rows)
        self.counts = {str(k): int(v) for k, v in rows.label.value_counts().sort_index().items()}
        super().__init__(SourceUri(source_uri), name=name, digest=self.fingerprint[:12])

    @property
    def profile(self) -> dict:
        return {"images": sum(self.counts.values()), "classes": self.counts, "fingerprint": self.fingerprint}

    def to_dict(self) -> dict[str, str]:
        return super().to_dict() | {"profile": json.dumps(self.profile)}


def source_name(source_uri: str) -> str:
    """A short name for the source: its last path part (``ham10000``), or ``synthetic``."""
    if source_uri.startswith("synthetic://"):
        return "synthetic"
    return PurePosixPath(source_uri.rstrip("/")).name or source_uri


def data_inputs(manifest_dir: str | Path, splits_dir: str | Path | None = None) -> list[tuple[CountedDataset, str]]:
    """(dataset, context) of the source and, given the split step's output, of each subset."""
    source_uri = json.loads((Path(manifest_dir) / filenames.INGEST_REPORT).read_text())["source"]
    name = source_name(source_uri)
    manifest = pd.read_parquet(Path(manifest_dir) / filenames.MANIFEST, columns=["md5", "label", "status"])
    out = [(CountedDataset(name, source_uri, manifest[manifest.status == "ingested"]), SOURCE_CONTEXT)]
    if splits_dir is not None:
        splits = pd.read_parquet(Path(splits_dir) / filenames.SPLITS, columns=["md5", "label", "subset"])
        for subset, context in CONTEXTS.items():
            out.append((CountedDataset(f"{name}-{subset}", source_uri, splits[splits.subset == subset]), context))
    return out


def log_data_inputs(manifest_dir: str | Path, splits_dir: str | Path | None = None) -> None:
    """Log data_inputs into the active MLflow run (tracking.logging_into)."""
    for dataset, context in data_inputs(manifest_dir, splits_dir):
        mlflow.log_input(dataset, context=context)

"""An ingest partition: the whole source listed and labelled, then every
``num_partitions``-th file decoded and checked, so that several tasks share the decoding;
saved as files for the merge task, and their thumbnails read back by listing position."""

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.core import filenames
from components.core.settings import DataConfig
from components.data.ingest.labelling import IngestError, detect_format, label_files, read_csvs, refuse_too_large
from components.data.ingest.validation import THUMB_SIDE, PartitionThumbnails, validate
from components.data.listing import listing_digest
from components.data.sources import open_source
from components.data.sources.base import Source


@dataclass
class IngestPartition:
    """One partition's share of ingest: every ``num_partitions``-th file of the listing
    decoded and checked. ``rows`` are its files' manifest rows so far (index: the file's
    position in the whole listing), ``thumbnails`` its thumbnails on disk (row ``k`` for
    ``rows``' ``k``-th row), and ``meta`` what every partition sees alike (the listing's
    digest, format, label counts)."""

    rows: pd.DataFrame
    thumbnails: PartitionThumbnails
    meta: dict
    scratch: tempfile.TemporaryDirectory | None = None  # holds ``thumbnails`` when no folder was given


def ingest_partition(
    source_uri: str,
    cfg: DataConfig,
    partition_index: int = 0,
    num_partitions: int = 1,
    folder: str | Path | None = None,
) -> IngestPartition:
    """List and label the whole source (cheap: no file is opened but the CSVs), then
    decode and check partition ``partition_index`` of ``num_partitions``: the files at
    listing positions ``partition_index``, ``partition_index + num_partitions``, ...
    Thumbnails go to ``folder`` (default: a temporary folder that lives as long as the
    partition)."""
    if not 0 <= partition_index < num_partitions:
        raise ValueError(f"partition {partition_index} of {num_partitions}")
    source: Source = open_source(source_uri, cfg)
    files = source.list_files()
    if not files:
        raise IngestError(f"no files found in {source.root}")
    csvs, csv_md5s = ({}, {}) if source.synthetic else read_csvs(files, cfg.max_file_bytes)
    fmt = "folders" if source.synthetic else detect_format(csvs, cfg.format)
    df, label_rows_without_image = label_files(files, fmt, csvs, cfg.class_map)
    refuse_too_large(df, cfg.max_file_bytes)
    for column, empty in (
        ("md5", ""),
        ("phash", ""),
        ("image_format", ""),
        ("width", 0),
        ("height", 0),
        ("duplicate_of", ""),
    ):
        df[column] = empty
    meta = {
        "partition_index": partition_index,
        "num_partitions": num_partitions,
        "source_root": source.root,
        "synthetic": source.synthetic,
        "format": fmt,
        "files_found": len(df),
        "listing_digest": listing_digest(files, csv_md5s),
        "counts_before": {k: int(v) for k, v in df[df.label != ""].label.value_counts().sort_index().items()},
        "label_rows_without_image": int(label_rows_without_image),
    }
    del files, csvs
    rows = df.iloc[partition_index::num_partitions].copy()
    del df
    scratch = tempfile.TemporaryDirectory(prefix="ingest-partition-") if folder is None else None
    thumbnails = PartitionThumbnails(scratch.name if scratch else folder)
    validate(rows, cfg, thumbnails)
    return IngestPartition(rows, thumbnails, meta, scratch)


def save_partition(partition: IngestPartition, output_dir: str | Path) -> None:
    """A partition as files, for the merge task: rows, thumbnails, meta (written last: a
    folder without it is incomplete). Nothing is copied when the partition was made there."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if partition.thumbnails.folder.resolve() != out.resolve():
        shutil.copyfile(partition.thumbnails.path, out / filenames.INGEST_PARTITION_THUMBS)
    partition.rows.rename_axis("position").reset_index().to_parquet(out / filenames.INGEST_PARTITION_ROWS, index=False)
    (out / filenames.INGEST_PARTITION_META).write_text(json.dumps(partition.meta))


def load_partition(partition_dir: str | Path) -> IngestPartition:
    folder = Path(partition_dir)
    meta_file = folder / filenames.INGEST_PARTITION_META
    if not meta_file.exists():
        raise IngestError(f"ingest: incomplete partition in {folder}")
    rows = pd.read_parquet(folder / filenames.INGEST_PARTITION_ROWS).set_index("position")
    rows.index.name = None
    return IngestPartition(rows, PartitionThumbnails(folder), json.loads(meta_file.read_text()))


class MergedThumbnails:
    """The partitions' thumbnails by listing position, read from their files when asked."""

    def __init__(self, partitions: list[IngestPartition], files_found: int):
        self.partitions = partitions
        self.partition = np.full(files_found, -1, dtype=np.int32)
        self.row = np.zeros(files_found, dtype=np.int64)
        for k, p in enumerate(partitions):
            positions = p.rows.index.to_numpy()
            self.partition[positions], self.row[positions] = k, np.arange(len(positions))

    def __getitem__(self, positions) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        out = np.empty((len(positions), THUMB_SIDE, THUMB_SIDE, 3), dtype=np.uint8)
        for k, p in enumerate(self.partitions):
            mine = np.flatnonzero(self.partition[positions] == k)
            if len(mine):
                out[mine] = p.thumbnails.read(self.row[positions[mine]])
        return out

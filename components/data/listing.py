"""The source's listing as ingest's cache key (``list_source_step``, the pipeline's first
step), and the ingested data's fingerprint for the retraining gate.

- ``listing_digest``: every listed file's name, size and version (what the source gives
  without reading the file: a local file's modification time, a zip member's CRC-32, a
  GCS object's generation and md5) and the md5 of every CSV, read since label files are
  small and a same-length edit (``bkl`` -> ``mel``) keeps a file's size and, restored
  with its old time, its modification time.
- ``list_source_step`` (never cached) gives ``source_listing_digest``: ingest's KFP cache
  key on the cluster, so ingest is served from the cache only while the source holds
  the same files and labels, and a scheduled run never reuses a stale manifest. Each
  ingest partition records the same digest, so the merge sees a source changed mid-way.
- ``data_fingerprint``: the ingested content, from the manifest (md5 and label of every
  ingested file). The retraining gate compares it with the champion's.
"""

import hashlib
from pathlib import Path

from components.core import filenames
from components.core.settings import DataConfig


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(lines)).encode("utf-8")).hexdigest()


def listing_digest(files: list, csv_md5s: dict[str, str]) -> str:
    """sha256 of ``files`` (SourceFile: relpath, size, version) and the CSVs' md5s by relpath."""
    return _digest(
        [f"{f.relpath}\t{f.size}\t{f.version}" for f in files]
        + [f"{relpath}\tmd5\t{md5}" for relpath, md5 in csv_md5s.items()]
    )


def source_listing_digest(source_uri: str, cfg: DataConfig) -> str:
    """listing_digest of the source now: no file is read but its CSVs, as ingest reads them."""
    from components.data.ingest.labelling import read_csvs
    from components.data.sources import open_source

    source = open_source(source_uri, cfg)
    files = source.list_files()
    return listing_digest(files, {} if source.synthetic else read_csvs(files, cfg.max_file_bytes)[1])


def data_fingerprint(manifest_dir: str | Path) -> str:
    """sha256 over the sorted ``md5<TAB>label`` lines of the ingested files: independent of
    file names, order and quarantined files; changes when any image or label does."""
    import pandas as pd

    df = pd.read_parquet(Path(manifest_dir) / filenames.MANIFEST, columns=["md5", "label", "status"])
    return content_fingerprint(df[df.status == "ingested"])


def content_fingerprint(rows) -> str:
    """data_fingerprint of some ingested rows (a DataFrame with md5 and label): a split's."""
    return _digest([f"{md5}\t{label}" for md5, label in zip(rows.md5, rows.label)])


def list_source_step(data_uri: str, data: dict) -> str:
    """KFP wrapper: the source listing's digest (never cached; ingest's cache key)."""
    from components.core.config_base import load_section
    from components.core.errors import user_errors
    from components.core.settings import DataConfig
    from components.data.listing import source_listing_digest

    with user_errors():
        return source_listing_digest(data_uri, load_section(DataConfig, data, "data."))

"""Two digests of the data a pipeline run sees.

- ``source_listing_digest``: the source's file names and sizes, read without opening a
  file. It is ingest's cache key on the cluster: ingest is cached only while the
  source lists the same files, so a scheduled run never reuses a stale manifest.
- ``data_fingerprint``: the ingested content, from the manifest (md5 and label of every
  ingested file). The retraining gate compares it with the champion's.
"""

import hashlib
from pathlib import Path

from components.core import filenames
from components.core.settings import DataConfig


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(lines)).encode("utf-8")).hexdigest()


def source_listing_digest(source_uri: str, cfg: DataConfig) -> str:
    from components.data.sources import open_source

    source = open_source(source_uri, cfg)
    return _digest([f"{f.relpath}\t{f.size}" for f in source.list_files()])


def data_fingerprint(manifest_dir: str | Path) -> str:
    """sha256 over the sorted ``md5<TAB>label`` lines of the ingested files: independent of
    file names, order and quarantined files; changes when any image or label does."""
    import pandas as pd

    df = pd.read_parquet(Path(manifest_dir) / filenames.MANIFEST, columns=["md5", "label", "status"])
    ingested = df[df.status == "ingested"]
    return _digest([f"{md5}\t{label}" for md5, label in zip(ingested.md5, ingested.label)])


def list_source_step(data_uri: str, data: dict) -> str:
    """KFP wrapper: the source listing's digest (never cached; ingest's cache key)."""
    from components.core.errors import user_errors
    from components.core.section import load_section
    from components.core.settings import DataConfig
    from components.data.listing import source_listing_digest

    with user_errors():
        return source_listing_digest(data_uri, load_section(DataConfig, data, "data."))

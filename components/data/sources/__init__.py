"""Where images come from: list a source's files and read any file by its URI.

Raw images are read from their source URIs by every step that needs pixels (ingest
to validate, normalize to write shards, predict/evaluate on external data); nothing
is copied between steps, and on a cluster each step runs in its own pod. So every URI
in a manifest must be readable anywhere by ``read_bytes``:

- a local path (or ``file://`` path): the folder is mounted where the steps run;
  symbolic links are followed only where they stay inside the source;
- ``gs://bucket/object``: read with google-cloud-storage, with retries;
- ``zip://<archive>!/<member>``: a member of a zip archive, read in place (never
  extracted); ``<archive>`` is a local path or a ``gs://`` URI, and a remote archive
  is downloaded once per process into a local cache;
- ``synthetic://...``: the generated demo set (components.data.synthetic).

A file that cannot be used is the file's problem: the caller quarantines it. A source
that does not answer is not: ``SourceUnavailable`` fails the step, so an outage never
turns into a smaller dataset.
"""

from __future__ import annotations

import hashlib
import threading
import zipfile
from pathlib import Path

from components.core.settings import DataConfig
from components.data import synthetic
from components.data.sources.base import (
    FileChanged,
    Source,
    SourceError,
    SourceFile,
    bounded_read,
    raise_if_storage_failed,
)
from components.data.sources.gcs import GCS_SCHEME, GcsSource, parse_gcs_uri, read_gcs
from components.data.sources.local import LocalFolderSource
from components.data.sources.zip_archive import ZIP_SCHEME, ZipSource, read_zip_member


class SyntheticSource(Source):
    synthetic = True

    def __init__(self, images_per_class: int, size: int, seed: int):
        self.root = f"{synthetic.SCHEME}{seed}/{size}"
        self._uris = synthetic.uris(images_per_class, size, seed)

    def list_files(self) -> list[SourceFile]:
        # relpath <class>/<file> makes the synthetic set a class-subfolder layout.
        return [SourceFile(uri=u, relpath="/".join(u.split("/")[-2:]), size=0) for u in self._uris]


# ---- entry points ------------------------------------------------------------


def open_source(uri: str, data: DataConfig | None = None) -> Source:
    """Open a data source named by the user. An empty URI is the synthetic dataset
    (drawn with ``data``'s synthetic settings); ``data``'s zip limits bound an archive."""
    data = data or DataConfig()
    if not uri or uri.startswith(synthetic.SCHEME):
        return SyntheticSource(data.synthetic_images_per_class, data.synthetic_image_size, data.seed)
    if uri.startswith(GCS_SCHEME):
        parse_gcs_uri(uri)
        if uri.lower().endswith(".zip"):
            return ZipSource(uri, data.zip_max_entries, data.zip_max_total_bytes)
        return GcsSource(uri)
    if "://" in uri and not uri.startswith("file://"):
        raise SourceError(f"unsupported data source {uri!r}: use a folder, a .zip or gs://bucket/prefix")
    path = Path(uri.removeprefix("file://")).expanduser()
    if path.is_dir():
        return LocalFolderSource(path)
    if not path.exists():
        resolved = "" if path.is_absolute() else f" (relative to the working folder: {path.absolute()})"
        raise SourceError(f"data source not found: {uri}{resolved}")
    if zipfile.is_zipfile(path):
        if path.suffix.lower() != ".zip":  # member URIs are cut at ".zip!/"
            raise SourceError(f"zip archive {uri} must be named *.zip")
        return ZipSource(str(path.resolve()), data.zip_max_entries, data.zip_max_total_bytes)
    raise SourceError(f"data source is neither a folder nor a zip archive: {uri}")


def read_bytes(uri: str, max_bytes: int | None = None, stop: threading.Event | None = None) -> bytes:
    """The bytes of any URI a manifest can hold, never more than ``max_bytes``.

    Raises OSError when this file cannot be read (FileTooLarge past ``max_bytes``), and
    SourceUnavailable when the source failed instead: after SOURCE_RETRY_SECONDS of
    retries, or sooner once ``stop`` is set (another read already failed for good), or
    at once for an I/O error of a mounted filesystem (base.STORAGE_ERRNOS).
    """
    if uri.startswith(synthetic.SCHEME):
        return synthetic.render_uri(uri)
    if uri.startswith(ZIP_SCHEME):
        return read_zip_member(uri, max_bytes)
    if uri.startswith(GCS_SCHEME):
        return read_gcs(uri, max_bytes, stop)
    try:
        with open(uri.removeprefix("file://"), "rb") as fh:
            return bounded_read(fh, max_bytes)
    except OSError as exc:
        raise_if_storage_failed(exc, uri)
        raise


def read_as_ingested(uri: str, md5: str, max_bytes: int, stop: threading.Event | None = None) -> bytes:
    """read_bytes of a file ingest recorded, held to what it recorded: never more than
    ``max_bytes`` (data.max_file_bytes: FileTooLarge), and the same bytes (FileChanged
    when the md5 is not ``md5``). A file grown or swapped since ingest is never used."""
    data = read_bytes(uri, max_bytes, stop)
    found = hashlib.md5(data).hexdigest()
    if found != md5:
        raise FileChanged(f"its md5 is {found}, not the {md5} ingest recorded")
    return data

"""Step output folders to and from ``gs://bucket/prefix`` (the training job's inputs and
outputs on a cluster)."""

from __future__ import annotations

from pathlib import Path

from components.data.sources.gcs import (
    GCS_SCHEME,
    GCS_TIMEOUT_S,
    GcsSource,
    gcs_blob,
    gcs_errors,
    gcs_retry,
    parse_gcs_uri,
    read_gcs,
)

# Step outputs written to gs:// (upload_folder) are worth waiting longer for.
UPLOAD_RETRY_SECONDS = 120.0


def download_folder(uri: str, dest: str | Path) -> Path:
    """A step output folder (local path or gs://bucket/prefix) as a local folder."""
    if not uri.startswith(GCS_SCHEME):
        return Path(uri)
    dest = Path(dest)
    for f in GcsSource(uri).list_files():
        target = dest / f.relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_gcs(f.uri, None, None))
    return dest


def upload_folder(local: str | Path, uri: str) -> None:
    """Copy every file under ``local`` to ``gs://bucket/prefix`` (same relative paths)."""
    bucket, prefix = parse_gcs_uri(uri)
    for path in sorted(Path(local).rglob("*")):
        if path.is_file():
            name = f"{prefix.rstrip('/')}/{path.relative_to(local).as_posix()}".lstrip("/")
            try:
                gcs_blob(bucket, name).upload_from_filename(
                    str(path), retry=gcs_retry(UPLOAD_RETRY_SECONDS), timeout=GCS_TIMEOUT_S
                )
            except gcs_errors() as exc:
                raise OSError(f"cannot write gs://{bucket}/{name}: {exc}") from None

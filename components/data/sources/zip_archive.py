"""Zip archives as a source: ``zip://<archive>!/<member>`` URIs, members read in place
(never extracted); a gs:// archive is downloaded once per process into a local cache."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import zipfile
from pathlib import Path, PurePosixPath

from components.data.sources.base import Source, SourceError, SourceFile, bounded_read, raise_if_storage_failed
from components.data.sources.gcs import GCS_SCHEME, gcs_blob, gcs_call, parse_gcs_uri

ZIP_SCHEME = "zip://"
# A zip member URI is split at the first ".zip!/": archive names must end in .zip.
ZIP_MEMBER_SEPARATOR = "!/"


def zip_member_uri(archive: str, member: str) -> str:
    return f"{ZIP_SCHEME}{archive}{ZIP_MEMBER_SEPARATOR}{member}"


def parse_zip_uri(uri: str) -> tuple[str, str]:
    """``zip://<archive>.zip!/<member>`` -> (archive, member)."""
    body = uri[len(ZIP_SCHEME) :]
    cut = body.lower().find(".zip" + ZIP_MEMBER_SEPARATOR)
    if cut < 0:
        raise ValueError(f"not a zip member URI (zip://<archive>.zip!/<member>): {uri}")
    return body[: cut + 4], body[cut + 4 + len(ZIP_MEMBER_SEPARATOR) :]


def unsafe_member_reason(name: str) -> str:
    """Why a zip entry name must not be used (absolute or escaping the archive root), or ''."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")):
        return "absolute path in zip archive refused"
    if ".." in path.parts:
        return "'..' in zip entry path refused (would escape the archive's folder)"
    return ""


_archive_lock = threading.Lock()
_open_archives: dict[str, zipfile.ZipFile] = {}


def _local_archive(archive: str, max_bytes: int | None) -> Path:
    """A local path for ``archive``: itself, or a cached download of a gs:// archive. The
    cache is keyed by the object's generation and md5, so a re-upload is downloaded anew;
    an object over ``max_bytes`` (data.zip_max_total_bytes) is refused by the size its
    metadata gives, before a byte of it is downloaded."""
    if not archive.startswith(GCS_SCHEME):
        return Path(archive.removeprefix("file://"))
    blob = gcs_blob(*parse_gcs_uri(archive))
    gcs_call(archive, lambda timeout: blob.reload(retry=None, timeout=timeout))
    if max_bytes is not None and (blob.size or 0) > max_bytes:
        raise SourceError(f"{archive} is {blob.size} bytes, over data.zip_max_total_bytes={max_bytes}: not downloaded")
    cache = Path(os.environ.get("LESION_CACHE_DIR") or Path(tempfile.gettempdir(), "lesionpipe-cache"))
    key = f"{archive}#{blob.generation}/{blob.md5_hash or blob.crc32c}"
    target = cache / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.zip"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.{threading.get_ident()}.part")
        try:
            # That generation only: a re-upload during the download fails it (HTTP 412).
            gcs_call(
                archive,
                lambda timeout: blob.download_to_filename(
                    str(partial), retry=None, timeout=timeout, if_generation_match=blob.generation
                ),
            )
            partial.replace(target)  # atomic: concurrent readers see a whole file or none
        finally:
            partial.unlink(missing_ok=True)
    return target


def _open_archive(archive: str, max_bytes: int | None = None) -> zipfile.ZipFile:
    """``archive`` opened once per process; ``max_bytes`` bounds a gs:// download (the
    source's listing passes data.zip_max_total_bytes; a step that only reads members of an
    archive it did not list has no such setting)."""
    with _archive_lock:
        if archive not in _open_archives:
            try:
                _open_archives[archive] = zipfile.ZipFile(_local_archive(archive, max_bytes))
            except zipfile.BadZipFile as exc:
                raise SourceError(f"{archive} is not a readable zip archive: {exc}") from None
            except FileNotFoundError:
                raise SourceError(f"zip archive not found: {archive}") from None
            except OSError as exc:
                raise_if_storage_failed(exc, archive)
                raise SourceError(f"cannot open the zip archive {archive}: {exc.strerror or exc}") from None
        return _open_archives[archive]


def read_zip_member(uri: str, max_bytes: int | None) -> bytes:
    archive, member = parse_zip_uri(uri)
    if unsafe_member_reason(member):
        raise PermissionError(f"unsafe zip member refused: {member}")
    try:
        # ZipFile reads through a lock-protected shared file: safe from threads. It stops
        # at the declared size and checks the CRC, so a lying entry cannot inflate.
        with _open_archive(archive).open(member) as fh:
            return bounded_read(fh, max_bytes)
    except KeyError:
        raise FileNotFoundError(f"no member {member!r} in {archive}") from None
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
        # RuntimeError: encrypted entry; NotImplementedError: unsupported compression.
        raise OSError(f"unreadable zip member: {exc}") from None
    except OSError as exc:
        raise_if_storage_failed(exc, uri)
        raise


class ZipSource(Source):
    """A zip archive of any supported layout, read in place."""

    def __init__(self, archive: str, max_entries: int, max_total_bytes: int):
        self.root = archive
        self.archive = archive
        self.max_entries = max_entries
        self.max_total_bytes = max_total_bytes

    def list_files(self) -> list[SourceFile]:
        infos = [info for info in _open_archive(self.archive, self.max_total_bytes).infolist() if not info.is_dir()]
        # Limits come from the central directory, before anything is decompressed.
        if len(infos) > self.max_entries:
            raise SourceError(f"{self.archive} has {len(infos)} entries, over data.zip_max_entries={self.max_entries}")
        total = sum(info.file_size for info in infos)
        if total > self.max_total_bytes:
            raise SourceError(
                f"{self.archive} would expand to {total} bytes, over data.zip_max_total_bytes={self.max_total_bytes}"
            )
        files = []
        for info in sorted(infos, key=lambda i: i.filename):
            reason = unsafe_member_reason(info.filename)
            files.append(
                SourceFile(
                    uri=zip_member_uri(self.archive, info.filename),
                    relpath=info.filename.replace("\\", "/").lstrip("/"),
                    size=info.file_size,
                    version=f"{info.CRC:08x}",
                    refused_code="unsafe_zip_path" if reason else "",
                    refused_reason=reason,
                )
            )
        return files

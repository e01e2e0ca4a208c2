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
import io
import os
import stat
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, TypeVar

from components.core.errors import UserError
from components.core.settings import DataConfig
from components.data import synthetic

ZIP_SCHEME = "zip://"
GCS_SCHEME = "gs://"
# A zip member URI is split at the first ".zip!/": archive names must end in .zip.
ZIP_MEMBER_SEPARATOR = "!/"
# Parallel GCS listing and downloads; the storage client is thread-safe.
GCS_WORKERS = 16
GCS_TIMEOUT_S = 60.0
# How long listing or reading a gs:// source retries transient failures (connection
# refused, reset or timed out; HTTP 408, 429, 5xx) before the step fails. Short on
# purpose: a source that is down for a minute is down, and every read waits this long.
SOURCE_RETRY_SECONDS = 60.0
# Step outputs written to gs:// (upload_folder) are worth waiting longer for.
UPLOAD_RETRY_SECONDS = 120.0
# Bounded reads go by chunks of this size (see _bounded_read).
READ_CHUNK = 2**20

T = TypeVar("T")


class SourceError(UserError):
    """The source cannot be read at all (missing, empty, unsupported): one line for the user."""


class SourceUnavailable(SourceError):
    """The source failed, not a file: it did not answer within SOURCE_RETRY_SECONDS, or
    refused us. The step fails; no file may be quarantined for it, since the file may be fine."""


class FileTooLarge(OSError):
    """A file longer than the caller's limit; it was not read past the limit."""


@dataclass(frozen=True)
class SourceFile:
    uri: str  # what read_bytes() takes
    relpath: str  # '/'-separated path below the source root, used to find labels
    size: int
    # Set when the file must not be read at all (unsafe zip path, non-UTF-8 name):
    # ingest quarantines it with this code and reason.
    refused_code: str = ""
    refused_reason: str = ""


class Source:
    """A listable collection of files. Subclasses implement list_files()."""

    root: str = ""
    synthetic: bool = False

    def list_files(self) -> list[SourceFile]:  # pragma: no cover - interface
        raise NotImplementedError


# ---- local folders -----------------------------------------------------------


def _utf8_or_none(name: str) -> str | None:
    """``name`` if it is valid UTF-8 on disk; os.walk maps invalid bytes to surrogates."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return name


def _shown(name: str) -> str:
    """``name`` as UTF-8 text (Parquet, JSON and KFP need it), invalid bytes as \\x escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


class LocalFolderSource(Source):
    def __init__(self, root: str | Path):
        self.path = Path(root).expanduser().resolve()
        self.root = str(self.path)

    def list_files(self) -> list[SourceFile]:
        files = []
        prefix = os.path.join(self.root, "")
        for dirpath, dirnames, filenames in os.walk(self.path, onerror=self._raise):
            dirnames.sort()
            # os.walk lists a linked folder with the folders but does not enter it: list
            # the link itself, so that a class folder linked from elsewhere is reported.
            linked = [d for d in dirnames if Path(dirpath, d).is_symlink()]
            # Strings, not a path object per file (a tenth of ingest's listing time).
            folder = "" if dirpath == self.root else dirpath[len(prefix):].replace(os.sep, "/") + "/"
            for name in sorted(filenames + linked):
                full = os.path.join(dirpath, name)
                relpath = folder + name
                if _utf8_or_none(relpath) is None:
                    shown = _shown(relpath)
                    files.append(SourceFile(uri=str(self.path / shown), relpath=shown, size=0,
                                            refused_code="bad_name",
                                            refused_reason="file name is not valid UTF-8 (shown with \\x escapes)"))
                else:
                    files.append(self._file(full, relpath))
        return files

    def _file(self, path: str, relpath: str) -> SourceFile:
        """The listing of ``path``, refused when it must not be read. A link leaving the
        source is never followed: x.jpg -> /etc/shadow must not be read, and an image
        elsewhere is not this source's data. A link inside the source is followed (its
        target is listed too: an exact duplicate). A pipe or device would block the read."""
        def refused(code: str, reason: str) -> SourceFile:
            return SourceFile(uri=str(path), relpath=relpath, size=0, refused_code=code, refused_reason=reason)

        try:
            info = os.lstat(path)  # one call: for anything but a link, the same as stat()
        except OSError as exc:
            return refused("unreadable", f"unreadable: {exc.strerror}")
        if stat.S_ISLNK(info.st_mode):
            target = Path(os.path.realpath(path))
            link = _shown(os.readlink(path))
            if not target.is_relative_to(self.path):
                return refused("symlink_outside_source", f"symbolic link to {link}, outside the source: not read")
            if not target.exists():
                return refused("dangling_symlink",
                               f"symbolic link to {link}, which leads nowhere (missing target or a loop)")
            if target.is_dir():
                folder = target.relative_to(self.path).as_posix()
                return refused("symlinked_folder",
                               f"symbolic link to the folder {folder} in the source: not followed, its files are listed there")
            try:
                info = os.stat(path)
            except OSError as exc:
                return refused("unreadable", f"unreadable: {exc.strerror}")
        if not stat.S_ISREG(info.st_mode):
            return refused("not_regular_file", "not a regular file (a pipe, socket or device): not read")
        return SourceFile(uri=str(path), relpath=relpath, size=info.st_size)

    @staticmethod
    def _raise(exc: OSError) -> None:
        raise SourceError(f"cannot list {exc.filename}: {exc.strerror}")


# ---- reads bounded by size -----------------------------------------------------


def _bounded_read(fh: BinaryIO, max_bytes: int | None) -> bytes:
    """All of ``fh``, but never more than ``max_bytes`` (+1 to tell that it is longer).
    Read in chunks: read(max_bytes + 1) would allocate the whole limit up front."""
    if max_bytes is None:
        return fh.read()
    chunks, size = [], 0
    while chunk := fh.read(min(READ_CHUNK, max_bytes + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise FileTooLarge(f"more than {max_bytes} bytes (data.max_file_bytes): not read further")
    return b"".join(chunks)


class _BoundedBuffer(io.BytesIO):
    """A download's bytes in memory; the download stops once it passes ``max_bytes``."""

    def __init__(self, max_bytes: int | None):
        super().__init__()
        self.max_bytes = max_bytes

    def write(self, data: bytes) -> int:
        if self.max_bytes is not None and self.tell() + len(data) > self.max_bytes:
            raise FileTooLarge(f"more than {self.max_bytes} bytes (data.max_file_bytes): not read further")
        return super().write(data)


# ---- zip archives ------------------------------------------------------------


def zip_member_uri(archive: str, member: str) -> str:
    return f"{ZIP_SCHEME}{archive}{ZIP_MEMBER_SEPARATOR}{member}"


def parse_zip_uri(uri: str) -> tuple[str, str]:
    """``zip://<archive>.zip!/<member>`` -> (archive, member)."""
    body = uri[len(ZIP_SCHEME):]
    cut = body.lower().find(".zip" + ZIP_MEMBER_SEPARATOR)
    if cut < 0:
        raise ValueError(f"not a zip member URI (zip://<archive>.zip!/<member>): {uri}")
    return body[:cut + 4], body[cut + 4 + len(ZIP_MEMBER_SEPARATOR):]


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


def _local_archive(archive: str) -> Path:
    """A local path for ``archive``: itself, or a cached download of a gs:// archive."""
    if not archive.startswith(GCS_SCHEME):
        return Path(archive.removeprefix("file://"))
    cache = Path(os.environ.get("LESION_CACHE_DIR") or Path(tempfile.gettempdir(), "lesionpipe-cache"))
    target = cache / f"{hashlib.sha256(archive.encode()).hexdigest()[:32]}.zip"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.{threading.get_ident()}.part")
        blob = _gcs_blob(*parse_gcs_uri(archive))
        _gcs_call(archive, lambda timeout: blob.download_to_filename(str(partial), retry=None, timeout=timeout))
        partial.replace(target)  # atomic: concurrent readers see a whole file or none
    return target


def _open_archive(archive: str) -> zipfile.ZipFile:
    with _archive_lock:
        if archive not in _open_archives:
            try:
                _open_archives[archive] = zipfile.ZipFile(_local_archive(archive))
            except zipfile.BadZipFile as exc:
                raise SourceError(f"{archive} is not a readable zip archive: {exc}") from None
            except FileNotFoundError:
                raise SourceError(f"zip archive not found: {archive}") from None
        return _open_archives[archive]


def _read_zip_member(uri: str, max_bytes: int | None) -> bytes:
    archive, member = parse_zip_uri(uri)
    if unsafe_member_reason(member):
        raise PermissionError(f"unsafe zip member refused: {member}")
    try:
        # ZipFile reads through a lock-protected shared file: safe from threads. It stops
        # at the declared size and checks the CRC, so a lying entry cannot inflate.
        with _open_archive(archive).open(member) as fh:
            return _bounded_read(fh, max_bytes)
    except KeyError:
        raise FileNotFoundError(f"no member {member!r} in {archive}") from None
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
        # RuntimeError: encrypted entry; NotImplementedError: unsupported compression.
        raise OSError(f"unreadable zip member: {exc}") from None


class ZipSource(Source):
    """A zip archive of any supported layout, read in place."""

    def __init__(self, archive: str, max_entries: int, max_total_bytes: int):
        self.root = archive
        self.archive = archive
        self.max_entries = max_entries
        self.max_total_bytes = max_total_bytes

    def list_files(self) -> list[SourceFile]:
        infos = [info for info in _open_archive(self.archive).infolist() if not info.is_dir()]
        # Limits come from the central directory, before anything is decompressed.
        if len(infos) > self.max_entries:
            raise SourceError(f"{self.archive} has {len(infos)} entries, over data.zip_max_entries={self.max_entries}")
        total = sum(info.file_size for info in infos)
        if total > self.max_total_bytes:
            raise SourceError(f"{self.archive} would expand to {total} bytes, over "
                              f"data.zip_max_total_bytes={self.max_total_bytes}")
        files = []
        for info in sorted(infos, key=lambda i: i.filename):
            reason = unsafe_member_reason(info.filename)
            files.append(SourceFile(uri=zip_member_uri(self.archive, info.filename),
                                    relpath=info.filename.replace("\\", "/").lstrip("/"), size=info.file_size,
                                    refused_code="unsafe_zip_path" if reason else "", refused_reason=reason))
        return files


# ---- Google Cloud Storage ----------------------------------------------------


def parse_gcs_uri(uri: str) -> tuple[str, str]:
    bucket, _, name = uri[len(GCS_SCHEME):].partition("/")
    if not bucket:
        raise SourceError(f"no bucket in {uri!r} (gs://bucket/prefix)")
    return bucket, name


_client_lock = threading.Lock()
_gcs_clients: list = []


def _gcs_client():
    """One storage client per process. STORAGE_EMULATOR_HOST, when set, points it at an
    emulator; without credentials (a laptop) public buckets are still readable."""
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage

    with _client_lock:
        if not _gcs_clients:
            try:
                _gcs_clients.append(storage.Client())
            except DefaultCredentialsError:
                _gcs_clients.append(storage.Client.create_anonymous_client())
        return _gcs_clients[0]


def _gcs_retry(seconds: float):
    from google.cloud.storage.retry import DEFAULT_RETRY

    # Transient errors (429, 5xx, connection resets) are retried with backoff for ``seconds``.
    return DEFAULT_RETRY.with_timeout(seconds)


def _gcs_blob(bucket: str, name: str):
    return _gcs_client().bucket(bucket).blob(name)


def _gcs_errors() -> tuple[type[Exception], ...]:
    import requests
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError

    return GoogleAPIError, GoogleAuthError, requests.RequestException


def _transient(exc: BaseException) -> bool:
    """Worth another try: the connection failed (refused, reset, cut short, timed out) or
    the service said so (408, 429, 5xx). Any other answer would be the same next time."""
    import requests
    from google.api_core.exceptions import GoogleAPICallError
    from google.auth.exceptions import TransportError

    if isinstance(exc, GoogleAPICallError):
        return exc.code in (408, 429) or (exc.code or 0) >= 500
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                            TransportError))


def _cause(exc: BaseException) -> str:
    """Why a GCS call failed, in a few words ('connection refused', 'HTTP 503 Service
    Unavailable'): the libraries' own messages run to lines of URLs and object reprs."""
    import requests
    from google.api_core.exceptions import GoogleAPICallError, RetryError

    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        reason = getattr(current, "reason", None)  # urllib3's MaxRetryError names the failure here
        current = (current.cause if isinstance(current, RetryError) else reason if isinstance(reason, BaseException)
                   else current.__cause__ or current.__context__)
    for link in chain:
        if isinstance(link, GoogleAPICallError) and link.code:
            try:
                return f"HTTP {link.code} {HTTPStatus(link.code).phrase}"
            except ValueError:
                return f"HTTP {link.code}"
        if isinstance(link, (requests.Timeout, TimeoutError)):
            return "timed out"
    for link in reversed(chain):  # the innermost OS error says it best: "Connection refused"
        if isinstance(link, OSError) and link.strerror:
            return link.strerror[:1].lower() + link.strerror[1:]
    text = str(chain[-1]).strip()
    return f"{type(chain[-1]).__name__}: {text.splitlines()[0]}" if text else type(chain[-1]).__name__


def _gcs_call(uri: str, call: Callable[[float], T], stop: threading.Event | None = None) -> T:
    """``call(timeout)`` on ``uri``, tried again after transient failures for up to
    SOURCE_RETRY_SECONDS; then, or at once for any other failure, SourceUnavailable.
    ``stop`` set (another read failed for good) ends the retries early. A 404 is the
    server's answer about this one object (deleted since it was listed): FileNotFoundError,
    for the caller to quarantine."""
    from google.api_core.exceptions import NotFound

    started = time.monotonic()
    deadline = started + SOURCE_RETRY_SECONDS
    tries, cause = 0, ""
    while stop is None or not stop.is_set():
        tries += 1
        try:
            return call(max(1.0, min(GCS_TIMEOUT_S, deadline - time.monotonic())))
        except NotFound:
            raise FileNotFoundError(f"no such object: {uri}") from None
        except _gcs_errors() as exc:
            if not _transient(exc):
                raise SourceUnavailable(f"cannot read {uri}: {_cause(exc)}") from None
            cause = _cause(exc)
        delay = min(0.5 * 2 ** (tries - 1), 8.0, deadline - time.monotonic())
        if delay <= 0:
            break
        if stop is None:
            time.sleep(delay)
        else:
            stop.wait(delay)
    if not tries:
        raise SourceUnavailable(f"{uri} not read: another read from the source failed")
    raise SourceUnavailable(f"cannot read {uri}: {cause} after {tries} tries in {time.monotonic() - started:.0f} s")


def _read_gcs(uri: str, max_bytes: int | None, stop: threading.Event | None) -> bytes:
    blob = _gcs_blob(*parse_gcs_uri(uri))

    def download(timeout: float) -> bytes:
        buffer = _BoundedBuffer(max_bytes)
        blob.download_to_file(buffer, retry=None, timeout=timeout)
        return buffer.getvalue()

    return _gcs_call(uri, download, stop)


def download_folder(uri: str, dest: str | Path) -> Path:
    """A step output folder (local path or gs://bucket/prefix) as a local folder."""
    if not uri.startswith(GCS_SCHEME):
        return Path(uri)
    dest = Path(dest)
    for f in GcsSource(uri).list_files():
        target = dest / f.relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_bytes(f.uri))
    return dest


def upload_folder(local: str | Path, uri: str) -> None:
    """Copy every file under ``local`` to ``gs://bucket/prefix`` (same relative paths)."""
    bucket, prefix = parse_gcs_uri(uri)
    for path in sorted(Path(local).rglob("*")):
        if path.is_file():
            name = f"{prefix.rstrip('/')}/{path.relative_to(local).as_posix()}".lstrip("/")
            try:
                _gcs_blob(bucket, name).upload_from_filename(str(path), retry=_gcs_retry(UPLOAD_RETRY_SECONDS),
                                                             timeout=GCS_TIMEOUT_S)
            except _gcs_errors() as exc:
                raise OSError(f"cannot write gs://{bucket}/{name}: {exc}") from None


class GcsSource(Source):
    """Every object under ``gs://bucket/prefix``, listed folder by folder in parallel."""

    def __init__(self, uri: str):
        self.bucket, prefix = parse_gcs_uri(uri.rstrip("/"))
        self.prefix = f"{prefix}/" if prefix else ""
        self.root = f"{GCS_SCHEME}{self.bucket}/{self.prefix}"

    def _list_level(self, prefix: str) -> tuple[list[SourceFile], list[str]]:
        pages = _gcs_client().list_blobs(self.bucket, prefix=prefix, delimiter="/",
                                         retry=_gcs_retry(SOURCE_RETRY_SECONDS), timeout=GCS_TIMEOUT_S)
        files = [SourceFile(uri=f"{GCS_SCHEME}{self.bucket}/{blob.name}", relpath=blob.name[len(self.prefix):],
                            size=int(blob.size or 0))
                 for blob in pages if not blob.name.endswith("/")]  # "folder" placeholder objects
        return files, sorted(pages.prefixes)

    def list_files(self) -> list[SourceFile]:
        from google.api_core.exceptions import RetryError

        files: list[SourceFile] = []
        level = [self.prefix]
        started = time.monotonic()
        try:
            # Breadth first: every folder of one depth (Train/Test, then the classes) at once.
            with ThreadPoolExecutor(GCS_WORKERS) as pool:
                while level:
                    found = list(pool.map(self._list_level, level))
                    files += [f for level_files, _ in found for f in level_files]
                    level = [p for _, prefixes in found for p in prefixes]
        except RetryError as exc:  # transient failures until the deadline
            raise SourceUnavailable(f"cannot list {self.root}: {_cause(exc)}, still failing after "
                                    f"{time.monotonic() - started:.0f} s of retries") from None
        except _gcs_errors() as exc:
            raise SourceError(f"cannot list {self.root}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
        return sorted(files, key=lambda f: f.relpath)


# ---- the generated demo set --------------------------------------------------


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
    retries, or sooner once ``stop`` is set (another read already failed for good).
    """
    if uri.startswith(synthetic.SCHEME):
        return synthetic.render_uri(uri)
    if uri.startswith(ZIP_SCHEME):
        return _read_zip_member(uri, max_bytes)
    if uri.startswith(GCS_SCHEME):
        return _read_gcs(uri, max_bytes, stop)
    with open(uri.removeprefix("file://"), "rb") as fh:
        return _bounded_read(fh, max_bytes)

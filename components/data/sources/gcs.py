"""Google Cloud Storage as a source: objects under ``gs://bucket/prefix`` listed and read
with google-cloud-storage; transient failures retried for SOURCE_RETRY_SECONDS, then the
source is unavailable (SourceUnavailable), never a file's fault."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import TypeVar

from components.data.sources.base import BoundedBuffer, Source, SourceError, SourceFile, SourceUnavailable

GCS_SCHEME = "gs://"
# Parallel GCS listing and downloads; the storage client is thread-safe.
GCS_WORKERS = 16
GCS_TIMEOUT_S = 60.0
# How long listing or reading a gs:// source retries transient failures (connection
# refused, reset or timed out; HTTP 408, 429, 5xx) before the step fails. Short on
# purpose: a source that is down for a minute is down, and every read waits this long.
SOURCE_RETRY_SECONDS = 60.0

T = TypeVar("T")


def parse_gcs_uri(uri: str) -> tuple[str, str]:
    bucket, _, name = uri[len(GCS_SCHEME) :].partition("/")
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


def gcs_retry(seconds: float):
    from google.cloud.storage.retry import DEFAULT_RETRY

    # Transient errors (429, 5xx, connection resets) are retried with backoff for ``seconds``.
    return DEFAULT_RETRY.with_timeout(seconds)


def gcs_blob(bucket: str, name: str):
    return _gcs_client().bucket(bucket).blob(name)


def gcs_errors() -> tuple[type[Exception], ...]:
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
    return isinstance(
        exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError, TransportError)
    )


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
        current = (
            current.cause
            if isinstance(current, RetryError)
            else reason
            if isinstance(reason, BaseException)
            else current.__cause__ or current.__context__
        )
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


def gcs_call(uri: str, call: Callable[[float], T], stop: threading.Event | None = None) -> T:
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
        except gcs_errors() as exc:
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


def read_gcs(uri: str, max_bytes: int | None, stop: threading.Event | None) -> bytes:
    blob = gcs_blob(*parse_gcs_uri(uri))

    def download(timeout: float) -> bytes:
        buffer = BoundedBuffer(max_bytes)
        blob.download_to_file(buffer, retry=None, timeout=timeout)
        return buffer.getvalue()

    return gcs_call(uri, download, stop)


class GcsSource(Source):
    """Every object under ``gs://bucket/prefix``, listed folder by folder in parallel."""

    def __init__(self, uri: str):
        self.bucket, prefix = parse_gcs_uri(uri.rstrip("/"))
        self.prefix = f"{prefix}/" if prefix else ""
        self.root = f"{GCS_SCHEME}{self.bucket}/{self.prefix}"

    def _list_level(self, prefix: str) -> tuple[list[SourceFile], list[str]]:
        pages = _gcs_client().list_blobs(
            self.bucket, prefix=prefix, delimiter="/", retry=gcs_retry(SOURCE_RETRY_SECONDS), timeout=GCS_TIMEOUT_S
        )
        files = [
            SourceFile(
                uri=f"{GCS_SCHEME}{self.bucket}/{blob.name}",
                relpath=blob.name[len(self.prefix) :],
                size=int(blob.size or 0),
                version=f"{blob.generation}/{blob.md5_hash or blob.crc32c}",
            )
            for blob in pages
            if not blob.name.endswith("/")
        ]  # "folder" placeholder objects
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
            raise SourceUnavailable(
                f"cannot list {self.root}: {_cause(exc)}, still failing after "
                f"{time.monotonic() - started:.0f} s of retries"
            ) from None
        except gcs_errors() as exc:
            raise SourceError(f"cannot list {self.root}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
        return sorted(files, key=lambda f: f.relpath)

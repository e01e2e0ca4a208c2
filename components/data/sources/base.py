"""What every kind of source shares: the listing's entry (SourceFile), the Source
interface, the errors that tell a file's fault from the source's, and reads bounded by
size (data.max_file_bytes)."""

from __future__ import annotations

import errno
import io
import os
from dataclasses import dataclass
from typing import BinaryIO

from components.core.errors import Unavailable, UserError

# Bounded reads go by chunks of this size (see bounded_read).
READ_CHUNK = 2**20
# OS errors that say the storage failed, not the file: a mounted filesystem (NFS, gcsfuse)
# whose server is gone or slow, or a machine out of memory or file handles. The same read
# may well work on a retry of the step; quarantining the file would shrink the data.
STORAGE_ERRNOS = frozenset(
    {
        errno.EIO,
        errno.ESTALE,
        errno.ETIMEDOUT,
        errno.ENOTCONN,
        errno.ECONNABORTED,
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.ENETRESET,
        errno.ENOLINK,
        errno.ECOMM,
        errno.EREMOTEIO,
        errno.ENOMEM,
        errno.ENFILE,
        errno.EMFILE,
        errno.EAGAIN,
    }
)


class SourceError(UserError):
    """The source cannot be read at all (missing, empty, unsupported): one line for the user."""


class SourceUnavailable(SourceError, Unavailable):
    """The source failed, not a file: it did not answer within gcs.SOURCE_RETRY_SECONDS, or
    refused us, or its filesystem gave an I/O error (STORAGE_ERRNOS). The step fails; no
    file may be quarantined for it, since the file may be fine."""


class FileTooLarge(OSError):
    """A file longer than the caller's limit; it was not read past the limit."""


class FileChanged(OSError):
    """A file whose bytes are no longer those ingest recorded (another md5)."""


def raise_if_storage_failed(exc: OSError, uri: str) -> None:
    """SourceUnavailable, in one line, when ``exc`` (raised reading ``uri``) is the
    storage's failure rather than the file's; otherwise nothing: the caller handles it."""
    if exc.errno in STORAGE_ERRNOS:
        reason = os.strerror(exc.errno)
        raise SourceUnavailable(
            f"cannot read {uri}: {reason[:1].lower() + reason[1:]} "
            f"({errno.errorcode[exc.errno]}): the storage failed, not the file"
        ) from None


@dataclass(frozen=True)
class SourceFile:
    uri: str  # what read_bytes() takes
    relpath: str  # '/'-separated path below the source root, used to find labels
    size: int
    # What changes with the content, as the listing gives it without reading the file: a
    # local file's modification time (ns), a zip member's CRC-32, a GCS object's generation
    # and md5; part of the listing digest (components.data.listing), ingest's cache key.
    version: str = ""
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


# ---- reads bounded by size -----------------------------------------------------


def bounded_read(fh: BinaryIO, max_bytes: int | None) -> bytes:
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


class BoundedBuffer(io.BytesIO):
    """A download's bytes in memory; the download stops once it passes ``max_bytes``."""

    def __init__(self, max_bytes: int | None):
        super().__init__()
        self.max_bytes = max_bytes

    def write(self, data: bytes) -> int:
        if self.max_bytes is not None and self.tell() + len(data) > self.max_bytes:
            raise FileTooLarge(f"more than {self.max_bytes} bytes (data.max_file_bytes): not read further")
        return super().write(data)

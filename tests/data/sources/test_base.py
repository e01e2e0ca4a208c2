"""What a read's failure means (components.data.sources.base): only a file's own content
quarantines it. An I/O error of the storage (EIO, ESTALE, ETIMEDOUT on an NFS or gcsfuse
mount) fails the step in one line, so that KFP retries it and an outage never becomes a
smaller, cached dataset; a MemoryError while decoding is the machine's, not the file's,
and propagates. Reads never go past their bound."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.core.errors import UserError
from components.data.ingest.validation import inspect_images
from components.data.sources import read_bytes
from components.data.sources.base import FileTooLarge, SourceUnavailable
from tests.helpers.sources import write_zip


def test_reads_never_go_past_max_bytes(tmp_path):
    (tmp_path / "grown.jpg").write_bytes(b"x" * 5000)  # listed small, then grew
    archive = write_zip(tmp_path / "data.zip", {"a/grown.jpg": b"x" * 5000})
    for uri in (str(tmp_path / "grown.jpg"), f"zip://{archive}!/a/grown.jpg"):
        assert read_bytes(uri, 5000) == b"x" * 5000
        with pytest.raises(FileTooLarge, match="more than 4999 bytes"):
            read_bytes(uri, 4999)


ROOT = Path(__file__).resolve().parents[3]


# A real file whose read fails with EIO, the error an NFS or gcsfuse mount gives when its
# server is gone: reading a process's memory at address 0.
EIO_FILE = "/proc/self/mem"


def test_an_io_error_of_the_storage_fails_the_read_in_one_line():
    with pytest.raises(SourceUnavailable, match=r"^cannot read /proc/self/mem: input/output error \(EIO\)"):
        read_bytes(EIO_FILE)
    with pytest.raises(SourceUnavailable):
        inspect_images([EIO_FILE], 10**8, 10**8)


def test_a_missing_or_forbidden_file_is_still_the_files_fault(tmp_path):
    found = inspect_images([str(tmp_path / "gone.jpg")], 10**8, 10**8)
    assert (found[0]["error_code"], "No such file" in found[0]["error"]) == ("unreadable", True)
    forbidden = tmp_path / "forbidden.jpg"
    forbidden.write_bytes(b"\xff\xd8")
    forbidden.chmod(0)
    if not os.access(forbidden, os.R_OK):  # root reads anything
        found = inspect_images([str(forbidden)], 10**8, 10**8)
        assert (found[0]["error_code"], "Permission denied" in found[0]["error"]) == ("unreadable", True)


DECODE_UNDER_A_MEMORY_LIMIT = """
import io, resource, zlib, struct
from components.data.imaging import decode_rgb_reduced
from components.data.ingest.validation import inspect_images
width = height = 4000  # 48 MB of RGB pixels; the limit below leaves 24 MB
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
rows = zlib.compress(bytes(height * (1 + 3 * width)), 1)
png = (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
       + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
path = "{path}"
open(path, "wb").write(png)
size = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + 24 * 2**20, size + 24 * 2**20))
try:
    found = inspect_images([path], 10**9, 10**9)
    print("quarantined:", found[0]["error_code"], found[0]["error"])
except MemoryError:
    print("MemoryError")
"""


def test_a_memory_error_while_decoding_is_not_a_corrupt_file(tmp_path):
    code = DECODE_UNDER_A_MEMORY_LIMIT.replace("{path}", str(tmp_path / "large.png"))
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip() == "MemoryError", done.stdout + done.stderr


def test_a_storage_error_is_a_user_error_with_one_line():
    with pytest.raises(UserError) as caught:
        read_bytes(EIO_FILE)
    assert "\n" not in str(caught.value)

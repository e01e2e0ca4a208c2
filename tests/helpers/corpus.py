"""A generated corpus of broken and odd files, with the status and reason ingest must give each."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers.images import jpeg_bytes, lesion


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels but carries almost no data: a
    decompression bomb as far as any decoder that trusts the header is concerned."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def write(root: Path, relpath: str | bytes, data: bytes) -> None:
    path = os.path.join(os.fsencode(root), relpath if isinstance(relpath, bytes) else os.fsencode(relpath))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def save(root: Path, relpath: str, img: Image.Image, **params) -> None:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **params)


# relpath -> (status, reason_code) for every file the corpus holds.
EXPECTED: dict[str, tuple[str, str]] = {}


def build_corpus(root: Path) -> Path:
    """Fill ``root`` with the messy corpus; EXPECTED gets each file's status and reason."""
    expect = EXPECTED
    for i in range(6):
        for cls, folder in (("melanoma", "melanoma"), ("nevus", "nevus")):
            write(root, f"Train/{folder}/{cls[:3]}_{i}.jpg", jpeg_bytes(lesion(i, cls)))
            expect[f"Train/{folder}/{cls[:3]}_{i}.jpg"] = ("ingested", "")
    for i in range(6, 8):
        write(root, f"Test/nevus/nev_{i}.jpg", jpeg_bytes(lesion(i, "nevus")))
        expect[f"Test/nevus/nev_{i}.jpg"] = ("ingested", "")
    # HAM10000's short code as a folder name: the same class as "melanoma".
    write(root, "Test/MEL/mel_8.jpg", jpeg_bytes(lesion(8)))
    expect["Test/MEL/mel_8.jpg"] = ("ingested", "")

    # Odd but usable: every mode and container is converted to RGB.
    odd = {
        "gray.png": (lesion(20, "nevus").convert("L"), {}),
        "cmyk.jpg": (lesion(21, "nevus").convert("CMYK"), {}),
        "palette.gif": (lesion(22, "nevus").convert("P"), {}),
        "rgba.png": (lesion(23, "nevus").convert("RGBA"), {}),
        "bitmap.bmp": (lesion(24, "nevus"), {}),
        "scan.TIFF": (lesion(25, "nevus"), {}),
        "upper.JPG": (lesion(26, "nevus"), {"format": "JPEG"}),
        "sixteen.png": (Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)), {}),
    }
    for name, (img, params) in odd.items():
        save(root, f"Train/nevus/odd/{name}", img, **params)
        expect[f"Train/nevus/odd/{name}"] = ("ingested", "")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    save(root, "Train/melanoma/rotated.jpg", lesion(27).resize((80, 48)), exif=exif)
    expect["Train/melanoma/rotated.jpg"] = ("ingested", "")

    # Broken files.
    good = jpeg_bytes(lesion(30))
    for relpath, data, code in (
        ("Train/melanoma/empty.jpg", b"", "empty_file"),
        ("Train/melanoma/truncated.jpg", good[: len(good) * 2 // 3], "corrupt"),
        ("Train/melanoma/garbage.jpg", np.random.default_rng(0).bytes(3000), "not_an_image"),
        ("Train/melanoma/letter.png", b"Dear colleague, this is not an image.", "not_an_image"),
        ("Train/melanoma/bomb.png", png_header_only(100_000, 100_000), "too_many_pixels"),
        ("Train/melanoma/tiny.png", None, "too_small"),
        ("root_image.jpg", jpeg_bytes(lesion(31)), "no_label"),
        ("Train/stray.jpg", jpeg_bytes(lesion(32)), "no_label"),
        ("Train/unknown/u.jpg", jpeg_bytes(lesion(33)), "no_label"),
    ):
        if data is None:
            save(root, relpath, lesion(34).resize((8, 8)))
        else:
            write(root, relpath, data)
        expect[relpath] = ("quarantined", code)
    write(root, b"Train/melanoma/m\xe9lanome.jpg", jpeg_bytes(lesion(35)))  # Latin-1, not UTF-8
    expect["Train/melanoma/m\\xe9lanome.jpg"] = ("quarantined", "bad_name")

    # Not images at all.
    for relpath, code in (
        ("README.md", "not_image_file"),
        ("notes.csv", "not_image_file"),
        (".DS_Store", "system_file"),
        ("Train/melanoma/._mel_0.jpg", "system_file"),
    ):
        write(root, relpath, b"a,b\n1,2\n")
        expect[relpath] = ("ignored", code)

    # Exact duplicates, conflicts and leaks.
    write(root, "Train/melanoma/mel_0_copy.jpg", (root / "Train/melanoma/mel_0.jpg").read_bytes())
    expect["Train/melanoma/mel_0_copy.jpg"] = ("ignored", "duplicate")
    conflict = jpeg_bytes(lesion(40))
    write(root, "Train/melanoma/conflict.jpg", conflict)
    write(root, "Train/nevus/conflict.jpg", conflict)
    expect["Train/melanoma/conflict.jpg"] = expect["Train/nevus/conflict.jpg"] = ("quarantined", "label_conflict")
    leak = jpeg_bytes(lesion(41, "nevus"))
    write(root, "Train/nevus/leak.jpg", leak)
    write(root, "Test/nevus/leak.jpg", leak)
    expect["Train/nevus/leak.jpg"] = ("ignored", "split_leak")
    expect["Test/nevus/leak.jpg"] = ("ingested", "")
    leak_conflict = jpeg_bytes(lesion(42))
    write(root, "Train/melanoma/leak_conflict.jpg", leak_conflict)
    write(root, "Test/nevus/leak_conflict.jpg", leak_conflict)
    expect["Train/melanoma/leak_conflict.jpg"] = expect["Test/nevus/leak_conflict.jpg"] = (
        "quarantined",
        "label_conflict",
    )

    # A near-duplicate: the same picture re-encoded smaller as PNG.
    near = lesion(43, size=96)
    save(root, "Train/melanoma/near_a.jpg", near, quality=95)
    save(root, "Train/melanoma/near_b.png", near.resize((88, 88)))
    expect["Train/melanoma/near_a.jpg"] = expect["Train/melanoma/near_b.png"] = ("ingested", "")
    return root

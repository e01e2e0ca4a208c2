"""Decoding and checking a partition's images: each file read once (never past
data.max_file_bytes), its md5, size, pHash and 16x16 thumbnail made from one decode; a
file that cannot be used is quarantined with the reason. The thumbnails go to disk as
they are made (PartitionThumbnails) for the near-duplicate search."""

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from components.core import filenames
from components.core.settings import DataConfig
from components.data.imaging import (
    STACK_MAX_PIXELS,
    DecodeBudget,
    ImageError,
    decode_rgb_reduced,
    phash_hex_batch,
    phash_pixels_and_thumbs,
)
from components.data.ingest.threads import ingest_threads
from components.data.sources import read_bytes
from components.data.sources.base import FileTooLarge, SourceUnavailable

# Side of the RGB thumbnail that confirms a pHash near-duplicate pixel for pixel.
THUMB_SIDE = 16
# The smallest side a JPEG is decoded at (libjpeg's 1/2, 1/4 or 1/8 scale, when the image
# is that large): pHash's 32x32 greyscale and the thumbnail are made from this one decode,
# and so is a report preview (at most data_report.THUMB_SIZE, 72, on a side) when the
# merge reads a shown file again. At 32 (1/4 of HAM10000's 200x150) ingest is faster, but
# one of HAM10000's 28 near-duplicate pairs is no longer found: at 72 every figure is the
# full decode's.
DECODE_MIN_SIDE = 72
# Files one decoding task inspects: a thread pool task per file cost more than the file.
VALIDATE_BATCH = 16


def inspect_images(
    uris: list[str],
    max_pixels: int,
    max_bytes: int,
    stop: threading.Event | None = None,
    budget: DecodeBudget | None = None,
) -> list[dict]:
    """inspect_image of each of ``uris``, their thumbnails and pHashes made together
    (imaging.phash_pixels_and_thumbs); a decode of more than imaging.STACK_MAX_PIXELS
    (a large image that is not a JPEG) is done with at once, never held for the others.
    Decodes stay within ``budget``, shared with the other decoding threads."""
    found = []
    for uri in uris:
        found.append(_inspect(uri, max_pixels, max_bytes, stop, budget))
        if "image" in found[-1] and found[-1]["image"].width * found[-1]["image"].height > STACK_MAX_PIXELS:
            _hash_and_thumb(found[-1:])
    _hash_and_thumb([f for f in found if "image" in f])
    return found


def _hash_and_thumb(decoded: list[dict]) -> None:
    """Each decoded image's pHash and thumbnail in place of the image."""
    if decoded:
        pixels, thumbs = phash_pixels_and_thumbs([f.pop("image") for f in decoded], THUMB_SIDE)
        for f, thumb, phash in zip(decoded, thumbs, phash_hex_batch(pixels)):
            f["thumb"], f["phash"] = thumb, phash


def inspect_image(uri: str, max_pixels: int, max_bytes: int, stop: threading.Event | None = None) -> dict:
    """md5, size, perceptual hash, decode status and the 16x16 thumbnail of one file, all
    from one decode (a JPEG at reduced scale, no side under DECODE_MIN_SIDE: see
    imaging.decode_rgb_reduced). Never raises for a bad file; raises SourceUnavailable
    when the source failed, since the file may be fine and must not be quarantined for it."""
    return inspect_images([uri], max_pixels, max_bytes, stop)[0]


def _inspect(
    uri: str, max_pixels: int, max_bytes: int, stop: threading.Event | None, budget: DecodeBudget | None
) -> dict:
    """inspect_image, with the decoded image in place of its pHash and thumbnail."""
    try:
        data = read_bytes(uri, max_bytes, stop)
    except SourceUnavailable:
        raise
    except FileTooLarge as exc:  # grew past the limit since it was listed
        return {"md5": "", "error_code": "too_large", "error": str(exc)}
    except (OSError, ValueError) as exc:
        return {"md5": "", "error_code": "unreadable", "error": f"unreadable: {exc}"}
    md5 = hashlib.md5(data).hexdigest()
    try:
        img, width, height, fmt = decode_rgb_reduced(data, DECODE_MIN_SIDE, max_pixels, budget)
    except ImageError as exc:
        return {"md5": md5, "error_code": exc.code, "error": str(exc)}
    return {
        "md5": md5,
        "width": width,
        "height": height,
        "image": img,
        "image_format": fmt,
        "error_code": "",
        "error": "",
    }


class PartitionThumbnails:
    """A partition's thumbnails, on disk as they are made, so that neither a partition
    nor the merge holds them in memory: one raw 16x16x3 uint8 row per manifest row (zeros
    where nothing was decoded)."""

    ROW = THUMB_SIDE * THUMB_SIDE * 3

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / filenames.INGEST_PARTITION_THUMBS

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The thumbnails of ``rows`` (positions in the partition's rows), read from disk."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), THUMB_SIDE, THUMB_SIDE, 3), dtype=np.uint8)
        with open(self.path, "rb") as f:
            fd = f.fileno()
            for k, row in enumerate(rows):
                out[k] = np.frombuffer(os.pread(fd, self.ROW, int(row) * self.ROW), dtype=np.uint8).reshape(
                    THUMB_SIDE, THUMB_SIDE, 3
                )
        return out


def validate(df: pd.DataFrame, cfg: DataConfig, thumbnails: PartitionThumbnails) -> None:
    """Decode every labelled image; quarantine the ones that cannot be used. Writes the
    16x16 RGB thumbnails (row ``k`` for ``df``'s ``k``-th row) to ``thumbnails`` as the
    results arrive.

    When the source fails, the step fails with the first read that failed for good; the
    reads still running stop retrying and the ones not started never start.
    """
    todo = df.index[df.status == ""]
    stop = threading.Event()
    failures: list[SourceUnavailable] = []
    budget = DecodeBudget(cfg.decode_memory_mb * 2**20)

    def inspect(uris: list[str]) -> list[dict]:
        try:
            return inspect_images(uris, cfg.max_image_pixels, cfg.max_file_bytes, stop, budget)
        except SourceUnavailable as exc:
            failures.append(exc)
            stop.set()
            raise

    columns = ("md5", "width", "height", "phash", "image_format", "error_code", "error")
    found: dict[str, list] = {c: [] for c in columns}
    positions = df.index.get_indexer(todo)
    next_row = 0
    thumbnails.folder.mkdir(parents=True, exist_ok=True)
    uris = df.loc[todo, "uri"].tolist()
    with ThreadPoolExecutor(max_workers=ingest_threads(cfg, uris)) as pool, open(thumbnails.path, "wb") as thumbs:
        try:
            # On the first exception, map's iterator cancels every future not yet started.
            batches = pool.map(inspect, [uris[k : k + VALIDATE_BATCH] for k in range(0, len(uris), VALIDATE_BATCH)])
            for position, f in zip(positions, (f for batch in batches for f in batch)):
                if "thumb" in f:
                    if position > next_row:  # rows not decoded: zeros
                        thumbs.write(bytes((position - next_row) * PartitionThumbnails.ROW))
                    thumbs.write(f["thumb"].tobytes())
                    next_row = position + 1
                for column in columns:
                    found[column].append(f.get(column))
        except SourceUnavailable:
            raise failures[0] from None
        except KeyboardInterrupt:  # Ctrl-C: no read starts, those running stop retrying; the pool's exit waits
            stop.set()  # for the running ones only
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        thumbs.write(bytes((len(df) - next_row) * PartitionThumbnails.ROW))
    info = pd.DataFrame(found, index=todo, columns=list(columns))
    for column in ("md5", "phash", "image_format"):
        df.loc[todo, column] = info[column].fillna("")
    # What the near-duplicate search reads: 8 bytes an image, not a 16-character string.
    df["phash_u64"] = np.zeros(len(df), dtype=np.uint64)
    decoded = info.index[info.phash.notna()]
    df.loc[decoded, "phash_u64"] = np.array([int(h, 16) for h in info.loc[decoded, "phash"]], dtype=np.uint64)
    for column in ("width", "height"):
        df.loc[todo, column] = info[column].fillna(0).astype(int)
    bad = info.index[info.error_code != ""]
    df.loc[bad, "status"] = "quarantined"
    df.loc[bad, "reason_code"] = info.loc[bad, "error_code"]
    df.loc[bad, "reason"] = info.loc[bad, "error"]
    small = df.index[(df.status == "") & ((df.width < cfg.min_image_size) | (df.height < cfg.min_image_size))]
    df.loc[small, ["status", "reason_code"]] = ["quarantined", "too_small"]
    df.loc[small, "reason"] = [
        f"{w}x{h} is below data.min_image_size={cfg.min_image_size}"
        for w, h in zip(df.loc[small, "width"], df.loc[small, "height"])
    ]

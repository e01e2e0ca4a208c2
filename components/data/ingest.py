"""Ingest: list a source, find each file's label, decode every image, and account for
every file found: ingested, quarantined (with the reason) or ignored (with the reason).

Outputs ``manifest.parquet`` (one row per file found), ``report.json``, ``report.md``
and ``report.html`` (see components.data.data_report).

A source that fails (SourceUnavailable) fails the step: only a file's own content or
listing can quarantine it, never a network fault.
"""

import functools
import hashlib
import io
import json
import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import List

import numpy as np
import pandas as pd
from kfp import dsl

from components.core import filenames
from components.core.errors import UserError
from components.core.settings import DataConfig
from components.data.data_report import build_report, preview_jpeg, shown_uris, write_outputs
from components.data.imaging import (
    IMAGE_EXTENSIONS,
    STACK_MAX_PIXELS,
    ImageError,
    decode_rgb_reduced,
    phash_hex_batch,
    phash_pixels_and_thumbs,
)
from components.data.labels import LabelTable, canonical_label, csv_format, label_table
from components.data.sources import (
    GCS_SCHEME,
    FileTooLarge,
    Source,
    SourceError,
    SourceFile,
    SourceUnavailable,
    open_source,
    read_bytes,
)
from components.data.union_find import UnionFind

SPLIT_DIRS = {"train": "train", "test": "test"}
# Files that operating systems and archivers leave behind; never data.
SYSTEM_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
MANIFEST_COLUMNS = [
    "uri", "relpath", "label", "source_label", "group_id", "split", "md5", "phash", "width", "height",
    "bytes", "image_format", "status", "reason_code", "reason", "duplicate_of", "near_duplicate_group",
]
# Side of the RGB thumbnail that confirms a pHash near-duplicate pixel for pixel.
THUMB_SIDE = 16
# The smallest side a JPEG is decoded at (libjpeg's 1/2, 1/4 or 1/8 scale, when the image
# is that large): pHash's 32x32 greyscale and the thumbnail are made from this one decode,
# and so is a report preview (at most ingest_report.THUMB_SIZE, 72, on a side) when the
# merge reads a shown file again. At 32 (1/4 of HAM10000's 200x150) ingest is faster, but
# one of HAM10000's 28 near-duplicate pairs is no longer found: at 72 every figure is the
# full decode's.
DECODE_MIN_SIDE = 72
# Hash pairs compared at once in the near-duplicate search: a large pHash bucket is
# compared in blocks of rows of about this many pairs (8 bytes each, so ~32 MB).
NEAR_DUPLICATE_BLOCK = 1 << 22
# Files one decoding task inspects: a thread pool task per file cost more than the file.
VALIDATE_BATCH = 16


class IngestError(UserError):
    """The data is not usable for training: one line for the user."""


@dataclass
class IngestResult:
    manifest: pd.DataFrame
    report: dict


# ---- labelling ---------------------------------------------------------------


# PurePosixPath's parts, name, suffix and stem of a listing's relpaths, without building
# a path object: ingest asks for them for every file, several times (the cache holds the
# last few files' parts, so it stays small whatever the source's size).
@functools.lru_cache(maxsize=1024)
def _parts(relpath: str) -> tuple[str, ...]:
    if relpath.startswith("/"):
        return PurePosixPath(relpath).parts
    parts = relpath.split("/")
    if "" in parts or "." in parts:
        return tuple(p for p in parts if p and p != ".")
    return tuple(parts)


def _name(relpath: str) -> str:
    parts = _parts(relpath)
    return parts[-1] if parts else ""


def _suffix(relpath: str) -> str:
    """PurePosixPath(relpath).suffix.lower()."""
    name = _name(relpath)
    dot = name.rfind(".")
    return name[dot:].lower() if 0 < dot < len(name) - 1 else ""


def _stem(relpath: str) -> str:
    name = _name(relpath)
    dot = name.rfind(".")
    return name[:dot] if 0 < dot < len(name) - 1 else name


def _is_system_file(relpath: str) -> bool:
    name = _name(relpath)
    return name.lower() in SYSTEM_NAMES or name.startswith("._") or "__MACOSX" in _parts(relpath)


def _layout_root(relpaths: list[str]) -> int:
    """How many leading folders all images share above the layout (``data/Train/...``
    in a zip of a folder): they are not labels. Split folders are never stripped."""
    parts = [_parts(p) for p in relpaths]
    depth = 0
    while parts and all(len(p) > depth + 2 for p in parts):
        first = {p[depth] for p in parts}
        if len(first) != 1 or next(iter(first)).lower() in SPLIT_DIRS:
            break
        depth += 1
    return depth


def _split_and_rest(relpath: str, root_depth: int) -> tuple[str, tuple[str, ...]]:
    parts = _parts(relpath)[root_depth:]
    if len(parts) >= 2 and parts[0].lower() in SPLIT_DIRS:
        return SPLIT_DIRS[parts[0].lower()], parts[1:]
    return "", parts


def _read_csvs(files: list[SourceFile], max_file_bytes: int) -> dict[str, pd.DataFrame]:
    """Every readable CSV, by relpath; an unreadable one is simply not a label file (one
    over ``max_file_bytes`` is not read: _refuse_too_large quarantines it)."""
    csvs = {}
    for f in files:
        if (_suffix(f.relpath) == ".csv" and not f.refused_code and not _is_system_file(f.relpath)
                and f.size <= max_file_bytes):
            try:
                csvs[f.relpath] = pd.read_csv(io.BytesIO(read_bytes(f.uri, max_file_bytes)), dtype=str)
            except SourceUnavailable:
                raise
            except (OSError, ValueError, UnicodeDecodeError):
                continue
    return csvs


def detect_format(csvs: dict[str, pd.DataFrame], requested: str = "auto") -> str:
    """The format asked for, else the one a CSV's columns show, else ``folders``."""
    if requested != "auto":
        return requested
    found = {csv_format(list(frame.columns)) for frame in csvs.values()} - {None}
    if len(found) > 1:
        raise IngestError(f"label files of several formats ({', '.join(sorted(found))}): name one with --format")
    return found.pop() if found else "folders"


def label_files(files: list[SourceFile], fmt: str, csvs: dict[str, pd.DataFrame],
                class_map: dict[str, str]) -> tuple[pd.DataFrame, int]:
    """One row per file with its split, labels and group; files that need no decoding
    (ignored, refused, unlabelled) already get their status. Also returns how many
    label-file rows name an image that is not there."""
    table: LabelTable | None = None
    if fmt != "folders":
        try:
            table = label_table(fmt, csvs)
        except ValueError as exc:
            raise IngestError(str(exc)) from None
    used_csvs = {table.label_file: "label file", **{m: "lesion-id metadata file" for m in table.metadata_files}} if table else {}
    images = [f.relpath for f in files if _suffix(f.relpath) in IMAGE_EXTENSIONS and not _is_system_file(f.relpath)]
    root_depth = _layout_root(images)
    keys = ("uri", "relpath", "bytes", "split", "source_label", "label", "group_id", "status", "reason_code", "reason")
    columns: dict[str, list] = {k: [] for k in keys}  # by column: a dict per row would cost ~1 kB a file
    matched_ids = set()
    for f in files:
        split, rest = _split_and_rest(f.relpath, root_depth)
        row = {"uri": f.uri, "relpath": f.relpath, "bytes": f.size, "split": split, "source_label": "", "label": "",
               "group_id": "", "status": "", "reason_code": "", "reason": ""}
        name = _name(f.relpath)
        if f.refused_code:
            row.update(status="quarantined", reason_code=f.refused_code, reason=f.refused_reason)
        elif _is_system_file(f.relpath):
            row.update(status="ignored", reason_code="system_file", reason=f"operating-system or archiver file ({name})")
        elif f.relpath in used_csvs:
            row.update(status="ignored", reason_code="label_file", reason=used_csvs[f.relpath])
        elif _suffix(f.relpath) not in IMAGE_EXTENSIONS:
            kind = "a CSV that is not the label file" if _suffix(f.relpath) == ".csv" else "no image extension"
            row.update(status="ignored", reason_code="not_image_file", reason=f"not an image file: {kind} ({name})")
        elif table is not None:
            image_id = _stem(f.relpath)
            if image_id not in table.source_labels:
                row.update(status="quarantined", reason_code="no_label", reason=f"no row for {image_id} in {table.label_file}")
            else:
                matched_ids.add(image_id)
                row.update(source_label=table.source_labels[image_id], group_id=table.group_ids.get(image_id, ""))
        elif len(rest) < 2:
            row.update(status="quarantined", reason_code="no_label", reason="image outside any class folder")
        else:
            row["source_label"] = rest[0]
        if row["status"] == "":
            label = canonical_label(row["source_label"], class_map)
            if label is None:
                row.update(status="quarantined", reason_code="no_label",
                           reason=f"unknown or missing label {row['source_label']!r}")
            else:
                row["label"] = label
        for k in keys:
            columns[k].append(row[k])
    missing_images = len(set(table.source_labels) - matched_ids) if table else 0
    return pd.DataFrame(columns), missing_images


# ---- validation --------------------------------------------------------------


def inspect_images(uris: list[str], max_pixels: int, max_bytes: int,
                   stop: threading.Event | None = None) -> list[dict]:
    """inspect_image of each of ``uris``, their thumbnails and pHashes made together
    (imaging.phash_pixels_and_thumbs); a decode of more than imaging.STACK_MAX_PIXELS
    (a large image that is not a JPEG) is done with at once, never held for the others."""
    found = []
    for uri in uris:
        found.append(_inspect(uri, max_pixels, max_bytes, stop))
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


def _inspect(uri: str, max_pixels: int, max_bytes: int, stop: threading.Event | None) -> dict:
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
        img, width, height, fmt = decode_rgb_reduced(data, DECODE_MIN_SIDE, max_pixels)
    except ImageError as exc:
        return {"md5": md5, "error_code": exc.code, "error": str(exc)}
    return {"md5": md5, "width": width, "height": height, "image": img, "image_format": fmt, "error_code": "",
            "error": ""}


def _refuse_too_large(df: pd.DataFrame, max_file_bytes: int) -> None:
    """Quarantine, unread, every file ingest would read (an image to decode, a CSV that
    may be the label file) whose listed size is over data.max_file_bytes."""
    would_read = (df.status == "") | ((df.reason_code == "not_image_file") & (df.relpath.map(_suffix) == ".csv"))
    big = df.index[would_read & (df.bytes > max_file_bytes)]
    df.loc[big, ["status", "reason_code"]] = ["quarantined", "too_large"]
    df.loc[big, "reason"] = [f"{n} bytes is over data.max_file_bytes={max_file_bytes}: not read"
                             for n in df.loc[big, "bytes"]]


class ShardFiles:
    """A shard's thumbnails, on disk as they are made, so that neither a shard nor the
    merge holds them in memory: ``thumbs`` is one raw 16x16x3 uint8 row per manifest row
    (zeros where nothing was decoded)."""

    ROW = THUMB_SIDE * THUMB_SIDE * 3

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.thumbs_path = self.folder / filenames.INGEST_SHARD_THUMBS

    def thumbs(self, rows: np.ndarray) -> np.ndarray:
        """The thumbnails of ``rows`` (positions in the shard's rows), read from disk."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), THUMB_SIDE, THUMB_SIDE, 3), dtype=np.uint8)
        with open(self.thumbs_path, "rb") as f:
            fd = f.fileno()
            for k, row in enumerate(rows):
                out[k] = np.frombuffer(os.pread(fd, self.ROW, int(row) * self.ROW), dtype=np.uint8).reshape(
                    THUMB_SIDE, THUMB_SIDE, 3)
        return out


# cgroup v2's CPU quota of this process: "max 100000", or "200000 100000" for 2 CPUs.
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity, capped by a cgroup v2 CPU quota (a
    Kubernetes pod's cpu limit, which os.cpu_count(), the node's count, ignores)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def ingest_threads(cfg: DataConfig, uris: list[str]) -> int:
    """Threads that read and decode ``uris``: data.ingest_workers, or for 0 (the default)
    by source. Objects read one by one from gs:// wait on the network: four threads a CPU,
    at most 32. For local files (a folder, a zip) decoding is the work and more threads
    than CPUs only contend for the interpreter: HAM10000 on 2 CPUs ingested at 1,715 and
    1,727 images/s with 8 threads, 3,125 and 3,120 with 2 (93d8b6b, two runs each;
    bench/ingest_throughput.py, docs/performance.md)."""
    if cfg.ingest_workers:
        return cfg.ingest_workers
    if uris and uris[0].startswith(GCS_SCHEME):
        return min(32, 4 * usable_cpus())
    return usable_cpus()


def _validate(df: pd.DataFrame, cfg: DataConfig, files: ShardFiles) -> None:
    """Decode every labelled image; quarantine the ones that cannot be used. Writes the
    16x16 RGB thumbnails (row ``k`` for ``df``'s ``k``-th row) to ``files`` as the
    results arrive.

    When the source fails, the step fails with the first read that failed for good; the
    reads still running stop retrying and the ones not started never start.
    """
    todo = df.index[df.status == ""]
    stop = threading.Event()
    failures: list[SourceUnavailable] = []

    def inspect(uris: list[str]) -> list[dict]:
        try:
            return inspect_images(uris, cfg.max_image_pixels, cfg.max_file_bytes, stop)
        except SourceUnavailable as exc:
            failures.append(exc)
            stop.set()
            raise

    columns = ("md5", "width", "height", "phash", "image_format", "error_code", "error")
    found: dict[str, list] = {c: [] for c in columns}
    positions = df.index.get_indexer(todo)
    next_row = 0
    files.folder.mkdir(parents=True, exist_ok=True)
    uris = df.loc[todo, "uri"].tolist()
    with ThreadPoolExecutor(max_workers=ingest_threads(cfg, uris)) as pool, open(files.thumbs_path, "wb") as thumbs:
        try:
            # On the first exception, map's iterator cancels every future not yet started.
            batches = pool.map(inspect, [uris[k:k + VALIDATE_BATCH] for k in range(0, len(uris), VALIDATE_BATCH)])
            for position, f in zip(positions, (f for batch in batches for f in batch)):
                if "thumb" in f:
                    if position > next_row:  # rows not decoded: zeros
                        thumbs.write(bytes((position - next_row) * ShardFiles.ROW))
                    thumbs.write(f["thumb"].tobytes())
                    next_row = position + 1
                for column in columns:
                    found[column].append(f.get(column))
        except SourceUnavailable:
            raise failures[0] from None
        thumbs.write(bytes((len(df) - next_row) * ShardFiles.ROW))
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
    df.loc[small, "reason"] = [f"{w}x{h} is below data.min_image_size={cfg.min_image_size}"
                               for w, h in zip(df.loc[small, "width"], df.loc[small, "height"])]


# ---- duplicates --------------------------------------------------------------


def _set(df: pd.DataFrame, index, status: str, code: str, reason: str, duplicate_of: str = "") -> None:
    df.loc[index, ["status", "reason_code", "reason", "duplicate_of"]] = [status, code, reason, duplicate_of]


def resolve_duplicates(df: pd.DataFrame, conflict_policy: str, leak_policy: str) -> list[dict]:
    """Exact-content groups (same md5) among ingested files, resolved in place.

    Same label: keep one (a Test copy when there is one); the others are ignored as
    duplicates. Different labels: a label conflict, resolved by ``conflict_policy``.
    Test and non-Test copies: a leak, resolved by ``leak_policy``; a leak with
    conflicting labels is always quarantined. Returns one record per group.
    """
    groups = []
    md5s = df.md5[df.status == "ingested"]
    for md5, group in df.loc[md5s.index[md5s.duplicated(keep=False)]].groupby("md5", sort=True):
        if len(group) < 2:
            continue
        labels = group.label.value_counts()
        conflict = len(labels) > 1
        leak = bool((group.split == "test").any() and (group.split != "test").any())
        files = group.relpath.tolist()
        # Keep a Test copy first (leaks stay in Test), then the first path.
        ordered = group.assign(not_test=group.split != "test").sort_values(["not_test", "relpath"])
        keep = ordered.index[0]
        if conflict and leak:
            _set(df, group.index, "quarantined", "label_conflict",
                 f"identical image in Train and Test under {', '.join(labels.index)}")
        elif conflict:
            majority = labels.index[0]
            if conflict_policy == "majority" and labels.iloc[0] * 2 > len(group):
                keep = ordered.index[ordered.label == majority][0]
                outvoted = group.index[group.label != majority]
                _set(df, outvoted, "quarantined", "label_conflict",
                     f"identical image filed as {majority} more often", df.at[keep, "uri"])
                _set(df, group.index[(group.label == majority) & (group.index != keep)], "ignored", "duplicate",
                     f"exact duplicate of {df.at[keep, 'relpath']}", df.at[keep, "uri"])
            else:
                _set(df, group.index, "quarantined", "label_conflict",
                     f"identical image filed as {', '.join(sorted(labels.index))}")
        elif leak and leak_policy == "quarantine":
            _set(df, group.index, "quarantined", "split_leak", "identical image in Train and Test")
        else:
            code, why = ("split_leak", "in Test: kept there only") if leak else ("duplicate", "exact duplicate")
            _set(df, ordered.index[1:], "ignored", code, f"{why} of {df.at[keep, 'relpath']}", df.at[keep, "uri"])
        groups.append({"md5": md5, "files": files, "labels": sorted(labels.index), "label_conflict": conflict,
                       "split_leak": leak, "kept": df.at[keep, "relpath"] if df.at[keep, "status"] == "ingested" else ""})
    return groups


def _bands(max_distance: int) -> list[tuple[int, int]]:
    """(shift, width) of the ``max_distance + 1`` bands the 64 bits are cut into: two hashes
    at most ``max_distance`` bits apart agree exactly on at least one band (pigeonhole)."""
    count = min(64, max_distance + 1)
    widths = [64 // count + (1 if b < 64 % count else 0) for b in range(count)]
    shifts = [sum(widths[:b]) for b in range(count)]
    return list(zip(shifts, widths))


def _hamming_pairs(hashes: np.ndarray, max_distance: int, block: int = NEAR_DUPLICATE_BLOCK,
                   keep=None) -> np.ndarray:
    """Index pairs (i < j, shape (k, 2), sorted) of 64-bit hashes at most ``max_distance``
    bits apart, by multi-index hashing: for each band, hashes are bucketed by the band's
    value and only hashes sharing a bucket are compared (exactly, all 64 bits). The work is
    the sum of the buckets' squared sizes, not n²; a large bucket (many images alike in a
    band) is compared a few rows at a time, about ``block`` pairs, so memory stays bounded.
    ``keep`` (pairs -> bool mask), when given, filters each block's pairs as they are
    found, so that only the pairs it keeps are ever held."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if n < 2 or max_distance < 0:
        return np.empty((0, 2), dtype=np.int64)
    found = []

    def add(pairs: np.ndarray) -> None:
        pairs = pairs.astype(np.int64)
        found.append(pairs[keep(pairs)] if keep is not None and len(pairs) else pairs)

    if max_distance >= 63:  # every pair: a band would be under one bit wide
        i, j = np.triu_indices(n, k=1)
        close = np.bitwise_count(hashes[i] ^ hashes[j]) <= max_distance
        add(np.stack([i[close], j[close]], axis=1))
    else:
        for shift, width in _bands(max_distance):
            keys = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
            order = np.argsort(keys, kind="stable")
            sorted_keys = keys[order]
            starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
            sizes = np.diff(np.r_[starts, n])
            for start, size in zip(starts[sizes > 1], sizes[sizes > 1]):
                members = np.sort(order[start:start + size])  # ascending: pairs come out as i < j
                member_hashes = hashes[members]
                step = max(1, block // size)
                for row in range(0, size, step):
                    rows = member_hashes[row:row + step]
                    # Only columns after the block's first row can pair with it as i < j.
                    distance = np.bitwise_count(rows[:, None] ^ member_hashes[None, row:])
                    a, b = np.nonzero(distance <= max_distance)
                    upper = a < b
                    add(np.stack([members[a[upper] + row], members[b[upper] + row]], axis=1))
    pairs = np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)
    # A pair agreeing on several bands is found once per band.
    codes = np.unique(pairs[:, 0] * n + pairs[:, 1])
    return np.stack([codes // n, codes % n], axis=1)


class _Rows:
    """``base[index[rows]]`` as ``rows``' thumbnails: a thumbnail store seen through an index."""

    def __init__(self, base, index: np.ndarray):
        self.base, self.index = base, np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, rows) -> np.ndarray:
        return self.base[self.index[np.asarray(rows, dtype=np.int64)]]


def _close_thumbnails(thumbs, pairs: np.ndarray, max_pixel_difference: float, chunk: int = 4096) -> np.ndarray:
    """Which ``pairs`` have thumbnails at most ``max_pixel_difference`` apart (mean absolute
    difference over every pixel and channel, 0-255); ``chunk`` pairs at a time (~20 MB).
    ``thumbs[rows]`` gives the thumbnails of ``rows`` (an array, or a store on disk):
    each one is fetched once per chunk."""
    keep = np.zeros(len(pairs), dtype=bool)
    for start in range(0, len(pairs), chunk):
        block = pairs[start:start + chunk]
        rows, inverse = np.unique(block, return_inverse=True)
        inverse = inverse.reshape(block.shape)
        flat = np.asarray(thumbs[rows]).reshape(len(rows), -1)
        total = np.abs(flat[inverse[:, 0]].astype(np.int16) - flat[inverse[:, 1]]).sum(axis=1, dtype=np.int64)
        keep[start:start + chunk] = total / flat.shape[1] <= max_pixel_difference
    return keep


def near_duplicate_pairs(hashes: np.ndarray, thumbs, max_distance: int,
                         max_pixel_difference: float) -> list[tuple[int, int]]:
    """Pairs (i < j, sorted) close in pHash (multi-index hashing, exact within candidates)
    whose thumbnails also agree pixel for pixel."""
    pairs = _hamming_pairs(hashes, max_distance,
                           keep=lambda pairs: _close_thumbnails(thumbs, pairs, max_pixel_difference))
    return [(int(i), int(j)) for i, j in pairs]


def near_duplicate_edges(hashes: np.ndarray, thumbs, max_distance: int,
                         max_pixel_difference: float) -> list[tuple[int, int]]:
    """Edges whose connected components are the near-duplicate groups: the same groups as
    near_duplicate_pairs gives, without its k² pairs among k copies that are identical in
    pHash and thumbnail (blank or repeated images): those are joined to their first copy
    and searched once. Only images with the same pHash are compared for that, so only
    their thumbnails are read."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if n < 2 or max_pixel_difference < 0:
        return []
    edges: list[tuple[int, int]] = []
    copy = np.zeros(n, dtype=bool)
    order = np.argsort(hashes, kind="stable")
    sorted_hashes = hashes[order]
    starts = np.flatnonzero(np.r_[True, sorted_hashes[1:] != sorted_hashes[:-1]])
    sizes = np.diff(np.r_[starts, n])
    for start, size in zip(starts[sizes > 1], sizes[sizes > 1]):
        members = order[start:start + size]  # ascending (stable sort)
        flat = np.asarray(thumbs[members]).reshape(size, -1)
        _, first, inverse = np.unique(flat, axis=0, return_index=True, return_inverse=True)
        source = first[inverse.reshape(-1)]
        copies = np.flatnonzero(source != np.arange(size))
        copy[members[copies]] = True
        edges += zip(members[source[copies]].tolist(), members[copies].tolist())
    reps = np.flatnonzero(~copy)
    for a, b in near_duplicate_pairs(hashes[reps], _Rows(thumbs, reps), max_distance, max_pixel_difference):
        edges.append((int(reps[a]), int(reps[b])))
    return edges


def mark_near_duplicates(df: pd.DataFrame, thumbs, cfg: DataConfig) -> list[dict]:
    """Group ingested images that are near-copies of each other (re-encoded, resized,
    slightly shifted); they stay ingested, are reported, and split keeps them together.
    ``thumbs[k]`` is the thumbnail of ``df``'s ``k``-th row (an array or a store on disk)."""
    df["near_duplicate_group"] = ""
    rows_ingested = np.flatnonzero((df.status == "ingested").to_numpy())
    if cfg.near_duplicate_distance < 0 or len(rows_ingested) < 2:
        return []
    hashes = df.phash_u64.to_numpy(dtype=np.uint64)[rows_ingested]
    edges = np.array(near_duplicate_edges(hashes, _Rows(thumbs, rows_ingested), cfg.near_duplicate_distance,
                                          cfg.near_duplicate_max_pixel_difference), dtype=np.int64).reshape(-1, 2)
    if not len(edges):
        return []
    sets = UnionFind()
    for i, j in edges.tolist():  # few: one per near-copy
        sets.union(i, j)
    joined = np.unique(edges)  # every image in a group of two or more
    component = np.array([sets.find(i) for i in joined.tolist()], dtype=np.int64)
    # Numbered in manifest order of each group's first file, whatever order the search found them in.
    _, first = np.unique(component, return_index=True)  # joined is ascending: first = each group's first file
    rank = dict(zip(component[first].tolist(), np.argsort(np.argsort(joined[first])).tolist()))
    ranks = np.array([rank[c] for c in component.tolist()], dtype=np.int64)
    members = joined[np.argsort(ranks, kind="stable")]
    bounds = np.flatnonzero(np.diff(np.sort(ranks))) + 1
    positions = rows_ingested[members]
    relpaths, labels, splits = (df[c].to_numpy()[positions] for c in ("relpath", "label", "split"))
    group_of = np.empty(len(members), dtype=object)
    groups = []
    for number, rows in enumerate(np.split(np.arange(len(members)), bounds), start=1):
        group_id = f"near-{number:05d}"
        group_of[rows] = group_id
        row_splits = splits[rows]
        groups.append({"group": group_id, "files": relpaths[rows].tolist(), "labels": sorted(set(labels[rows])),
                       "splits": sorted(set(row_splits) - {""}),
                       "label_conflict": len(set(labels[rows])) > 1,
                       "split_leak": bool((row_splits == "test").any() and (row_splits != "test").any())})
    df.loc[df.index[positions], "near_duplicate_group"] = group_of
    return groups


def _cap_per_class(df: pd.DataFrame, cap: int, seed: int) -> None:
    if cap <= 0:
        return
    for _, group in df[df.status == "ingested"].groupby("label"):
        if len(group) > cap:
            dropped = group.sample(len(group) - cap, random_state=seed).index
            _set(df, dropped, "ignored", "over_cap", f"over data.max_images_per_class={cap}")


# ---- the step: shards and their merge ------------------------------------------


@dataclass
class IngestShard:
    """One shard's share of ingest: every ``num_shards``-th file of the listing decoded
    and checked. ``rows`` are its files' manifest rows so far (index: the file's position
    in the whole listing), ``files`` its thumbnails on disk (row ``k`` for
    ``rows``' ``k``-th row), and ``meta`` what every shard sees alike (the listing's
    digest, format, label counts)."""
    rows: pd.DataFrame
    files: ShardFiles
    meta: dict
    scratch: tempfile.TemporaryDirectory | None = None  # holds ``files`` when no folder was given


def ingest_shard(source_uri: str, cfg: DataConfig, shard_index: int = 0, num_shards: int = 1,
                 folder: str | Path | None = None) -> IngestShard:
    """List and label the whole source (cheap: no file is opened but the CSVs), then
    decode and check shard ``shard_index`` of ``num_shards``: the files at listing
    positions ``shard_index``, ``shard_index + num_shards``, ... Thumbnails go to
    ``folder`` (default: a temporary folder that lives as long as the shard)."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard {shard_index} of {num_shards}")
    source: Source = open_source(source_uri, cfg)
    files = source.list_files()
    if not files:
        raise IngestError(f"no files found in {source.root}")
    csvs = {} if source.synthetic else _read_csvs(files, cfg.max_file_bytes)
    fmt = "folders" if source.synthetic else detect_format(csvs, cfg.format)
    df, label_rows_without_image = label_files(files, fmt, csvs, cfg.class_map)
    _refuse_too_large(df, cfg.max_file_bytes)
    for column, empty in (("md5", ""), ("phash", ""), ("image_format", ""), ("width", 0), ("height", 0),
                          ("duplicate_of", "")):
        df[column] = empty
    meta = {"shard_index": shard_index, "num_shards": num_shards, "source_root": source.root,
            "synthetic": source.synthetic, "format": fmt, "files_found": len(df),
            "listing_digest": hashlib.sha256("\n".join(f"{f.relpath}\t{f.size}" for f in files).encode()).hexdigest(),
            "counts_before": {k: int(v) for k, v in df[df.label != ""].label.value_counts().sort_index().items()},
            "label_rows_without_image": int(label_rows_without_image)}
    del files, csvs
    rows = df.iloc[shard_index::num_shards].copy()
    del df
    scratch = tempfile.TemporaryDirectory(prefix="ingest-shard-") if folder is None else None
    shard_files = ShardFiles(scratch.name if scratch else folder)
    _validate(rows, cfg, shard_files)
    return IngestShard(rows, shard_files, meta, scratch)


class _MergedThumbs:
    """The shards' thumbnails by listing position, read from their files when asked."""

    def __init__(self, shards: list[IngestShard], files_found: int):
        self.shards = shards
        self.shard = np.full(files_found, -1, dtype=np.int32)
        self.row = np.zeros(files_found, dtype=np.int64)
        for k, s in enumerate(shards):
            positions = s.rows.index.to_numpy()
            self.shard[positions], self.row[positions] = k, np.arange(len(positions))

    def __getitem__(self, positions) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        out = np.empty((len(positions), THUMB_SIDE, THUMB_SIDE, 3), dtype=np.uint8)
        for k, s in enumerate(self.shards):
            mine = np.flatnonzero(self.shard[positions] == k)
            if len(mine):
                out[mine] = s.files.thumbs(self.row[positions[mine]])
        return out


def report_previews(df: pd.DataFrame, uris: set[str], cfg: DataConfig) -> dict[str, bytes]:
    """The report's previews (ingest_report.preview_jpeg, by URI) of the files of ``uris``
    that ingest decoded: each read again from the source (components.data.sources.read_bytes,
    as the shards read it) and decoded as the shards decode, so a preview is the one the
    shard would have made. Called with the few hundred files the report shows (shown_uris).

    Never fails the step: a file that can no longer be read, or whose bytes are not the
    ones ingested any more (another md5), gets no preview ("[no preview]" in the report);
    once the source itself fails (SourceError), the reads still running stop retrying and
    the ones not started are not tried."""
    rows = df.loc[df.uri.isin(uris) & (df.phash != ""), ["uri", "md5"]]
    stop = threading.Event()

    def preview(uri: str, md5: str) -> bytes:
        if stop.is_set():
            return b""
        try:
            data = read_bytes(uri, cfg.max_file_bytes, stop)
            if hashlib.md5(data).hexdigest() != md5:
                return b""
            return preview_jpeg(decode_rgb_reduced(data, DECODE_MIN_SIDE, cfg.max_image_pixels)[0])
        except SourceError:  # SourceUnavailable too: the source, not this file
            stop.set()
        except (OSError, ImageError):
            pass
        return b""

    readable = rows.uri.tolist()
    with ThreadPoolExecutor(max_workers=ingest_threads(cfg, readable)) as pool:
        jpegs = list(pool.map(preview, readable, rows.md5.tolist()))
    return {uri: jpeg for uri, jpeg in zip(readable, jpegs) if jpeg}


def merge_shards(shards: list[IngestShard], cfg: DataConfig, output_dir: str | Path | None = None) -> IngestResult:
    """The whole ingest from its shards: exact duplicates, label conflicts and Train/Test
    leaks (md5), the per-class cap and near-duplicates (pHash + thumbnail) across every
    shard, then the manifest and reports, the same as one shard over the whole listing.
    Thumbnails stay in the shards' files: only those of images equal or close in pHash
    are read. The report's previews are made here, for the few hundred files it shows
    only, read again from the source (report_previews)."""
    if not shards:
        raise IngestError("ingest: no shards to merge")
    first = shards[0].meta
    found = sorted(s.meta["shard_index"] for s in shards)
    if found != list(range(first["num_shards"])):
        raise IngestError(f"ingest: expected shards 0..{first['num_shards'] - 1}, got {found}")
    if len({s.meta["listing_digest"] for s in shards}) > 1:
        raise IngestError(f"the source {first['source_root']} changed while it was ingested: run again")
    store = _MergedThumbs(shards, first["files_found"])
    df = pd.concat([s.rows for s in shards])
    for s in shards:  # the merge consumes the shards' rows: one copy of the manifest at a time
        s.rows = s.rows.iloc[:0]
    df = df.sort_index(kind="stable")
    if not np.array_equal(df.index.to_numpy(), np.arange(first["files_found"])):
        raise IngestError("ingest: the shards do not cover the listing once")
    df.loc[df.status == "", "status"] = "ingested"
    duplicate_groups = resolve_duplicates(df, cfg.label_conflict_policy, cfg.split_leak_policy)
    _cap_per_class(df, cfg.max_images_per_class, cfg.seed)
    near_groups = mark_near_duplicates(df, store, cfg)
    df = df[MANIFEST_COLUMNS].astype({"width": int, "height": int, "bytes": int}).reset_index(drop=True)

    report = build_report(df, source_root=first["source_root"], synthetic=first["synthetic"], fmt=first["format"],
                          counts_before=first["counts_before"], duplicate_groups=duplicate_groups,
                          near_groups=near_groups, label_rows_without_image=first["label_rows_without_image"])
    if output_dir is not None:
        # Written first: when the data is unusable, the per-file reasons are what the user reads.
        write_outputs(df, report, Path(output_dir), report_previews(df, shown_uris(df, report), cfg))
    check_usable(report, cfg, Path(output_dir) / filenames.INGEST_REPORT_HTML if output_dir is not None else None)
    return IngestResult(df, report)


def ingest(source_uri: str, cfg: DataConfig, output_dir: str | Path | None = None) -> IngestResult:
    """Ingest ``source_uri`` (empty: the synthetic set) in this process, as one shard;
    write the outputs to ``output_dir``."""
    return merge_shards([ingest_shard(source_uri, cfg)], cfg, output_dir)


def save_shard(shard: IngestShard, output_dir: str | Path) -> None:
    """A shard as files, for the merge task: rows, thumbnails, meta (written last:
    a folder without it is incomplete). Nothing is copied when the shard was made there."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if shard.files.folder.resolve() != out.resolve():
        shutil.copyfile(shard.files.thumbs_path, out / filenames.INGEST_SHARD_THUMBS)
    shard.rows.rename_axis("position").reset_index().to_parquet(out / filenames.INGEST_SHARD_ROWS, index=False)
    (out / filenames.INGEST_SHARD_META).write_text(json.dumps(shard.meta))


def load_shard(shard_dir: str | Path) -> IngestShard:
    folder = Path(shard_dir)
    meta_file = folder / filenames.INGEST_SHARD_META
    if not meta_file.exists():
        raise IngestError(f"ingest: incomplete shard in {folder}")
    rows = pd.read_parquet(folder / filenames.INGEST_SHARD_ROWS).set_index("position")
    rows.index.name = None
    return IngestShard(rows, ShardFiles(folder), json.loads(meta_file.read_text()))


def check_usable(report: dict, cfg: DataConfig, report_path: Path | None = None) -> None:
    """Enough usable images to train on, or one line saying why and where the report with
    every file's reason is (``report_path``, written before this check)."""
    where = f"; every file's reason: {report_path}" if report_path is not None else ""
    if report["ingested"] == 0:
        reasons = report["reason_counts"]["quarantined"]
        hint = f" (most common quarantine reason: {max(reasons, key=reasons.get)})" if reasons else ""
        raise IngestError(f"no usable images in {report['source']}: {report['files_found']} files found{hint}{where}")
    if len(report["classes"]) < 2:
        raise IngestError(f"only one class found ({report['classes'][0]}): a classifier needs at least two{where}")
    small = {c: n for c, n in report["class_counts"].items() if n < cfg.min_images_per_class}
    if small:
        raise IngestError(
            f"classes with fewer than data.min_images_per_class={cfg.min_images_per_class} images: "
            + ", ".join(f"{c} ({n})" for c, n in sorted(small.items())) + where)


def ingest_shard_step(data_uri: str, data: dict, shard_index: int, shard: dsl.Output[dsl.Dataset],
                      source_listing: str = ""):
    """KFP wrapper: shard ``shard_index`` of ``data.ingest_shards``. ``source_listing`` (a
    digest of the source's file list) is not read: it is there so that KFP's cache key
    changes whenever the source does."""
    from components.core import atomic
    from components.core.errors import user_errors
    from components.core.settings import DataConfig, load_section
    from components.data.ingest import ingest_shard, save_shard

    with user_errors(), atomic.output_dir(shard.path) as partial:
        cfg = load_section(DataConfig, data, "data.")
        save_shard(ingest_shard(data_uri, cfg, shard_index, cfg.ingest_shards, partial), partial)


def ingest_merge_step(shards: dsl.Input[List[dsl.Dataset]], data: dict, manifest: dsl.Output[dsl.Dataset],
                      report_md: dsl.Output[dsl.Markdown], report_html: dsl.Output[dsl.HTML]):
    """KFP wrapper: the shard tasks' outputs as one manifest and report. The report's
    previews are made from the files it shows, read again by their manifest URIs (no
    source URI needed); ``data`` gives the read and decode limits and the threads."""
    import shutil
    from pathlib import Path

    from components.core import atomic, filenames
    from components.core.errors import user_errors
    from components.core.settings import DataConfig, load_section
    from components.data.ingest import load_shard, merge_shards

    with user_errors(), atomic.output_dir(manifest.path) as partial:
        result = merge_shards([load_shard(s.path) for s in shards], load_section(DataConfig, data, "data."), partial)
    out = Path(manifest.path)
    shutil.copyfile(out / filenames.INGEST_REPORT_MD, report_md.path)
    shutil.copyfile(out / filenames.INGEST_REPORT_HTML, report_html.path)
    manifest.metadata.update({k: result.report[k] for k in ("files_found", "ingested", "quarantined", "ignored")})

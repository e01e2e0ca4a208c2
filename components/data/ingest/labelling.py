"""Which files of a listing are images to decode, and each one's split, label and lesion
or patient group: from the folder layout (``Train/<class>/...``) or from a label CSV.
Every other file is ignored or quarantined here, with its reason; so is every file ingest
would read that is over data.max_file_bytes."""

import functools
import hashlib
import io
from pathlib import PurePosixPath

import pandas as pd

from components.core.errors import UserError
from components.data.imaging import IMAGE_EXTENSIONS
from components.data.labels import METADATA_COLUMNS, LabelTable, canonical_label, csv_format, label_table
from components.data.sources import read_bytes
from components.data.sources.base import SourceFile, SourceUnavailable

SPLIT_DIRS = {"train": "train", "test": "test"}
# Files that operating systems and archivers leave behind; never data.
SYSTEM_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}


class IngestError(UserError):
    """The data is not usable for training: one line for the user."""


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


def read_csvs(files: list[SourceFile], max_file_bytes: int) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """Every readable CSV, by relpath, and the md5 of every CSV read (the label files are
    small, and a same-length edit of one leaves its size as it was: the listing digest
    holds these md5s). An unreadable one is simply not a label file (one over
    ``max_file_bytes`` is not read: refuse_too_large quarantines it)."""
    csvs, md5s = {}, {}
    for f in files:
        if (
            _suffix(f.relpath) == ".csv"
            and not f.refused_code
            and not _is_system_file(f.relpath)
            and f.size <= max_file_bytes
        ):
            try:
                data = read_bytes(f.uri, max_file_bytes)
                md5s[f.relpath] = hashlib.md5(data).hexdigest()
                csvs[f.relpath] = pd.read_csv(io.BytesIO(data), dtype=str)
            except SourceUnavailable:
                raise
            except (OSError, ValueError, UnicodeDecodeError):
                continue
    return csvs, md5s


def detect_format(csvs: dict[str, pd.DataFrame], requested: str = "auto") -> str:
    """The format asked for, else the one a CSV's columns show, else ``folders``."""
    if requested != "auto":
        return requested
    found = {csv_format(list(frame.columns)) for frame in csvs.values()} - {None}
    if len(found) > 1:
        raise IngestError(f"label files of several formats ({', '.join(sorted(found))}): name one with --format")
    return found.pop() if found else "folders"


def label_files(
    files: list[SourceFile], fmt: str, csvs: dict[str, pd.DataFrame], class_map: dict[str, str]
) -> tuple[pd.DataFrame, int]:
    """One row per file with its split, labels and group; files that need no decoding
    (ignored, refused, unlabelled) already get their status. Also returns how many
    label-file rows name an image that is not there."""
    table: LabelTable | None = None
    if fmt != "folders":
        try:
            table = label_table(fmt, csvs)
        except ValueError as exc:
            raise IngestError(str(exc)) from None
    used_csvs = (
        {table.label_file: "label file", **{m: "lesion-id metadata file" for m in table.metadata_files}}
        if table
        else {}
    )
    images = [f.relpath for f in files if _suffix(f.relpath) in IMAGE_EXTENSIONS and not _is_system_file(f.relpath)]
    root_depth = _layout_root(images)
    keys = (
        "uri",
        "relpath",
        "bytes",
        "split",
        "source_label",
        "label",
        "group_id",
        "status",
        "reason_code",
        "reason",
        *METADATA_COLUMNS,
    )
    columns: dict[str, list] = {k: [] for k in keys}  # by column: a dict per row would cost ~1 kB a file
    matched_ids: set[str] = set()
    for f in files:
        row = _file_row(f, root_depth, table, used_csvs, class_map, matched_ids)
        for k in keys:
            columns[k].append(row[k])
    missing_images = len(set(table.source_labels) - matched_ids) if table else 0
    return pd.DataFrame(columns), missing_images


def _file_row(
    f: SourceFile,
    root_depth: int,
    table: LabelTable | None,
    used_csvs: dict[str, str],
    class_map: dict[str, str],
    matched_ids: set[str],
) -> dict:
    """``f``'s row: its split, labels, group and metadata, or the status and reason of a file
    that needs no decoding; the label table's image ids it matches go into ``matched_ids``."""
    split, rest = _split_and_rest(f.relpath, root_depth)
    row = {
        "uri": f.uri,
        "relpath": f.relpath,
        "bytes": f.size,
        "split": split,
        "source_label": "",
        "label": "",
        "group_id": "",
        "status": "",
        "reason_code": "",
        "reason": "",
        **dict.fromkeys(METADATA_COLUMNS, ""),
    }
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
            row.update(
                status="quarantined", reason_code="no_label", reason=f"no row for {image_id} in {table.label_file}"
            )
        else:
            matched_ids.add(image_id)
            row.update(source_label=table.source_labels[image_id], group_id=table.group_ids.get(image_id, ""))
            row.update(table.metadata.get(image_id, {}))
    elif len(rest) < 2:
        row.update(status="quarantined", reason_code="no_label", reason="image outside any class folder")
    else:
        row["source_label"] = rest[0]
    if row["status"] == "":
        label = canonical_label(row["source_label"], class_map)
        if label is None:
            row.update(
                status="quarantined", reason_code="no_label", reason=f"unknown or missing label {row['source_label']!r}"
            )
        else:
            row["label"] = label
    return row


def refuse_too_large(df: pd.DataFrame, max_file_bytes: int) -> None:
    """Quarantine, unread, every file ingest would read (an image to decode, a CSV that
    may be the label file) whose listed size is over data.max_file_bytes."""
    would_read = (df.status == "") | ((df.reason_code == "not_image_file") & (df.relpath.map(_suffix) == ".csv"))
    big = df.index[would_read & (df.bytes > max_file_bytes)]
    df.loc[big, ["status", "reason_code"]] = ["quarantined", "too_large"]
    df.loc[big, "reason"] = [
        f"{n} bytes is over data.max_file_bytes={max_file_bytes}: not read" for n in df.loc[big, "bytes"]
    ]

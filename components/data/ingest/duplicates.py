"""Duplicates among the ingested images: exact copies (same md5), with the label
conflicts and Train/Test leaks they reveal, and near-copies (close pHash and thumbnail),
found by multi-index hashing in memory bounded by the number of images, not its square."""

import numpy as np
import pandas as pd

from components.core.settings import DataConfig
from components.data.union_find import UnionFind

# Hash pairs compared at once in the near-duplicate search: a large pHash bucket is
# compared in blocks of rows of about this many pairs (8 bytes each, so ~32 MB).
NEAR_DUPLICATE_BLOCK = 1 << 22


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
            _set(
                df,
                group.index,
                "quarantined",
                "label_conflict",
                f"identical image in Train and Test under {', '.join(labels.index)}",
            )
        elif conflict:
            majority = labels.index[0]
            if conflict_policy == "majority" and labels.iloc[0] * 2 > len(group):
                keep = ordered.index[ordered.label == majority][0]
                outvoted = group.index[group.label != majority]
                _set(
                    df,
                    outvoted,
                    "quarantined",
                    "label_conflict",
                    f"identical image filed as {majority} more often",
                    df.at[keep, "uri"],
                )
                _set(
                    df,
                    group.index[(group.label == majority) & (group.index != keep)],
                    "ignored",
                    "duplicate",
                    f"exact duplicate of {df.at[keep, 'relpath']}",
                    df.at[keep, "uri"],
                )
            else:
                _set(
                    df,
                    group.index,
                    "quarantined",
                    "label_conflict",
                    f"identical image filed as {', '.join(sorted(labels.index))}",
                )
        elif leak and leak_policy == "quarantine":
            _set(df, group.index, "quarantined", "split_leak", "identical image in Train and Test")
        else:
            code, why = ("split_leak", "in Test: kept there only") if leak else ("duplicate", "exact duplicate")
            _set(df, ordered.index[1:], "ignored", code, f"{why} of {df.at[keep, 'relpath']}", df.at[keep, "uri"])
        groups.append(
            {
                "md5": md5,
                "files": files,
                "labels": sorted(labels.index),
                "label_conflict": conflict,
                "split_leak": leak,
                "kept": df.at[keep, "relpath"] if df.at[keep, "status"] == "ingested" else "",
            }
        )
    return groups


def _bands(max_distance: int) -> list[tuple[int, int]]:
    """(shift, width) of the ``max_distance + 1`` bands the 64 bits are cut into: two hashes
    at most ``max_distance`` bits apart agree exactly on at least one band (pigeonhole)."""
    count = min(64, max_distance + 1)
    widths = [64 // count + (1 if b < 64 % count else 0) for b in range(count)]
    shifts = [sum(widths[:b]) for b in range(count)]
    return list(zip(shifts, widths))


def _hamming_pairs(hashes: np.ndarray, max_distance: int, block: int = NEAR_DUPLICATE_BLOCK, keep=None) -> np.ndarray:
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
                members = np.sort(order[start : start + size])  # ascending: pairs come out as i < j
                member_hashes = hashes[members]
                step = max(1, block // size)
                for row in range(0, size, step):
                    rows = member_hashes[row : row + step]
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
        block = pairs[start : start + chunk]
        rows, inverse = np.unique(block, return_inverse=True)
        inverse = inverse.reshape(block.shape)
        flat = np.asarray(thumbs[rows]).reshape(len(rows), -1)
        total = np.abs(flat[inverse[:, 0]].astype(np.int16) - flat[inverse[:, 1]]).sum(axis=1, dtype=np.int64)
        keep[start : start + chunk] = total / flat.shape[1] <= max_pixel_difference
    return keep


def near_duplicate_pairs(
    hashes: np.ndarray, thumbs, max_distance: int, max_pixel_difference: float
) -> list[tuple[int, int]]:
    """Pairs (i < j, sorted) close in pHash (multi-index hashing, exact within candidates)
    whose thumbnails also agree pixel for pixel."""
    pairs = _hamming_pairs(
        hashes, max_distance, keep=lambda pairs: _close_thumbnails(thumbs, pairs, max_pixel_difference)
    )
    return [(int(i), int(j)) for i, j in pairs]


def near_duplicate_edges(
    hashes: np.ndarray, thumbs, max_distance: int, max_pixel_difference: float
) -> list[tuple[int, int]]:
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
        members = order[start : start + size]  # ascending (stable sort)
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
    edges = np.array(
        near_duplicate_edges(
            hashes, _Rows(thumbs, rows_ingested), cfg.near_duplicate_distance, cfg.near_duplicate_max_pixel_difference
        ),
        dtype=np.int64,
    ).reshape(-1, 2)
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
        groups.append(
            {
                "group": group_id,
                "files": relpaths[rows].tolist(),
                "labels": sorted(set(labels[rows])),
                "splits": sorted(set(row_splits) - {""}),
                "label_conflict": len(set(labels[rows])) > 1,
                "split_leak": bool((row_splits == "test").any() and (row_splits != "test").any()),
            }
        )
    df.loc[df.index[positions], "near_duplicate_group"] = group_of
    return groups

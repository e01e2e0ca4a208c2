"""The near-duplicate search (multi-index hashing on pHash bands) finds exactly what
comparing every pair finds."""

from __future__ import annotations

import numpy as np
import pytest

from components.data.ingest.duplicates import _hamming_pairs, near_duplicate_edges, near_duplicate_pairs
from components.data.union_find import UnionFind


def all_pairs(hashes: np.ndarray, thumbs: np.ndarray, max_distance: int, max_diff: float) -> list[tuple[int, int]]:
    """The reference: every pair compared (the search ingest used before, O(n²))."""
    distance = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    out = []
    for i, j in zip(*np.nonzero(distance <= max_distance)):
        if i < j and np.abs(thumbs[i].astype(np.int16) - thumbs[j]).mean() <= max_diff:
            out.append((int(i), int(j)))
    return sorted(out)


def components(n: int, edges) -> set[frozenset[int]]:
    sets = UnionFind()
    for i, j in edges:
        sets.union(i, j)
    groups: dict = {}
    for i in range(n):
        groups.setdefault(sets.find(i), set()).add(i)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def planted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random hashes and thumbnails, with planted copies 0..8 bits away (some with a
    thumbnail a little or a lot off), identical copies, and a block of blank images."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    thumbs = rng.integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8)
    for k in range(n // 4):
        src, dst = rng.integers(0, n, size=2)
        flips = rng.choice(64, size=rng.integers(0, 9), replace=False)
        hashes[dst] = hashes[src] ^ np.uint64(sum(1 << int(b) for b in flips))
        noise = rng.integers(-12 if k % 3 else -2, 13 if k % 3 else 3, size=(16, 16, 3))
        thumbs[dst] = np.clip(thumbs[src].astype(int) + noise, 0, 255).astype(np.uint8)
    blank = rng.choice(n, size=n // 20, replace=False)
    hashes[blank], thumbs[blank] = 0, 0
    return hashes, thumbs


@pytest.mark.parametrize("max_distance", [0, 1, 6, 10])
def test_hamming_pairs_equal_all_pairs(max_distance):
    hashes, _ = planted(1500, seed=max_distance)
    distance = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    i, j = np.nonzero(np.triu(distance <= max_distance, k=1))
    assert list(map(tuple, _hamming_pairs(hashes, max_distance, block=64 * 50).tolist())) == sorted(
        zip(i.tolist(), j.tolist())
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_near_duplicate_search_equals_all_pairs(seed):
    hashes, thumbs = planted(1200, seed)
    expected = all_pairs(hashes, thumbs, 6, 5.0)
    assert len(expected) > 100
    assert near_duplicate_pairs(hashes, thumbs, 6, 5.0) == expected
    # The edges ingest groups with: the same groups, fewer pairs among identical copies.
    edges = near_duplicate_edges(hashes, thumbs, 6, 5.0)
    assert components(len(hashes), edges) == components(len(hashes), expected)
    assert len(edges) < len(expected)

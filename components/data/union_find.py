"""Union-find (disjoint sets) over any hashable keys: how ingest groups near-duplicate
images and split groups files that must stay on one side (same lesion, same content)."""

from __future__ import annotations

from collections.abc import Hashable


class UnionFind:
    def __init__(self) -> None:
        self._parent: dict[Hashable, Hashable] = {}

    def find(self, key: Hashable) -> Hashable:
        """The representative of ``key``'s set (a new key is a set of its own)."""
        while self._parent.setdefault(key, key) != key:
            self._parent[key] = self._parent[self._parent[key]]  # path halving
            key = self._parent[key]
        return key

    def union(self, a: Hashable, b: Hashable) -> None:
        self._parent[self.find(a)] = self.find(b)

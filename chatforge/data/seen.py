"""A compact set of ids for global dedup over a stream: 8 bytes per id, not a Python string per id.

prepare_data refuses a second record with the same (kind, id) across every source, so it must remember
every id it accepted: O(N) memory whatever we do. ``SeenIds`` keeps a 64-bit hash of each key in a sorted
numpy array (8 bytes an id, ~80 MB per 10M ids) plus a small Python set of the newest hashes, merged into
the array when it fills. A Python set of the id strings costs ~100 bytes an id.

Two different ids with the same 64-bit hash would make the second look like a duplicate: about
n^2 / 2^65, i.e. 3e-6 for 10M ids and 3e-4 for 100M (the birthday bound).
"""

from __future__ import annotations

import hashlib

import numpy as np


def key_hash(key: str) -> int:
    """A 64-bit hash of ``key`` (blake2b: stable across processes and Python versions, unlike hash())."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


class SeenIds:
    """``add(key)`` says whether ``key`` is new (and remembers it). Memory: 8 bytes per key plus the buffer."""

    def __init__(self, buffer: int = 1 << 16) -> None:
        self._sorted = np.zeros(0, dtype=np.uint64)
        self._recent: set[int] = set()
        self._buffer = buffer

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def _in_sorted(self, h: int) -> bool:
        i = int(np.searchsorted(self._sorted, np.uint64(h)))
        return i < len(self._sorted) and int(self._sorted[i]) == h

    def add(self, key: str) -> bool:
        h = key_hash(key)
        if h in self._recent or self._in_sorted(h):
            return False
        self._recent.add(h)
        if len(self._recent) >= self._buffer:
            # a merge copies the array: O(N) every `buffer` adds, cheap next to reading N records
            self._sorted = np.union1d(self._sorted, np.fromiter(self._recent, np.uint64, len(self._recent)))
            self._recent.clear()
        return True

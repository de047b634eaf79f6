"""A least-recently-used cache of embeddings keyed by (model, input type, text), bounded in entries and bytes.

A bound on entries alone is not a bound on memory: one entry's text may be megabytes long. Each entry
is charged its vector, its text and a fixed overhead for the Python objects around them.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import NamedTuple

import numpy as np


class CachedEmbedding(NamedTuple):
    vector: np.ndarray
    tokens: int


CacheKey = tuple[str, str | None, str]

_ENTRY_OVERHEAD = 240  # the key tuple, the NamedTuple, the ndarray header and the OrderedDict slot


def entry_bytes(key: CacheKey, entry: CachedEmbedding) -> int:
    return entry.vector.nbytes + sys.getsizeof(key[2]) + _ENTRY_OVERHEAD


class EmbeddingCache:
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[CacheKey, CachedEmbedding] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> CachedEmbedding | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: CacheKey, entry: CachedEmbedding) -> None:
        size = entry_bytes(key, entry)
        if not self.enabled or size > self.max_bytes:
            return
        previous = self._entries.pop(key, None)
        if previous is not None:
            self.bytes -= entry_bytes(key, previous)
        self._entries[key] = entry
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            old_key, old_entry = self._entries.popitem(last=False)
            self.bytes -= entry_bytes(old_key, old_entry)

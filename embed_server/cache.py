"""A bounded least-recently-used cache of embeddings keyed by (model, input type, text)."""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import numpy as np


class CachedEmbedding(NamedTuple):
    vector: np.ndarray
    tokens: int


CacheKey = tuple[str, str | None, str]


class EmbeddingCache:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[CacheKey, CachedEmbedding] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> CachedEmbedding | None:
        if self.max_entries == 0:
            return None
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: CacheKey, entry: CachedEmbedding) -> None:
        if self.max_entries == 0:
            return
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

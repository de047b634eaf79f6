"""One served model end to end: prefixes, cache, tokenization, length limits, batching."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

import numpy as np

from config import ModelSpec
from embed_server.backends import EmbeddingBackend
from embed_server.batcher import LengthSortedBatcher
from embed_server.cache import CacheKey, CachedEmbedding, EmbeddingCache
from embed_server.errors import InputTooLong, QueueFull
from embed_server.metrics import Metrics
from embed_server.shared_cache import SharedEmbeddingCache, model_fingerprint
from embed_server.token_ids import decode_cl100k

InputType = Literal["query", "document"] | None
Inputs = list[str] | list[list[int]]

# Tokenizing more characters than this moves off the event loop.
_INLINE_TOKENIZE_CHARS = 16_384


@dataclass
class Embeddings:
    vectors: np.ndarray  # (n, dimension) float32
    prompt_tokens: int


class Embedder:
    def __init__(
        self,
        spec: ModelSpec,
        backend: EmbeddingBackend,
        batcher: LengthSortedBatcher,
        cache: EmbeddingCache,
        metrics: Metrics,
        *,
        truncate: bool,
        token_ids: Literal["cl100k_base", "model"],
        shared: SharedEmbeddingCache | None = None,
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.batcher = batcher
        self.cache = cache
        self.metrics = metrics
        self.truncate = truncate
        self.token_ids = token_ids
        self.shared = shared  # Redis, behind the in-process cache: other replicas' vectors
        self.fingerprint = model_fingerprint(spec, backend.identity, truncate=truncate, dimension=backend.dimension,
                                             max_tokens=backend.max_tokens)

    @property
    def dimension(self) -> int:
        return self.backend.dimension

    def _prefix(self, input_type: InputType) -> str:
        if input_type == "query":
            return self.spec.query_prefix
        if input_type == "document":
            return self.spec.document_prefix
        return ""

    async def embed(self, inputs: Inputs, input_type: InputType = None) -> Embeddings:
        if inputs and isinstance(inputs[0], list) and self.token_ids == "model":
            ids = [self._checked(self.backend.wrap_ids(item), index) for index, item in enumerate(inputs)]
            vectors = await self._encode(ids)
            return self._count(Embeddings(vectors, sum(len(i) for i in ids)), hits=0)

        texts = [decode_cl100k(item, index) if isinstance(item, list) else item for index, item in enumerate(inputs)]
        prefix = self._prefix(input_type)
        keys = [(self.spec.id, input_type, prefix + text) for text in texts]
        found = [self.cache.get(key) for key in keys]
        # Repeats inside one request are embedded once.
        missing = list(dict.fromkeys(key for key, entry in zip(keys, found) if entry is None))
        self.metrics.cache_lookups.labels(self.spec.id, "memory", "hit").inc(len(keys) - len(missing))
        self.metrics.cache_lookups.labels(self.spec.id, "memory", "miss").inc(len(missing))
        fresh = await self._from_shared_cache(missing)
        hits = len(keys) - len(missing) + len(fresh)
        missing = [key for key in missing if key not in fresh]
        if missing:
            first_index = {key: index for index, key in reversed(list(enumerate(keys)))}
            tokenized = await self._tokenize([key[2] for key in missing])
            ids = [self._checked(item, first_index[key]) for item, key in zip(tokenized, missing)]
            vectors = await self._encode(ids)
            encoded = {key: CachedEmbedding(vector, len(token_ids)) for key, vector, token_ids in zip(missing, vectors, ids)}
            await self._to_shared_cache(encoded)
            fresh |= encoded
        for key, entry in fresh.items():
            self.cache.put(key, entry)
        found = [entry or fresh[key] for key, entry in zip(keys, found)]
        result = Embeddings(np.stack([entry.vector for entry in found]), sum(entry.tokens for entry in found))
        return self._count(result, hits=hits)

    def _shared_key(self, key: CacheKey) -> str:
        assert self.shared is not None
        return self.shared.key(self.fingerprint, key[1], key[2])

    async def _from_shared_cache(self, keys: list[CacheKey]) -> dict[CacheKey, CachedEmbedding]:
        if self.shared is None or not keys:
            return {}
        entries = await self.shared.get_many(self.spec.id, [self._shared_key(key) for key in keys], self.dimension)
        return {key: entry for key, entry in zip(keys, entries) if entry is not None}

    async def _to_shared_cache(self, entries: dict[CacheKey, CachedEmbedding]) -> None:
        if self.shared is not None:
            await self.shared.put_many({self._shared_key(key): entry for key, entry in entries.items()})

    async def _tokenize(self, texts: list[str]) -> list[list[int]]:
        if sum(len(text) for text in texts) > _INLINE_TOKENIZE_CHARS:
            return await asyncio.to_thread(self.backend.tokenize, texts)
        return self.backend.tokenize(texts)

    def _checked(self, ids: list[int], index: int) -> list[int]:
        if len(ids) <= self.backend.max_tokens:
            return ids
        if self.truncate:
            return self.backend.truncate(ids)
        raise InputTooLong(
            f"This model's maximum context length is {self.backend.max_tokens} tokens, "
            f"but input[{index}] has {len(ids)} tokens. Shorten it, or let the server truncate (EMBED_TRUNCATE=true).",
            param="input",
        )

    async def _encode(self, ids: list[list[int]]) -> np.ndarray:
        try:
            return await self.batcher.embed(ids)
        except QueueFull:
            self.metrics.queue_rejections.labels(self.spec.id).inc()
            raise
        finally:
            self.metrics.queue_depth.labels(self.spec.id).set(self.batcher.depth)

    def _count(self, result: Embeddings, hits: int) -> Embeddings:
        model = self.spec.id
        texts = len(result.vectors)
        self.metrics.texts.labels(model).inc(texts)
        self.metrics.tokens.labels(model).inc(result.prompt_tokens)
        self.metrics.cache_hits.labels(model).inc(hits)
        self.metrics.cache_misses.labels(model).inc(texts - hits)
        return result

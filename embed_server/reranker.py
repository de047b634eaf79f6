"""Reranking: a cross-encoder's scores, or the cosine of any served embedding model (hybrid included)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from config import ModelSpec
from embed_server.backends.cross_encoder import CrossEncoderBackend
from embed_server.batcher import LengthSortedBatcher
from embed_server.embedder import Embedder
from embed_server.hybrid import HybridEmbedder

_INLINE_CHARS = 16_384


@dataclass
class Scores:
    scores: np.ndarray  # one per document, in input order
    tokens: int


class CrossEncoderReranker:
    def __init__(self, spec: ModelSpec, backend: CrossEncoderBackend, batcher: LengthSortedBatcher) -> None:
        self.spec = spec
        self.backend = backend
        self.batcher = batcher

    async def rerank(self, query: str, documents: list[str]) -> Scores:
        if sum(map(len, documents)) > _INLINE_CHARS:
            pairs = await asyncio.to_thread(self.backend.tokenize_pairs, query, documents)
        else:
            pairs = self.backend.tokenize_pairs(query, documents)
        scores = await self.batcher.embed(pairs)
        return Scores(scores[:, 0], sum(len(ids) for ids in pairs))


class EmbeddingReranker:
    """Scores documents by cosine with the query, as a vector search would: no extra weights needed."""

    def __init__(self, embedder: Embedder | HybridEmbedder) -> None:
        self.spec = embedder.spec
        self.embedder = embedder

    async def rerank(self, query: str, documents: list[str]) -> Scores:
        query_vector = await self.embedder.embed([query], "query")
        document_vectors = await self.embedder.embed(documents, "document")
        vectors = document_vectors.vectors
        norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(query_vector.vectors[0])
        scores = vectors @ query_vector.vectors[0] / np.maximum(norms, 1e-12)
        return Scores(scores, query_vector.prompt_tokens + document_vectors.prompt_tokens)

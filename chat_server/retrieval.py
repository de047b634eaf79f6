"""Retrieval over the Knowledge bases a caller may read, all searched at once.

Each Knowledge base is searched with the model that embedded it (dense or hybrid, as stored), in parallel.
Cosine scores of different models are not comparable, so results are fused by rank, not by score:
reciprocal rank fusion, ``sum over lists of 1 / (60 + rank)`` (Cormack et al., 2009), which for a single
Knowledge base keeps its own order. The fused top k reach the prompt; with a reranker, the fused top
candidates are re-ordered by it first (one request for all of them, after the parallel searches).

A collection's model is read once per collection id (``CollectionModels``): reading it costs a count and a
page of chunk metadata, more than the search itself. The collection is still looked up by name on every
search, so a Knowledge base that was migrated, restored or re-created (a new collection, a new id) is seen at
once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection

from vector_bridge.access import KnowledgeBase
from vector_bridge.embeddings import EmbeddingsClient
from vector_bridge.search import SearchError, embedding_model, nearest_chunks, open_collection

RRF_K = 60
log = logging.getLogger(__name__)


@dataclass
class Source:
    knowledge: KnowledgeBase
    chunk_id: str
    text: str
    score: float  # cosine similarity under the Knowledge base's own model
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or self.metadata.get("source") or self.knowledge.name)


class CollectionModels:
    """The embedding model of each collection, by collection id. Open WebUI writes a collection's chunks with
    the model it was created under, and every change of model (`vector-bridge migrate`, restore, a re-created
    Knowledge base) puts a new collection, with a new id, under the name."""

    def __init__(self, limit: int = 4096) -> None:
        self._models: dict[str, str] = {}
        self._limit = limit

    def model(self, collection: Collection) -> str | None:
        """The collection's model; None while it is empty (nothing to search, nothing to remember)."""
        key = str(collection.id)
        if (model := self._models.get(key)) is not None:
            return model
        if not collection.count():
            return None
        model = embedding_model(collection)
        if len(self._models) >= self._limit:  # ids of dropped collections pile up: start over, rarely
            self._models.clear()
        self._models[key] = model
        return model


async def retrieve(store: ClientAPI, embeddings: EmbeddingsClient, bases: list[KnowledgeBase], question: str,
                   k: int, models: CollectionModels, *, rerank: str | None = None, candidates: int = 20) -> list[Source]:
    """The top ``k``; with ``rerank`` (a model our /v1/rerank serves), the top ``candidates`` of the fusion
    re-ordered by it, so a reranker sees more than the chunks the prompt will hold."""
    wanted = max(k, candidates) if rerank else k
    found = await asyncio.gather(*(asyncio.to_thread(_search_one, store, embeddings, models, base, question, wanted)
                                   for base in bases))
    fused = fuse(found, wanted)
    if not rerank or len(fused) < 2:
        return fused[:k]
    scores = await asyncio.to_thread(embeddings.rerank, rerank, question, [source.text for source in fused])
    order = sorted(range(len(fused)), key=lambda i: -scores[i])  # stable: ties keep the fusion's order
    return [fused[i] for i in order[:k]]


def _search_one(store: ClientAPI, embeddings: EmbeddingsClient, models: CollectionModels, base: KnowledgeBase,
                question: str, k: int) -> list[Source]:
    try:
        collection = open_collection(store, base.id)  # a Knowledge base with no files yet has none
        model = models.model(collection)
        if model is None:
            return []
    except SearchError as error:  # no collection, or no single model this server can tell
        log.warning("Knowledge base skipped", extra={"knowledge": base.id, "reason": str(error)})
        return []
    [vector] = embeddings.embed(model, [question], "query")
    return [Source(base, hit.id, hit.text, hit.score, hit.metadata) for hit in nearest_chunks(collection, vector, k)]


def fuse(ranked_lists: list[list[Source]], k: int) -> list[Source]:
    scores: dict[tuple[str, str], float] = {}
    by_key: dict[tuple[str, str], Source] = {}
    for ranked in ranked_lists:
        for rank, source in enumerate(ranked, 1):
            key = (source.knowledge.id, source.chunk_id)
            scores[key] = scores.get(key, 0.0) + 1 / (RRF_K + rank)
            by_key.setdefault(key, source)
    order = sorted(scores, key=lambda key: (-scores[key], -by_key[key].score))
    return [by_key[key] for key in order[:k]]

"""Hybrid dense + lexical vectors through plain /v1/embeddings.

A document's vector is ``[dense, lexical] / sqrt(2)`` (both parts unit length), so every stored
vector has length 1. A query's vector is ``[a * dense, (1 - a) * idf * lexical]``. Their dot
product, and so the cosine Chroma ranks by, is a weighted sum of the dense and the lexical
similarity, with no change to Open WebUI or Chroma. The mix ``a`` is chosen per query from its
script (lexical matching carries Korean, Chinese and Japanese, where the English dense model is
near random) and the IDF is learned from the documents embedded, both on the query side only.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np

from config import ModelSpec
from embed_server.backends.lexical import DocumentFrequencies, HashedLexicalEncoder, cjk_share
from embed_server.embedder import Embedder, Embeddings, Inputs, InputType
from embed_server.errors import InvalidRequest
from embed_server.shared_idf import SharedDocumentFrequencies
from embed_server.token_ids import decode_cl100k

_INLINE_CHARS = 16_384
_DOCUMENT_WEIGHT = 1 / math.sqrt(2)


class HybridEmbedder:
    def __init__(self, spec: ModelSpec, dense: Embedder, frequencies: DocumentFrequencies,
                 shared: SharedDocumentFrequencies | None = None) -> None:
        self.spec = spec
        self.dense = dense
        self.lexical = HashedLexicalEncoder(frequencies.dim)
        self.frequencies = frequencies
        # With several replicas, queries use the IDF they all share; this replica's own still learns
        # (it seeds the shared counts if those are ever absent).
        self.shared = shared

    @property
    def dimension(self) -> int:
        return self.dense.dimension + self.lexical.dim

    async def embed(self, inputs: Inputs, input_type: InputType = None) -> Embeddings:
        texts = self._texts(inputs)
        dense = await self.dense.embed(texts, input_type)
        if sum(len(text) for text in texts) > _INLINE_CHARS:
            lexical, slots = await asyncio.to_thread(self._lexical, texts, input_type)
        else:
            lexical, slots = self._lexical(texts, input_type)
        if input_type != "query" and self.shared is not None:
            await self.shared.record(texts, slots)
        if input_type == "query":
            mix = np.array([[self._dense_share(text)] for text in texts], dtype=np.float32)
            vectors = np.hstack([mix * dense.vectors, (1 - mix) * lexical])
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        else:
            vectors = np.hstack([dense.vectors, lexical]) * _DOCUMENT_WEIGHT
        return Embeddings(vectors.astype(np.float32), dense.prompt_tokens)

    def _texts(self, inputs: Inputs) -> list[str]:
        if inputs and isinstance(inputs[0], list):
            if self.dense.token_ids == "model":
                raise InvalidRequest(f"'{self.spec.id}' needs text or cl100k_base token ids, not model token ids.",
                                     param="input")
            return [decode_cl100k(ids, index) for index, ids in enumerate(inputs)]  # type: ignore[arg-type]
        return list(inputs)  # type: ignore[arg-type]

    def _dense_share(self, query: str) -> float:
        share = cjk_share(query)
        return (1 - share) * self.spec.query_dense_weight + share * self.spec.query_dense_weight_cjk

    def _lexical(self, texts: list[str], input_type: InputType) -> tuple[np.ndarray, list[dict[int, float]]]:
        slots = [self.lexical.slots(text) for text in texts]
        if input_type == "query":
            idf = (self.shared or self.frequencies).idf()
            return np.stack([self.lexical.vector(s, idf) for s in slots]), slots
        if self.shared is None:  # else the shared counts add them to this replica's own, in step
            for text, s in zip(texts, slots):
                self.frequencies.add(text, s)
        return np.stack([self.lexical.vector(s) for s in slots]), slots

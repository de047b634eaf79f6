"""Retrieve, ground, generate: the one path that every chat surface (OpenAI-compatible, Pipelines, direct
API) takes, so a Knowledge base answers the same way wherever it is asked."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from chromadb.api import ClientAPI

from chat_server.errors import GeneratorDown, UpstreamUnavailable
from chat_server.generators import Generator, GeneratorUnavailable
from chat_server.prompt import grounded_messages, last_question
from chat_server.retrieval import CollectionModels, Source, retrieve
from vector_bridge.access import KnowledgeBase
from vector_bridge.embeddings import EmbeddingsClient, EmbeddingsError
from vector_bridge.store import StoreError


@dataclass
class Answer:
    """An answer under way: its sources are known, its text streams from ``pieces``."""

    sources: list[Source]
    pieces: AsyncIterator[str]

    async def text(self) -> str:
        try:
            return "".join([piece async for piece in self.pieces])
        except GeneratorUnavailable as error:
            raise GeneratorDown(str(error)) from None


class Answering:
    def __init__(self, store: Callable[[], ClientAPI], embeddings: EmbeddingsClient, generator: Generator, *,
                 top_k: int, max_tokens: int, rerank: str | None = None, rerank_candidates: int = 20) -> None:
        self.store = store
        self.rerank = rerank
        self.rerank_candidates = rerank_candidates
        self.embeddings = embeddings
        self.generator = generator
        self.top_k = top_k
        self.max_tokens = max_tokens
        self.models = CollectionModels()

    async def sources(self, bases: list[KnowledgeBase], messages: list[dict[str, str]], *,
                      top_k: int | None = None, min_score: float | None = None) -> list[Source]:
        """The chunks of ``bases`` closest to the conversation's last question, best first."""
        if not bases:
            return []
        try:
            found = await retrieve(self.store(), self.embeddings, bases, last_question(messages),
                                   top_k or self.top_k, self.models, rerank=self.rerank,
                                   candidates=self.rerank_candidates)
        except (StoreError, EmbeddingsError) as error:
            raise UpstreamUnavailable(f"The store or the embeddings server could not be reached: {error}") from None
        return [source for source in found if min_score is None or source.score >= min_score]

    async def answer(self, bases: list[KnowledgeBase], messages: list[dict[str, str]], *,
                     max_tokens: int | None = None, temperature: float = 0.0) -> Answer:
        sources = await self.sources(bases, messages)
        return await self.generate(messages, sources, max_tokens=max_tokens, temperature=temperature)

    async def generate(self, messages: list[dict[str, str]], sources: list[Source] | None, *,
                       max_tokens: int | None = None, temperature: float = 0.0) -> Answer:
        """Starts the generator on the prompt grounded in ``sources`` (None: on ``messages`` as they are). The
        first piece is awaited here, so a generator that is down fails the request (a 503 its caller can act
        on) rather than a stream already under way."""
        prompt = messages if sources is None else grounded_messages(messages, sources)
        pieces = self.generator.stream(prompt, max_tokens=max_tokens or self.max_tokens, temperature=temperature)
        try:
            first = await anext(pieces)
        except StopAsyncIteration:
            return Answer(sources or [], _empty())
        except GeneratorUnavailable as error:
            raise GeneratorDown(str(error)) from None
        return Answer(sources or [], _prepend(first, pieces))


async def _empty() -> AsyncIterator[str]:
    return
    yield  # pragma: no cover - makes this an async generator


async def _prepend(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for piece in rest:
        yield piece

"""The chat server reads a collection's embedding model once per collection id, and sees a new one at once."""

from __future__ import annotations

import chromadb
from chromadb.config import Settings as ChromaSettings

from chat_server.retrieval import CollectionModels

VECTOR = [0.1, 0.2, 0.3]


def _chunks(collection: chromadb.Collection, model: str, count: int = 2) -> None:
    config = repr({"engine": "openai", "model": model})  # as Open WebUI records it
    collection.add(ids=[f"{model}-{i}" for i in range(count)], embeddings=[VECTOR] * count,
                   documents=["text"] * count, metadatas=[{"embedding_config": config}] * count)


def test_a_collections_model_is_read_once_and_a_new_collection_under_the_name_is_read_again() -> None:
    client = chromadb.EphemeralClient(ChromaSettings(anonymized_telemetry=False, allow_reset=True))
    client.reset()
    models = CollectionModels()
    collection = client.create_collection("knowledge-base")
    assert models.model(collection) is None  # empty: nothing to search, and nothing remembered
    _chunks(collection, "all-MiniLM-L6-v2")
    assert models.model(collection) == "all-MiniLM-L6-v2"
    calls: list[object] = []
    original_get = collection.get
    collection.get = (  # type: ignore[method-assign]
        lambda *args, **kwargs: calls.append(args) or original_get(*args, **kwargs))
    assert models.model(collection) == "all-MiniLM-L6-v2"
    assert calls == []  # answered from memory: no page of metadata read again

    # migrate, restore or a re-created Knowledge base: a new collection, a new id, under the name
    client.delete_collection("knowledge-base")
    renewed = client.create_collection("knowledge-base")
    _chunks(renewed, "all-MiniLM-L6-v2-hybrid")
    assert models.model(client.get_collection("knowledge-base")) == "all-MiniLM-L6-v2-hybrid"


def test_with_a_reranker_the_best_candidates_are_reordered_by_it(server: str) -> None:
    """Against the real embeddings server: the fusion's top 8 candidates go to /v1/rerank (here MiniLM with
    query/passage prefixes, which orders them otherwise than plain MiniLM did; a stateless scorer, so asking
    it again gives the same scores), and the top 3 by its scores reach the prompt."""
    import asyncio
    from urllib.parse import urlsplit

    import httpx

    from chat_server.retrieval import retrieve
    from config import load_settings
    from tests.conftest import MODEL, PREFIXED
    from vector_bridge.access import KnowledgeBase
    from vector_bridge.embeddings import EmbeddingsClient

    texts = [f"Maintenance note {i}: the pump was checked and the filter replaced." for i in range(6)] + [
        "The XQ-17 valve must be closed before the XQ-17 pump is serviced.",
        "Valves and pumps are serviced every spring by the plant team.",
        "XQ-17 is the name of the cooling circuit's main valve."]
    embeddings = EmbeddingsClient(load_settings(port=urlsplit(server).port))
    client = chromadb.EphemeralClient(ChromaSettings(anonymized_telemetry=False, allow_reset=True))
    client.reset()
    collection = client.create_collection("plant-notes", metadata={"hnsw:space": "cosine"})
    config = repr({"engine": "openai", "model": MODEL})
    collection.add(ids=[f"c{i}" for i in range(len(texts))], documents=texts,
                   embeddings=embeddings.embed(MODEL, texts, "document"),
                   metadatas=[{"embedding_config": config, "name": f"note-{i}.md"} for i in range(len(texts))])
    question = "How do I service the XQ-17 pump?"
    base = KnowledgeBase("plant-notes", "Plant notes")
    dense = asyncio.run(retrieve(client, embeddings, [base], question, 8, CollectionModels()))
    reranked = asyncio.run(retrieve(client, embeddings, [base], question, 3, CollectionModels(), rerank=PREFIXED,
                                    candidates=8))
    scores = httpx.post(f"{server}/v1/rerank", json={"model": PREFIXED, "query": question, "top_n": 8,
                                                     "documents": [s.text for s in dense]}, timeout=60).json()
    expected = [dense[result["index"]].chunk_id for result in scores["results"][:3]]
    assert [source.chunk_id for source in reranked] == expected
    assert [source.chunk_id for source in reranked] != [source.chunk_id for source in dense[:3]]

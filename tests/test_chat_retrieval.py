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

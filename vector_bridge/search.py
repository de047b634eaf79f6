"""Search the shared store from outside Open WebUI, with the model that embedded the collection.

Open WebUI keeps a Knowledge base's chunks in a Chroma collection named by the Knowledge base's id and
records the embedding model in every chunk's ``embedding_config``. A query embedded with any other
model returns confident nonsense (or nothing, if the size differs), so the model is read from the
collection and a collection with no single known model is refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.errors import NotFoundError

from vector_bridge.openwebui import OpenWebUIClient
from vector_bridge.store import MODEL_SAMPLE, embedding_models


class SearchError(RuntimeError):
    pass


class KnowledgeNotFound(SearchError):
    pass


class UnknownEmbeddingModel(SearchError):
    """The collection names no model, several models, or one the embeddings server does not serve."""


@dataclass
class Hit:
    id: str
    text: str
    score: float  # cosine similarity, 1 - Chroma's cosine distance
    metadata: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def knowledge_collection(webui: OpenWebUIClient, knowledge: str) -> str:
    """The collection of a Knowledge base given by name or id, as Open WebUI's API lists them."""
    return pick_knowledge([(base["id"], base.get("name") or "") for base in webui.list_knowledge()], knowledge)


def pick_knowledge(bases: Iterable[tuple[str, str]], knowledge: str) -> str:
    """The id of the one Knowledge base among ``(id, name)`` pairs whose id or else name is ``knowledge``.

    One message for "does not exist" and "not yours": the caller learns nothing of others' Knowledge.
    """
    bases = list(bases)
    named = [base for base in bases if base[0] == knowledge] or [base for base in bases if base[1] == knowledge]
    if not named:
        raise KnowledgeNotFound(f"no Knowledge base named {knowledge!r} is visible to this token")
    if len(named) > 1:
        ids = ", ".join(base_id for base_id, _ in named)
        raise KnowledgeNotFound(f"several Knowledge bases are named {knowledge!r} ({ids}): pass the id instead")
    return named[0][0]


def open_collection(client: ClientAPI, name: str) -> Collection:
    try:
        return client.get_collection(name)
    except (NotFoundError, ValueError) as error:
        raise KnowledgeNotFound(f"the store has no collection {name!r}") from error


def embedding_model(collection: Collection) -> str:
    """The one model Open WebUI recorded for this collection's chunks."""
    sample = collection.get(limit=MODEL_SAMPLE, include=["metadatas"])
    models = embedding_models(sample["metadatas"] or [])
    if not models:
        raise UnknownEmbeddingModel(f"collection {collection.name!r} records no embedding model "
                                    "(empty, or not written by Open WebUI)")
    if len(models) > 1:
        raise UnknownEmbeddingModel(f"collection {collection.name!r} mixes embedding models "
                                    f"({', '.join(sorted(models))}): re-embed it with one model first")
    return next(iter(models))


def nearest_chunks(collection: Collection, vector: Sequence[float], k: int) -> list[Hit]:
    found = collection.query(query_embeddings=[vector], n_results=k, include=["documents", "metadatas", "distances"])
    return [Hit(chunk_id, text or "", round(1 - distance, 6), metadata or {})
            for chunk_id, text, metadata, distance in zip(found["ids"][0], found["documents"][0],
                                                          found["metadatas"][0], found["distances"][0])]

"""The shared Chroma store as the vector-bridge tools see it: a client from settings, and what each
collection holds (count, dimension, the embedding model Open WebUI recorded)."""

from __future__ import annotations

import ast
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import chromadb
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings as ChromaSettings

from config import Settings

# How many chunks search reads to tell a collection's model before it embeds a query: a quick look,
# since it runs on every search (doctor and migrate read every chunk, see collection_models).
MODEL_SAMPLE = 200
# Metadatas read per request when every chunk is checked (no embeddings: those would be ~18 MB a page).
METADATA_PAGE = 1000
# What `migrate --to-store chroma` wrote into Chroma (move_chroma.py): the tools' own, not Open WebUI's.
MOVES_COLLECTION = "vector_bridge_moved_chunk"
# This Chroma store's id as a source of `migrate --to-store` (its metadata): every Chroma database has the same id,
# and the records of a move name the store each chunk came from.
STORE_COLLECTION = "vector_bridge_store"
TOOL_COLLECTIONS = (MOVES_COLLECTION, STORE_COLLECTION)


class StoreError(RuntimeError):
    """The Chroma server cannot be reached or refused a request."""


def connect(settings: Settings) -> ClientAPI:
    """A client for the store Open WebUI uses: the Chroma server (through the token proxy when a token is set),
    or on pgvector a client with the same reading API over Open WebUI's table."""
    if settings.store == "pgvector":
        from vector_bridge.pgvector_store import PgvectorClient
        from vector_bridge.postgres import pgvector_url

        return PgvectorClient(pgvector_url(settings))  # type: ignore[return-value]
    return connect_chroma(settings)


def connect_chroma(settings: Settings) -> ClientAPI:
    """The Chroma server the settings name, whichever store Open WebUI uses now."""
    headers = {"Authorization": f"Bearer {settings.chroma_token.get_secret_value()}"} if settings.chroma_token else None
    try:
        client = chromadb.HttpClient(
            host=settings.chroma_host, port=settings.chroma_port, ssl=settings.chroma_ssl, headers=headers,
            settings=ChromaSettings(anonymized_telemetry=False),
        )
        client.heartbeat()
    except Exception as error:  # chromadb raises plain Exception/ValueError subclasses for connection trouble
        raise StoreError(f"cannot reach Chroma at {settings.chroma_host}:{settings.chroma_port}: {error}") from error
    return client


def parse_embedding_config(value: Any) -> dict[str, Any] | None:
    """Open WebUI stores ``embedding_config`` as a Python repr (``"{'engine': 'openai', 'model': 'm'}"``),
    sometimes as JSON; anything else is unknown."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return None
    return parsed if isinstance(parsed, dict) else None


def embedding_models(metadatas: list[dict[str, Any] | None]) -> Counter[str]:
    """How many of these chunks name each embedding model."""
    found: Counter[str] = Counter()
    for metadata in metadatas:
        config = parse_embedding_config((metadata or {}).get("embedding_config"))
        if config and config.get("model"):
            found[str(config["model"])] += 1
    return found


@dataclass
class CollectionInfo:
    name: str
    count: int
    dimension: int | None  # None: empty
    models: dict[str, int] = field(default_factory=dict)  # embedding model -> chunks naming it (all chunks)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str | None:
        """The one model that embedded this collection; None if unknown or mixed."""
        return next(iter(self.models)) if len(self.models) == 1 else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"model": self.model}


def collection_models(collection: Collection) -> Counter[str]:
    """How many chunks of the whole collection name each model: a collection mixed after its first
    chunks (a model switched mid-way, a file re-added later) shows up wherever the mix starts."""
    found: Counter[str] = Counter()
    offset = 0
    while True:
        page = collection.get(offset=offset, limit=METADATA_PAGE, include=["metadatas"])
        found.update(embedding_models(page["metadatas"] or []))
        offset += len(page["ids"])
        if len(page["ids"]) < METADATA_PAGE:
            return found


def describe(collection: Collection) -> CollectionInfo:
    count = collection.count()
    first = collection.get(limit=1, include=["embeddings"]) if count else None
    dimension = None
    if first is not None and first["embeddings"] is not None and len(first["embeddings"]):
        dimension = len(first["embeddings"][0])
    models = dict(collection_models(collection)) if count else {}
    return CollectionInfo(collection.name, count, dimension, models, dict(collection.metadata or {}))


def describe_all(client: ClientAPI) -> list[CollectionInfo]:
    return [describe(collection) for collection in sorted(client.list_collections(), key=lambda c: c.name)]


def widen_hnsw_search(client: ClientAPI, ef_search: int) -> list[str]:
    """Raise ``ef_search`` of every HNSW collection below it; returns the names changed.

    Open WebUI creates collections with Chroma's default (100), which loses hybrid matches whose query
    is far from the documents' own neighbourhoods (KorQuAD nDCG@10 0.89 against 0.92 at 500). Chroma
    applies a change when it next loads the collection's index: changed before the first query after
    Chroma starts, it holds from then on.
    """
    changed = []
    for collection in client.list_collections():
        hnsw = (collection.configuration_json or {}).get("hnsw") or {}
        if hnsw and hnsw.get("ef_search", 0) < ef_search:
            collection.modify(configuration={"hnsw": {"ef_search": ef_search}})
            changed.append(collection.name)
    return changed

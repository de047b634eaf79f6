"""POST /v1/search: the shared store searched from outside Open WebUI, served by this same process."""

from __future__ import annotations

import httpx
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from config import Settings
from embed_server.errors import APIError, InvalidRequest, ModelNotFound
from embed_server.registry import ModelRegistry
from embed_server.routes.dependencies import registry, require_api_key
from embed_server.schemas import SearchHit, SearchRequest, SearchResponse, error_responses
from vector_bridge.openwebui import OpenWebUIClient, OpenWebUIError
from vector_bridge.search import (KnowledgeNotFound, UnknownEmbeddingModel, embedding_model, knowledge_collection,
                                  nearest_chunks, open_collection)
from vector_bridge.store import StoreError, connect

router = APIRouter(dependencies=[Depends(require_api_key)])


class CollectionNotFound(APIError):
    status_code = 404
    type = "invalid_request_error"
    code = "collection_not_found"


class StoreUnavailable(APIError):
    status_code = 503
    type = "server_error"
    code = "store_unavailable"


@router.post(
    "/v1/search",
    response_model=SearchResponse,
    responses=error_responses(400, 401, 404, 413, 429, 503),
    summary="Top chunks of a Knowledge base or collection, embedded with the model that embedded it",
)
async def search_store(request: SearchRequest, http: Request, models: ModelRegistry = Depends(registry)) -> SearchResponse:
    try:
        collection, model = await run_in_threadpool(_collection_and_model, http, request)
    except KnowledgeNotFound as error:
        raise CollectionNotFound(str(error), param="knowledge" if request.knowledge else "collection") from None
    except UnknownEmbeddingModel as error:
        raise InvalidRequest(str(error), param="collection") from None
    except (StoreError, OpenWebUIError, httpx.HTTPError, OSError) as error:
        raise StoreUnavailable(f"The store or Open WebUI could not be reached: {error}") from None
    try:
        embedded = await models.get(model).embed([request.query], "query")
    except ModelNotFound:
        raise InvalidRequest(f"Collection '{collection.name}' was embedded with '{model}', which this server does "
                             "not serve: serve that model or re-embed the collection.", param="collection") from None
    hits = await run_in_threadpool(nearest_chunks, collection, embedded.vectors[0].tolist(), request.k)
    return SearchResponse(collection=collection.name, model=model, data=[SearchHit(**hit.to_dict()) for hit in hits])


def _collection_and_model(http: Request, request: SearchRequest) -> tuple[Collection, str]:
    """The blocking part: Open WebUI's API for a Knowledge name, then Chroma."""
    settings: Settings = http.app.state.settings
    store = getattr(http.app.state, "store", None)
    if store is None:  # one client per process: connecting costs a round trip
        store = http.app.state.store = connect(settings)
    name = request.collection or _knowledge_collection(settings, store, request.knowledge)  # type: ignore[arg-type]
    collection = open_collection(store, name)
    return collection, embedding_model(collection)


def _knowledge_collection(settings: Settings, store: ClientAPI, knowledge: str) -> str:
    """A Knowledge base's collection: by name through Open WebUI's API, or by id with no API at all."""
    if settings.openwebui_api_key is None:
        if knowledge in {collection.name for collection in store.list_collections()}:
            return knowledge
        raise KnowledgeNotFound(f"No collection has the id '{knowledge}'. To find Knowledge bases by name, "
                                "give the server an Open WebUI API key (OPENWEBUI_API_KEY).")
    with OpenWebUIClient(settings.openwebui_url, settings.openwebui_api_key.get_secret_value(), timeout=30) as webui:
        return knowledge_collection(webui, knowledge)

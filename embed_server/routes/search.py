"""POST /v1/search: the shared store searched from outside Open WebUI, served by this same process.

The caller is an Open WebUI user, known by their own Open WebUI key or token, and sees exactly the
Knowledge bases Open WebUI lets them read; an admin key (EMBED_ADMIN_KEYS) may also search raw collections.
"""

from __future__ import annotations

import httpx
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from config import Settings
from embed_server.auth import bearer_token
from embed_server.errors import APIError, AuthenticationFailed, InvalidRequest, ModelNotFound, PermissionDenied
from embed_server.registry import ModelRegistry
from embed_server.routes.dependencies import registry
from embed_server.schemas import SearchHit, SearchRequest, SearchResponse, error_responses
from vector_bridge.access import CredentialRefused, KnowledgeAccess, NotPermitted, OpenWebUIUnavailable
from vector_bridge.openwebui import OpenWebUIClient, OpenWebUIError
from vector_bridge.search import (KnowledgeNotFound, UnknownEmbeddingModel, embedding_model, knowledge_collection,
                                  nearest_chunks, open_collection, pick_knowledge)
from vector_bridge.store import StoreError, connect

router = APIRouter()


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
    responses=error_responses(400, 401, 403, 404, 413, 429, 503),
    summary="Top chunks of a Knowledge base the caller may read, embedded with the model that embedded it",
)
async def search_store(request: SearchRequest, http: Request, models: ModelRegistry = Depends(registry)) -> SearchResponse:
    try:
        name = await _readable_collection(http, request)
        collection, model = await run_in_threadpool(_open_with_model, http, name)
    except KnowledgeNotFound as error:
        raise CollectionNotFound(str(error), param="knowledge" if request.knowledge else "collection") from None
    except UnknownEmbeddingModel as error:
        raise InvalidRequest(str(error), param="collection") from None
    except (StoreError, OpenWebUIError, OpenWebUIUnavailable, httpx.HTTPError, OSError) as error:
        raise StoreUnavailable(f"The store or Open WebUI could not be reached: {error}") from None
    try:
        embedded = await models.get(model).embed([request.query], "query")
    except ModelNotFound:
        raise InvalidRequest(f"Collection '{collection.name}' was embedded with '{model}', which this server does "
                             "not serve: serve that model or re-embed the collection.", param="collection") from None
    hits = await run_in_threadpool(nearest_chunks, collection, embedded.vectors[0].tolist(), request.k)
    return SearchResponse(collection=collection.name, model=model, data=[SearchHit(**hit.to_dict()) for hit in hits])


async def _readable_collection(http: Request, request: SearchRequest) -> str:
    """The collection to search, if this caller may read it; the errors say nothing of others' Knowledge."""
    token = bearer_token(http.headers.get("authorization"))
    if http.app.state.admin_keys.holds(token):
        return request.collection or await run_in_threadpool(_knowledge_for_admin, http, request.knowledge)
    client_host = http.client.host if http.client else None
    if request.collection:
        # Counted as a failed check: it is also how an admin key would be guessed.
        raise http.app.state.failed_attempts.refuse(client_host, PermissionDenied(
            "Searching a raw collection needs an admin key. Search a Knowledge base you can read in Open WebUI "
            "instead ('knowledge').", param="collection"))
    try:
        bases = await _knowledge_access(http).readable(token)
    except CredentialRefused as error:
        raise http.app.state.failed_attempts.refuse(
            client_host, AuthenticationFailed(str(error), headers={"WWW-Authenticate": "Bearer"})) from None
    except NotPermitted as error:
        raise PermissionDenied(str(error)) from None
    return pick_knowledge(((base.id, base.name) for base in bases), request.knowledge)  # type: ignore[arg-type]


def _knowledge_access(http: Request) -> KnowledgeAccess:
    access = getattr(http.app.state, "knowledge_access", None)
    if access is None:
        settings: Settings = http.app.state.settings
        access = http.app.state.knowledge_access = KnowledgeAccess(settings.openwebui_url,
                                                                   ttl_seconds=settings.access_cache_seconds)
    return access


def _store(http: Request) -> ClientAPI:
    store = getattr(http.app.state, "store", None)
    if store is None:  # one client per process: connecting costs a round trip
        store = http.app.state.store = connect(http.app.state.settings)
    return store


def _open_with_model(http: Request, name: str) -> tuple[Collection, str]:
    collection = open_collection(_store(http), name)
    return collection, embedding_model(collection)


def _knowledge_for_admin(http: Request, knowledge: str) -> str:
    """For an admin key: a Knowledge base by name through the server's own Open WebUI key, or by id."""
    settings: Settings = http.app.state.settings
    if settings.openwebui_api_key is None:
        if knowledge in {collection.name for collection in _store(http).list_collections()}:
            return knowledge
        raise KnowledgeNotFound(f"No collection has the id '{knowledge}'. To find Knowledge bases by name, "
                                "give the server an Open WebUI API key (OPENWEBUI_API_KEY).")
    with OpenWebUIClient(settings.openwebui_url, settings.openwebui_api_key.get_secret_value(), timeout=30) as webui:
        return knowledge_collection(webui, knowledge)

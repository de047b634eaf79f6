"""The chat server's app factory: retrieval from the shared store, a generator, OpenAI-shaped routes."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

from chromadb.api import ClientAPI
from fastapi import FastAPI

from chat_server import __version__
from chat_server.answering import Answering
from chat_server.generators import Generator
from chat_server.generators.local import LocalGenerator
from chat_server.generators.openai_compatible import OpenAICompatibleGenerator
from chat_server.gate import DIRECT_ROUTES, ChatGate, SocketSlots, body_limit
from chat_server.routes.documents import UploadSlots
from chat_server.routes import completions, health
from chat_server.routes import direct, documents, page
from config import Settings, load_settings
from embed_server.auth import FailedAttempts, KeyGuard
from embed_server.errors import install_error_handlers
from embed_server.metrics import Metrics
from embed_server.middleware import RequestGuard
from vector_bridge.access import KnowledgeAccess
from vector_bridge.embeddings import EmbeddingsClient
from vector_bridge.store import connect

log = logging.getLogger(__name__)
USER_ROUTES = ("/v1/models", "/v1/chat/completions")


def make_generator(settings: Settings) -> Generator:
    if settings.chat_generator_url:
        key = settings.chat_generator_key.get_secret_value() if settings.chat_generator_key else None
        return OpenAICompatibleGenerator(settings.chat_generator_url, settings.chat_generator_model or "default", key,
                                         timeout=settings.chat_generator_timeout)
    return LocalGenerator(settings.chat_local_model, settings.cache_dir / "generators", settings.threads)


def create_app(settings: Settings | None = None, generator: Generator | None = None) -> FastAPI:
    settings = settings or load_settings()
    generator = generator or make_generator(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.knowledge_access = KnowledgeAccess(settings.openwebui_url, ttl_seconds=settings.access_cache_seconds)
        loading = asyncio.create_task(_load(app, generator))
        try:
            yield
        finally:
            loading.cancel()
            await app.state.knowledge_access.aclose()
            if isinstance(generator, OpenAICompatibleGenerator):
                await generator.aclose()

    app = FastAPI(title="Knowledge chat", version=__version__, lifespan=lifespan,
                  summary="OpenAI-compatible chat that answers from the shared Open WebUI Knowledge, with sources.")
    app.state.settings = settings
    app.state.started = int(time.time())
    app.state.metrics = metrics = Metrics()
    app.state.generator = generator
    app.state.generator_status = "loading"
    app.state.failed_attempts = FailedAttempts(settings.auth_failure_limit)
    app.state.answering = Answering(_store_once(settings), EmbeddingsClient(settings, timeout=settings.chat_generator_timeout),
                                    generator, top_k=settings.chat_top_k, max_tokens=settings.chat_max_tokens,
                                    rerank=settings.chat_rerank_model, rerank_candidates=settings.chat_rerank_candidates)
    install_error_handlers(app)
    app.include_router(completions.router)
    app.include_router(health.router)
    app.include_router(direct.router)
    app.include_router(documents.router)
    app.include_router(page.router)
    # Two budgets of chat_rate_limit: each credential's, checked from the headers alone, and each Open WebUI
    # user's (caller.count_chat), once Open WebUI has said whose the credential is.
    chat_keys = KeyGuard([], settings.chat_rate_limit)
    app.state.chat_users = KeyGuard([], settings.chat_rate_limit)  # the WebSocket counts its questions here too
    app.state.sockets = SocketSlots(settings.chat_max_sockets_per_host)
    app.state.user_sockets = SocketSlots(settings.chat_max_sockets_per_host, "user")
    app.state.uploads = UploadSlots(total=4)
    gate = ChatGate(KeyGuard([], settings.rate_limit), chat_keys, app.state.failed_attempts,
                    user=(*USER_ROUTES, *DIRECT_ROUTES))
    app.add_middleware(RequestGuard, metrics=metrics, max_bytes=body_limit(settings), gate=gate)
    return app


async def _load(app: FastAPI, generator: Generator) -> None:
    try:
        if isinstance(generator, LocalGenerator):
            await asyncio.to_thread(generator.load)
        app.state.generator_status = "ok"
    except Exception as error:  # noqa: BLE001 - any failure is reported as "failed", its detail logged
        app.state.generator_status = "failed"
        log.error("generator failed to load", extra={"error": f"{type(error).__name__}: {error}"})


def _store_once(settings: Settings):  # noqa: ANN202 - a closure returning the one client
    client: ClientAPI | None = None

    def store() -> ClientAPI:
        nonlocal client
        if client is None:  # connecting costs a round trip; one client per process
            client = connect(settings)
        return client

    return store

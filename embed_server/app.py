"""The app factory: routers, error handlers, middleware; the lifespan loads models."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI

from config import Settings, load_settings
from embed_server import __version__
from embed_server.auth import AccessGate, FailedAttempts, KeyGuard, KeySet
from embed_server.errors import install_error_handlers
from embed_server.metrics import Metrics
from embed_server.middleware import RequestGuard
from embed_server.registry import ModelRegistry
from embed_server.routes import embeddings, health, models, rerank, search


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    metrics = Metrics(shared=settings.redis_url is not None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = ModelRegistry(settings, metrics)
        app.state.registry = registry
        # Loading runs in the background so /health answers while large models load.
        loading = asyncio.create_task(registry.load())
        try:
            yield
        finally:
            loading.cancel()
            await registry.close()
            access = getattr(app.state, "knowledge_access", None)
            if access is not None:
                await access.aclose()

    app = FastAPI(
        title="Local embeddings server",
        version=__version__,
        summary="OpenAI-format embeddings from local transformer models.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.started = int(time.time())
    keys = KeyGuard([key.get_secret_value() for key in settings.api_keys], settings.rate_limit)
    app.state.failed_attempts = FailedAttempts(settings.auth_failure_limit)
    app.state.admin_keys = KeySet([key.get_secret_value() for key in settings.admin_keys])
    install_error_handlers(app)
    app.include_router(embeddings.router)
    app.include_router(rerank.router)
    app.include_router(search.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.add_middleware(RequestGuard, metrics=metrics, max_bytes=settings.max_request_bytes,
                       gate=AccessGate(keys, app.state.failed_attempts))
    app.openapi = lambda: _openapi_with_served_models(app)  # type: ignore[method-assign]
    return app


def _openapi_with_served_models(app: FastAPI) -> dict:
    """The schema, with the served model ids as examples and the smallest model size as the
    ``dimensions`` maximum, so that generated clients and fuzzers send requests that can succeed."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = FastAPI.openapi(app)
    registry: ModelRegistry | None = getattr(app.state, "registry", None)
    if registry is None or not registry.ready:
        app.openapi_schema = None  # ask again once the models are loaded
        return schema
    properties = schema["components"]["schemas"]["EmbeddingRequest"]["properties"]
    properties["model"]["examples"] = [name for spec in registry.specs for name in spec.names]
    for branch in properties["dimensions"].get("anyOf", []):
        if branch.get("type") == "integer":
            branch["maximum"] = min(registry.get(spec.id).dimension for spec in registry.specs
                                    if spec.kind != "cross-encoder")
    app.openapi_schema = schema
    return schema

"""Per-request dependencies. Both are async: FastAPI runs plain functions in its thread pool, a hop per
request that costs more than the functions themselves."""

from __future__ import annotations

from fastapi import Request

from embed_server.registry import ModelRegistry


async def registry(request: Request) -> ModelRegistry:
    return request.app.state.registry

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from embed_server.registry import ModelRegistry
from embed_server.routes.dependencies import registry

router = APIRouter()


# Both answer anyone, so they say only "ok", "loading" or "failed": the reason a model failed to load
# (paths, library messages) goes to the server's log, not to whoever asks.


@router.get("/health", summary="Alive: the process answers and no model failed to load")
async def health(models: ModelRegistry = Depends(registry)) -> JSONResponse:
    if models.load_error:
        return JSONResponse({"status": "failed"}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/ready", summary="Ready: every model is loaded")
async def ready(models: ModelRegistry = Depends(registry)) -> JSONResponse:
    status = "failed" if models.load_error else "ok" if models.ready else "loading"
    body = {"ready": models.ready, "status": status, "models": [spec.id for spec in models.specs]}
    return JSONResponse(body, status_code=200 if models.ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}})
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

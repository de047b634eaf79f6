from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

router = APIRouter()


@router.get("/health", summary="Alive")
async def health() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/ready", summary="Ready: the generator is loaded (its failure reason goes to the log only)")
async def ready(request: Request) -> JSONResponse:
    status = request.app.state.generator_status
    return JSONResponse({"ready": status == "ok", "status": status}, status_code=200 if status == "ok" else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from config import ModelSpec
from embed_server.registry import ModelRegistry
from embed_server.routes.dependencies import registry
from embed_server.schemas import ModelList, ModelObject, error_responses

router = APIRouter()


def _model_object(spec: ModelSpec, created: int, models: ModelRegistry) -> ModelObject:
    # OpenAI's four fields, then where the model runs: clients that know only OpenAI's shape ignore them.
    where = models.placements.get(spec.id)
    return ModelObject(id=spec.id, created=created, owned_by="local", runtime=where and where.runtime,
                       device=where and where.device, precision=where and where.precision)


@router.get("/v1/models", response_model=ModelList, responses=error_responses(401, 429))
async def list_models(request: Request, models: ModelRegistry = Depends(registry)) -> ModelList:
    return ModelList(data=[_model_object(spec, request.app.state.started, models) for spec in models.specs])


@router.get("/v1/models/{model_id:path}", response_model=ModelObject, responses=error_responses(401, 404, 429))
async def retrieve_model(model_id: str, request: Request, models: ModelRegistry = Depends(registry)) -> ModelObject:
    return _model_object(models.find_spec(model_id), request.app.state.started, models)

from __future__ import annotations

import base64

import numpy as np
import orjson
from fastapi import APIRouter, Depends
from fastapi.responses import Response

from embed_server.embedder import Embeddings
from embed_server.errors import InvalidRequest
from embed_server.registry import ModelRegistry
from embed_server.routes.dependencies import registry
from embed_server.schemas import EmbeddingRequest, EmbeddingResponse, error_responses

router = APIRouter()


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingResponse,
    responses=error_responses(400, 401, 404, 413, 429, 503),
    summary="Create embeddings (OpenAI format)",
)
async def create_embeddings(request: EmbeddingRequest, models: ModelRegistry = Depends(registry)) -> Response:
    embedder = models.get(request.model)
    if request.dimensions is not None and request.dimensions > embedder.dimension:
        raise InvalidRequest(
            f"Invalid 'dimensions': {request.dimensions} is above the size of '{embedder.spec.id}' ({embedder.dimension}).",
            param="dimensions",
        )
    result = await embedder.embed(request.inputs, request.input_type)
    return Response(format_embeddings(result, embedder.spec.id, request), media_type="application/json")


def format_embeddings(result: Embeddings, model: str, request: EmbeddingRequest) -> bytes:
    vectors = result.vectors
    if request.dimensions is not None and request.dimensions < vectors.shape[1]:
        vectors = vectors[:, : request.dimensions]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    if request.encoding_format == "base64":
        encoded = [base64.b64encode(vector.tobytes()).decode("ascii") for vector in vectors]
    else:
        encoded = list(vectors)
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)],
        "model": model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)

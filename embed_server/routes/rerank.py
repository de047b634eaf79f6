from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Depends

from embed_server.registry import ModelRegistry
from embed_server.routes.dependencies import registry
from embed_server.schemas import RerankDocument, RerankRequest, RerankResponse, RerankResult, RerankUsage, error_responses

router = APIRouter()


@router.post(
    "/v1/rerank",
    response_model=RerankResponse,
    response_model_exclude_none=True,
    responses=error_responses(400, 401, 404, 413, 429, 503),
    summary="Rerank documents for a query (Open WebUI's external reranker format)",
)
async def rerank(request: RerankRequest, models: ModelRegistry = Depends(registry)) -> RerankResponse:
    reranker = models.get_reranker(request.model)
    scored = await reranker.rerank(request.query, request.documents)
    order = np.argsort(-scored.scores, kind="stable")[: request.top_n]
    return RerankResponse(
        model=reranker.spec.id,
        results=[
            RerankResult(index=int(i), relevance_score=float(scored.scores[i]),
                         document=RerankDocument(text=request.documents[i]) if request.return_documents else None)
            for i in order
        ],
        usage=RerankUsage(total_tokens=scored.tokens),
    )

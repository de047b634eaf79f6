"""A stand-in embeddings server that costs next to nothing: what Open WebUI's own work costs without a model.

    python bench/_standin_embeddings.py PORT

Each text gets a unit vector seeded by its hash, so Chroma indexes distinct vectors as it would real ones.
"""

from __future__ import annotations

import sys
import zlib

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

DIMENSION = 384


def vector(text: str) -> list[float]:
    values = np.random.default_rng(zlib.crc32(text.encode())).standard_normal(DIMENSION)
    return (values / np.linalg.norm(values)).tolist()


async def embeddings(request: Request) -> JSONResponse:
    body = await request.json()
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = [{"object": "embedding", "index": i, "embedding": vector(str(t))} for i, t in enumerate(texts)]
    return JSONResponse({"object": "list", "data": data, "model": body.get("model", ""),
                         "usage": {"prompt_tokens": 0, "total_tokens": 0}})


async def ready(request: Request) -> JSONResponse:
    return JSONResponse({"ready": True})


app = Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"]), Route("/ready", ready)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")

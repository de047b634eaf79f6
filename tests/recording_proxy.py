"""A pass-through HTTP proxy that keeps a copy of each request body it forwards: put between Open WebUI and
one of our servers, it shows exactly what Open WebUI sent (e.g. the prompt a model received)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from tests.servers import free_port

_HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection"}


@dataclass
class Recording:
    url: str
    requests: list[tuple[str, dict]] = field(default_factory=list)  # (path, JSON body)

    def bodies(self, path_suffix: str) -> list[dict]:
        return [body for path, body in self.requests if path.endswith(path_suffix)]


@contextmanager
def recording_proxy(target: str) -> Iterator[Recording]:
    port = free_port()
    recording = Recording(f"http://127.0.0.1:{port}")
    upstream = httpx.AsyncClient(base_url=target, timeout=600)

    async def forward(request: Request) -> StreamingResponse:
        body = await request.body()
        try:
            recording.requests.append((request.url.path, json.loads(body)))
        except ValueError:
            pass
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        sent = upstream.build_request(request.method, request.url.path, params=request.query_params, headers=headers,
                                      content=body)
        answer = await upstream.send(sent, stream=True)
        return StreamingResponse(answer.aiter_raw(), status_code=answer.status_code,
                                 headers={k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP},
                                 background=None)

    app = Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST", "DELETE", "PUT"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
    try:
        yield recording
    finally:
        server.should_exit = True
        thread.join(10)

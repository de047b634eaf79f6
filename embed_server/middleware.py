"""ASGI middleware: access check, request size limit, request metrics and the access log."""

from __future__ import annotations

import logging
import time

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embed_server.auth import AccessGate
from embed_server.errors import APIError, RequestTooLarge, error_body
from embed_server.metrics import Metrics

log = logging.getLogger("embed_server.access")

ROUTES = ("/v1/embeddings", "/v1/rerank", "/v1/search", "/v1/models", "/health", "/ready", "/metrics")


def client_family(headers: dict[bytes, bytes]) -> str:
    """A coarse, bounded label for who sent a request (metrics must not explode in cardinality)."""
    if any(name.startswith(b"x-openwebui-") for name in headers):
        return "open-webui"
    agent = headers.get(b"user-agent", b"").decode("latin-1").lower()
    for marker, family in (("openai/python", "openai-python"), ("langchain", "langchain"), ("aiohttp", "aiohttp"),
                           ("python-httpx", "httpx"), ("python-requests", "requests"), ("curl", "curl"),
                           ("schemathesis", "schemathesis")):
        if marker in agent:
            return family
    return "other"


def route_path(scope: Scope) -> str:
    """The path the app routes on: without the root path a proxy mounts it under (``--root-path``), as
    Starlette's router strips it; matching the raw path would let ``/<root>/v1/...`` pass unchecked."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] or "/" if root and path.startswith(root) else path


def route_label(path: str) -> str:
    for route in ROUTES:
        if path == route or path.startswith(route + "/"):
            return route
    return "other"


class RequestGuard:
    """Refuses requests the access gate refuses (before a byte of their body is read) and bodies over
    ``max_bytes`` with 413, then counts and logs every request."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_bytes: int, gate: AccessGate) -> None:
        self.app = app
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            client_host = scope["client"][0] if scope.get("client") else None
            authorization = headers.get(b"authorization", b"").decode("latin-1") or None
            refusal = self.gate.refusal(route_path(scope), authorization, client_host)
            if refusal is not None:
                await _send_error(send_and_record, refusal)
                return
            body_receive = await self._bounded_receive(headers, receive)
            if body_receive is None:
                await _send_error(send_and_record, RequestTooLarge(f"Request body is larger than {self.max_bytes} bytes."))
            else:
                await self.app(scope, body_receive, send_and_record)
        finally:
            elapsed = time.perf_counter() - started
            route = route_label(scope["path"])
            client = client_family(headers)
            self.metrics.requests.labels(route, str(status), client).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            log.info(
                "request",
                extra={"method": scope["method"], "path": scope["path"], "status": status,
                       "duration_ms": round(elapsed * 1000, 2), "client": client},
            )

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        client_host = scope["client"][0] if scope.get("client") else None
        authorization = headers.get(b"authorization", b"").decode("latin-1") or None
        if self.gate.refusal(route_path(scope), authorization, client_host) is None:
            await self.app(scope, receive, send)
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1008})  # policy violation

    async def _bounded_receive(self, headers: dict[bytes, bytes], receive: Receive) -> Receive | None:
        """``receive`` itself when the declared length fits; a replay of the read body otherwise.

        None when the body is over the limit.
        """
        length = headers.get(b"content-length")
        if length is not None:
            return receive if length.isdigit() and int(length) <= self.max_bytes else None
        if b"chunked" not in headers.get(b"transfer-encoding", b""):
            return receive
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return receive
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return None
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay


async def _send_error(send: Send, error: APIError) -> None:
    """An OpenAI-shaped error, sent without reading the request body; the connection closes after it."""
    body = orjson.dumps(error_body(error.message, error.type, param=error.param, code=error.code))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})

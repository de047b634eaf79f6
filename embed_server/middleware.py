"""ASGI middleware: access check, request size limit, request metrics and the access log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

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


class BodyTooLarge(RequestTooLarge):
    """Raised from ``receive`` once a body passes its limit while it arrives: whatever the route makes of
    its cut-off body, the client gets this 413."""


class RequestGuard:
    """Refuses requests the access gate refuses (before a byte of their body is read) and bodies over their
    limit with 413 (announced ones before a byte is read, chunked ones as soon as they pass it), then counts
    and logs every request.

    ``max_bytes`` is one limit, or the limit for a route's path. ``detail_errors`` names the paths whose
    routes answer errors as ``{"detail": ...}`` (Open WebUI's Pipelines protocol); every other path gets
    OpenAI's error shape.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_bytes: int | Callable[[str], int], gate: AccessGate,
                 detail_errors: Callable[[str], bool] | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.max_bytes = max_bytes if callable(max_bytes) else (lambda path, limit=max_bytes: limit)
        self.gate = gate
        self.detail_errors = detail_errors or (lambda path: False)

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
            path = route_path(scope)
            detail = self.detail_errors(path)
            refusal = self.gate.refusal(path, authorization, client_host)
            if refusal is not None:
                await _send_error(send_and_record, refusal, detail)
                return
            limit = self.max_bytes(path)
            length = headers.get(b"content-length")
            if length is not None and not (length.isdigit() and int(length) <= limit):
                await _send_error(send_and_record, _too_large(limit), detail)
                return
            await _BoundedBody(self.app, limit, detail)(scope, receive, send_and_record)
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


class _BoundedBody:
    """Runs the app with a ``receive`` that counts the body as it arrives, never holding it.

    The body is not read ahead: the route runs at once and can refuse a caller (an upload's credential,
    checked with Open WebUI) before a byte of it is read. Once the body passes ``limit``, ``receive`` raises
    BodyTooLarge and the client gets the 413, in place of whatever response the route then starts
    (FastAPI turns a failed body read into a 400).
    """

    def __init__(self, app: ASGIApp, limit: int, detail: bool) -> None:
        self.app, self.limit, self.detail = app, limit, detail
        self.size = 0
        self.over = False
        self.started = False  # a response has begun: too late to answer 413
        self.replaced = False  # the 413 went out in place of the route's response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.size += len(message.get("body", b""))
                if self.size > self.limit:
                    self.over = True
                    raise BodyTooLarge(_too_large(self.limit).message)
            return message

        async def answer(message: Message) -> None:
            if self.replaced:
                return  # the rest of the route's own answer to its cut-off body
            if self.over and not self.started:
                self.started = self.replaced = True
                await _send_error(send, _too_large(self.limit), self.detail)
                return
            if message["type"] == "http.response.start":
                self.started = True
            await send(message)

        try:
            await self.app(scope, counted, answer)
        except Exception:
            if not self.over or self.started:
                raise
            await _send_error(send, _too_large(self.limit), self.detail)


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"Request body is larger than {limit} bytes.")


async def _send_error(send: Send, error: APIError, detail: bool = False) -> None:
    """An OpenAI-shaped error (or ``{"detail": message}``), sent without reading the request body; the
    connection closes after it."""
    body = orjson.dumps({"detail": error.message} if detail else
                        error_body(error.message, error.type, param=error.param, code=error.code))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})

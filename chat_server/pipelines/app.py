"""The Pipelines server: Open WebUI's Pipelines protocol over the chat server's answering path.

Open WebUI treats a connection as a pipelines server when its model list says ``"pipelines": true``; it then
sends every chat through the filters' ``/{id}/filter/inlet`` and ``/outlet`` (with the chatting user named
in the request), reads and sets valves at ``/{id}/valves``, and chats with pipe models at
``/chat/completions``. Every path answers at ``/`` and under ``/v1``, as Open WebUI may use either, and
every path needs the connection's key. Protocol routes answer errors as ``{"detail": ...}``, which Open
WebUI shows the user; the OpenAI routes in OpenAI's error shape.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from chat_server.answering import Answering
from chat_server.gate import body_limit
from chat_server.pipelines.knowledge import KnowledgePipelines, PipelineError, plain_messages
from chat_server.pipelines.valves import FilterValves, PipeValves, ValveStore, ValvesInvalid
from chat_server.routes.completions import Reply
from chat_server.schemas import ChatRequest
from config import Settings
from embed_server.auth import AccessGate, FailedAttempts, KeyGuard
from embed_server.errors import APIError, ModelNotFound, install_error_handlers
from embed_server.metrics import Metrics
from embed_server.middleware import RequestGuard
from embed_server.state_file import StateFileError
from vector_bridge.access import KnowledgeAccess

FILTER_ID = "knowledge-filter"
PIPE_ID = "knowledge-pipe"
PLAIN_ID = "plain-generator"
OPENAI_PATHS = ("/models", "/chat/completions")  # the rest speak the protocol's {"detail": ...}
PIPELINES = {FILTER_ID: ("Knowledge context (filter)", "filter", FilterValves),
             PIPE_ID: ("Knowledge answers (pipe)", "pipe", PipeValves)}


class PipeRequest(ChatRequest):
    user: dict[str, Any] | None = None  # Open WebUI names the chatting user to pipe models


def create_pipelines_app(settings: Settings, answering: Answering, access: Callable[[], KnowledgeAccess],
                         metrics: Metrics, failures: FailedAttempts) -> FastAPI:
    """``access`` gives the chat server's KnowledgeAccess, which exists once its lifespan has started."""
    if settings.pipelines_key is None:
        raise ValueError("the Pipelines server needs a key (EMBED_PIPELINES_KEY)")
    app = FastAPI(title="Knowledge pipelines", docs_url=None, redoc_url=None, openapi_url=None)
    valves = ValveStore(settings.pipelines_valves_file, {pid: model for pid, (_, _, model) in PIPELINES.items()})
    admin_key = settings.openwebui_api_key.get_secret_value() if settings.openwebui_api_key else None

    def pipelines() -> KnowledgePipelines:
        return KnowledgePipelines(answering, access(), admin_key)

    router = APIRouter()

    @router.get("/")
    async def status() -> dict[str, bool]:
        return {"status": True}

    @router.get("/models")
    async def models() -> dict[str, Any]:
        created = int(time.time())
        data = [{"id": PLAIN_ID, "name": f"{answering.generator.name} (no Knowledge)", "object": "model",
                 "created": created, "owned_by": "knowledge"}]
        for pipeline_id, (name, kind, _) in PIPELINES.items():
            pipeline: dict[str, Any] = {"type": kind, "valves": True}
            if kind == "filter":
                current = valves.get(pipeline_id)
                assert isinstance(current, FilterValves)
                pipeline |= {"pipelines": current.pipelines, "priority": current.priority}
            data.append({"id": pipeline_id, "name": name, "object": "model", "created": created,
                         "owned_by": "knowledge", "pipeline": pipeline})
        return {"object": "list", "data": data, "pipelines": True}

    @router.get("/pipelines")
    async def list_pipelines() -> dict[str, Any]:
        return {"data": [{"id": pid, "name": name, "type": kind, "valves": True}
                         for pid, (name, kind, _) in PIPELINES.items()]}

    async def built_in() -> JSONResponse:
        return JSONResponse({"detail": "This server's pipelines are built in; it does not add, upload, reload or "
                                       "delete pipeline files. Change what they do through their valves."},
                            status_code=400)

    for method, path in (("POST", "/pipelines/add"), ("POST", "/pipelines/upload"), ("POST", "/pipelines/reload"),
                         ("DELETE", "/pipelines/delete")):
        router.add_api_route(path, built_in, methods=[method])

    @router.get("/{pipeline_id}/valves")
    async def get_valves(pipeline_id: str) -> Any:
        return await _protocol(lambda: _found(pipeline_id, valves.get))

    @router.get("/{pipeline_id}/valves/spec")
    async def get_valves_spec(pipeline_id: str) -> Any:
        return await _protocol(lambda: _found(pipeline_id, lambda pid: PIPELINES[pid][2].model_json_schema()))

    @router.post("/{pipeline_id}/valves/update")
    async def update_valves(pipeline_id: str, request: Request) -> Any:
        async def run() -> Any:
            changes = await _json_object(request)
            return _found(pipeline_id, lambda pid: valves.update(pid, changes))

        return await _protocol(run)

    @router.post("/{pipeline_id}/filter/inlet")
    async def inlet(pipeline_id: str, request: Request) -> Any:
        async def run() -> Any:
            form = await _json_object(request)
            body = _found(pipeline_id, lambda pid: _body(form))
            if pipeline_id != FILTER_ID:
                return body  # Open WebUI sends a pipe's chats through its inlet too: the pipe has nothing to add
            return await pipelines().inlet(body, _user(form), valves.get(FILTER_ID))

        return await _protocol(run)

    @router.post("/{pipeline_id}/filter/outlet")
    async def outlet(pipeline_id: str, request: Request) -> Any:
        async def run() -> Any:
            form = await _json_object(request)
            return _found(pipeline_id, lambda pid: _body(form))  # the answer goes back as the model wrote it

        return await _protocol(run)

    @router.post("/chat/completions")
    async def chat(body: PipeRequest, request: Request) -> Any:
        messages = plain_messages([message.model_dump() for message in body.messages])
        options = {"max_tokens": body.max_completion_tokens or body.max_tokens, "temperature": body.temperature}
        if body.model == PLAIN_ID:
            answer = await answering.generate(messages, None, **options)
        elif body.model == PIPE_ID:
            sources = await pipelines().sources(body.model_dump(), body.user, valves.get(PIPE_ID))
            answer = await answering.generate(messages, sources, **options)
        else:
            raise ModelNotFound(f"The model '{body.model}' does not exist here.", param="model")
        reply = Reply(body.model)
        if not body.stream:
            return JSONResponse(reply.completion(await answer.text(), answer))
        return StreamingResponse(reply.chunks(answer, source_events=True), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    app.include_router(router)
    app.include_router(router, prefix="/v1")
    install_error_handlers(app)
    gate = AccessGate(KeyGuard([settings.pipelines_key.get_secret_value()], None), failures, keyed=("",), user=())
    app.add_middleware(RequestGuard, metrics=metrics, max_bytes=body_limit(settings), gate=gate,
                       detail_errors=_protocol_path)
    return app


def _protocol_path(path: str) -> bool:
    """Whether ``path`` is a protocol route (errors as ``{"detail": ...}``) rather than an OpenAI one."""
    return path.removeprefix("/v1") not in OPENAI_PATHS


async def _protocol(run: Callable[[], Any]) -> Any:
    """Runs a protocol route, its failures as ``{"detail": ...}``, the form Open WebUI shows."""
    try:
        result = run()
        return await result if isinstance(result, Awaitable) else result
    except ValvesInvalid as error:
        return JSONResponse({"detail": f"Invalid valves: {error}"}, status_code=400)
    except StateFileError:
        return JSONResponse({"detail": "The valves could not be saved; they are unchanged."}, status_code=503)
    except APIError as error:
        return JSONResponse({"detail": error.message}, status_code=error.status_code, headers=error.headers)


def _found(pipeline_id: str, get: Callable[[str], Any]) -> Any:
    if pipeline_id not in PIPELINES:
        raise PipelineError(f"No pipeline '{pipeline_id}' here.", 404)
    return get(pipeline_id)


def _body(form: dict[str, Any]) -> dict[str, Any]:
    body = form.get("body")
    if not isinstance(body, dict):
        raise PipelineError("The request needs a 'body' object (the chat).", 400)
    return body


def _user(form: dict[str, Any]) -> dict[str, Any] | None:
    user = form.get("user")
    return user if isinstance(user, dict) else None


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        value = await request.json()
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise PipelineError("The request body must be a JSON object.", 400)
    return value

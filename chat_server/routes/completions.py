"""GET /v1/models and POST /v1/chat/completions: a model per Knowledge base the caller may read.

The caller is an Open WebUI user, known by their own Open WebUI key or token (Open WebUI itself calls with
the key its connection is configured with). Sources reach a client in the form it understands: Open WebUI
reads `{"event": {"type": "source", ...}}` stream chunks; every other client gets a `sources` field on the
last chunk (or the response), which the OpenAI clients keep as an extra field.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from chat_server.generators import Generator, GeneratorUnavailable
from chat_server.prompt import grounded_messages, last_question
from chat_server.retrieval import Source, retrieve
from chat_server.schemas import ChatRequest, SourceOut
from config import Settings
from embed_server.auth import bearer_token
from embed_server.errors import APIError, AuthenticationFailed, ModelNotFound, PermissionDenied
from vector_bridge.access import CredentialRefused, KnowledgeAccess, KnowledgeBase, NotPermitted, OpenWebUIUnavailable
from vector_bridge.embeddings import EmbeddingsError
from vector_bridge.store import StoreError

router = APIRouter()
ALL = "knowledge-all"


class GeneratorDown(APIError):
    status_code = 503
    type = "server_error"
    code = "generator_unavailable"


class UpstreamUnavailable(APIError):
    status_code = 502
    type = "server_error"
    code = "upstream_unavailable"


def model_id(base: KnowledgeBase) -> str:
    return f"knowledge-{base.id}"


async def readable_bases(request: Request) -> list[KnowledgeBase]:
    access: KnowledgeAccess = request.app.state.knowledge_access
    token = bearer_token(request.headers.get("authorization"))
    try:
        bases = await access.readable(token)
        # Open WebUI names the user it calls for (ENABLE_FORWARD_USER_INFO_HEADERS). A connection set up with one
        # fixed key would answer every user from that key's Knowledge: refused. Its auth must forward the session.
        forwarded = request.headers.get("x-openwebui-user-id")
        if forwarded is not None and await access.session_user(token) != forwarded:
            raise PermissionDenied("Open WebUI called for another user than the credential it sent belongs to: set "
                                   "this connection's auth to 'Session' so each user's own session reaches this server.")
    except CredentialRefused as error:
        raise request.app.state.failed_attempts.refuse(request.client.host if request.client else None,
                                                       AuthenticationFailed(str(error), headers={"WWW-Authenticate": "Bearer"})) from None
    except NotPermitted as error:
        raise PermissionDenied(str(error)) from None
    except OpenWebUIUnavailable as error:
        raise UpstreamUnavailable(f"Open WebUI, which says who may read what, is unavailable: {error}") from None
    return bases


@router.get("/v1/models", summary="One model per Knowledge base the caller may read, and one over all of them")
async def list_models(request: Request) -> dict[str, Any]:
    bases = await readable_bases(request)
    created = request.app.state.started
    data = [{"id": ALL, "object": "model", "created": created, "owned_by": "knowledge",
             "name": "All my Knowledge"}]
    data += [{"id": model_id(base), "object": "model", "created": created, "owned_by": "knowledge",
              "name": f"{base.name} (Knowledge)"} for base in bases]
    return {"object": "list", "data": data}


@router.post("/v1/chat/completions", summary="An answer from the chosen Knowledge, with its sources")
async def chat_completions(body: ChatRequest, request: Request) -> Any:
    settings: Settings = request.app.state.settings
    bases = await readable_bases(request)
    chosen = bases if body.model == ALL else [base for base in bases if model_id(base) == body.model]
    if not chosen and body.model != ALL:
        # The same answer for a Knowledge base that does not exist and one the caller may not read.
        raise ModelNotFound(f"The model '{body.model}' does not exist or you do not have access to it.", param="model")
    messages = [message.model_dump() for message in body.messages]
    try:
        sources = await retrieve(request.app.state.store(), request.app.state.embeddings, chosen,
                                 last_question(messages), settings.chat_top_k)
    except (StoreError, EmbeddingsError) as error:
        raise UpstreamUnavailable(f"The store or the embeddings server could not be reached: {error}") from None
    prompt = grounded_messages(messages, sources)
    generator: Generator = request.app.state.generator
    max_tokens = body.max_completion_tokens or body.max_tokens or settings.chat_max_tokens
    answer = _Answer(body.model, sources)
    pieces = generator.stream(prompt, max_tokens=max_tokens, temperature=body.temperature)
    if not body.stream:
        try:
            text = "".join([piece async for piece in pieces])
        except GeneratorUnavailable as error:
            raise GeneratorDown(str(error)) from None
        return JSONResponse(answer.completion(text))
    first = await _first_piece(pieces)  # a generator that is down fails the request, not the stream
    events = _wants_source_events(settings, request)
    return StreamingResponse(answer.chunks(first, pieces, events), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _first_piece(pieces: AsyncIterator[str]) -> str | None:
    try:
        return await anext(pieces)
    except StopAsyncIteration:
        return None
    except GeneratorUnavailable as error:
        raise GeneratorDown(str(error)) from None


def _wants_source_events(settings: Settings, request: Request) -> bool:
    if settings.chat_source_events != "auto":
        return settings.chat_source_events == "always"
    return any(name.lower().startswith("x-openwebui-") for name in request.headers)


class _Answer:
    def __init__(self, model: str, sources: list[Source]) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.sources = sources

    def _sources_field(self) -> list[dict[str, Any]]:
        return [SourceOut(number=n, knowledge_id=s.knowledge.id, knowledge_name=s.knowledge.name, name=s.name,
                          text=s.text, score=s.score, metadata=s.metadata).model_dump()
                for n, s in enumerate(self.sources, 1)]

    def completion(self, text: str) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                "sources": self._sources_field()}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    def source_events(self) -> list[str]:
        """Open WebUI's citation events: one per file, its chunks and their scores together."""
        by_file: dict[tuple[str, str], list[Source]] = {}
        for source in self.sources:
            by_file.setdefault((source.knowledge.id, source.name), []).append(source)
        events = []
        for (knowledge_id, name), chunks in by_file.items():
            file_id = chunks[0].metadata.get("file_id")
            data = {"source": {"id": file_id or knowledge_id, "name": name},
                    "document": [chunk.text for chunk in chunks],
                    "metadata": [{"source": name, "name": name, **({"file_id": file_id} if file_id else {}),
                                  **({"page": c.metadata["page"]} if "page" in c.metadata else {})} for c in chunks],
                    "distances": [chunk.score for chunk in chunks]}
            events.append(f"data: {json.dumps({'event': {'type': 'source', 'data': data}}, ensure_ascii=False)}\n\n")
        return events

    async def chunks(self, first: str | None, rest: AsyncIterator[str], events: bool) -> AsyncIterator[str]:
        yield self._chunk({"role": "assistant", "content": ""})
        if events:
            for event in self.source_events():
                yield event
        if first:
            yield self._chunk({"content": first})
        try:
            async for piece in rest:
                yield self._chunk({"content": piece})
        except GeneratorUnavailable:
            # The status line is sent: all that is left is to say so inside the answer and end it.
            yield self._chunk({"content": "\n\n(The answer was cut off: the generator stopped responding.)"})
        yield self._chunk({}, "stop", sources=self._sources_field())
        yield "data: [DONE]\n\n"

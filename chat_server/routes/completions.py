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

from chat_server.answering import Answer, Answering
from chat_server.caller import count_chat, readable_bases
from chat_server.generators import GeneratorUnavailable
from chat_server.schemas import ChatRequest
from chat_server.sources import openwebui_citations, sources_field
from config import Settings
from embed_server.errors import ModelNotFound
from vector_bridge.access import KnowledgeBase

router = APIRouter()
ALL = "knowledge-all"
CUT_OFF = "\n\n(The answer was cut off: the generator stopped responding.)"


def model_id(base: KnowledgeBase) -> str:
    return f"knowledge-{base.id}"


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
    bases = await readable_bases(request)
    await count_chat(request)
    chosen = bases if body.model == ALL else [base for base in bases if model_id(base) == body.model]
    if not chosen and body.model != ALL:
        # The same answer for a Knowledge base that does not exist and one the caller may not read.
        raise ModelNotFound(f"The model '{body.model}' does not exist or you do not have access to it.", param="model")
    answering: Answering = request.app.state.answering
    answer = await answering.answer(chosen, [message.model_dump() for message in body.messages],
                                    max_tokens=body.max_completion_tokens or body.max_tokens,
                                    temperature=body.temperature)
    reply = Reply(body.model)
    if not body.stream:
        return JSONResponse(reply.completion(await answer.text(), answer))
    events = _wants_source_events(request.app.state.settings, request)
    return StreamingResponse(reply.chunks(answer, events), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _wants_source_events(settings: Settings, request: Request) -> bool:
    if settings.chat_source_events != "auto":
        return settings.chat_source_events == "always"
    return any(name.lower().startswith("x-openwebui-") for name in request.headers)


class Reply:
    """An answer in OpenAI's chat-completion shapes."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def completion(self, text: str, answer: Answer) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                "sources": sources_field(answer.sources)}

    def chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    async def chunks(self, answer: Answer, source_events: bool) -> AsyncIterator[str]:
        yield self.chunk({"role": "assistant", "content": ""})
        if source_events:
            for citation in openwebui_citations(answer.sources):
                yield f"data: {json.dumps({'event': {'type': 'source', 'data': citation}}, ensure_ascii=False)}\n\n"
        try:
            async for piece in answer.pieces:
                yield self.chunk({"content": piece})
        except GeneratorUnavailable:
            # The status line is sent: all that is left is to say so inside the answer and end it.
            yield self.chunk({"content": CUT_OFF})
        yield self.chunk({}, "stop", sources=sources_field(answer.sources))
        yield "data: [DONE]\n\n"

"""The direct chat API: ``POST /api/chat``, its WebSocket ``/api/chat/ws``, and ``GET /api/knowledge``.

The caller authenticates with their own Open WebUI API key or session token and is answered only from the
Knowledge bases Open WebUI lets them read.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, WebSocket

from chat_server.caller import count_chat, readable_bases
from chat_server.direct import Question, ask, choose, knowledge_field, reply
from chat_server.gate import CHAT_SOCKET
from chat_server.socket import ChatSocket

router = APIRouter()


@router.post("/api/chat", summary="An answer from the chosen Knowledge (default: all the caller may read), "
             "with its sources")
async def chat(body: Question, request: Request) -> dict[str, Any]:
    readable = await readable_bases(request)
    await count_chat(request)
    bases = choose(readable, body.knowledge)
    answer = await ask(request.app.state.answering, bases, body)
    return reply(await answer.text(), answer, bases)


@router.get("/api/knowledge", summary="The Knowledge bases the caller may read")
async def knowledge(request: Request) -> dict[str, Any]:
    return {"data": knowledge_field(await readable_bases(request))}


@router.websocket(CHAT_SOCKET)
async def chat_socket(socket: WebSocket) -> None:
    await ChatSocket(socket).serve()

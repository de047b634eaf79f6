"""``POST /api/documents``: files into a Knowledge base through Open WebUI's own API, as the caller."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from chat_server.caller import readable_bases
from chat_server.direct import choose
from chat_server.uploads import add_documents, received, target_fields
from embed_server.auth import bearer_token
from embed_server.errors import InvalidRequest

router = APIRouter()


@router.post("/api/documents", summary="Add files to a Knowledge base (multipart: 'file' fields, and 'knowledge' "
             "= an id or 'knowledge_name' = a new Knowledge base); each file's outcome")
async def documents(request: Request) -> dict[str, Any]:
    settings = request.app.state.settings
    token = bearer_token(request.headers.get("authorization"))
    readable = await readable_bases(request)  # the credential is checked before the body is read
    async with received(request, settings.chat_upload_max_bytes) as upload:
        knowledge_id, new_name = target_fields(upload.fields)
        if not upload.files:
            raise InvalidRequest("No file was sent: add one or more 'file' fields.", param="file")
        if knowledge_id is not None:
            choose(readable, knowledge_id)  # 404 for one the caller cannot read, before anything is sent
        target, files = await asyncio.to_thread(add_documents, settings.openwebui_url, token, knowledge_id,
                                                new_name, upload.files)
    request.app.state.knowledge_access.forget(token)  # a new Knowledge base is readable at once
    return {"knowledge": {"id": target.id, "name": target.name, "created": target.created}, "files": files,
            "ok": all(f["status"] in ("uploaded", "replaced", "unchanged") for f in files)}

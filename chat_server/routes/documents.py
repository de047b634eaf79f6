"""``POST /api/documents``: files into a Knowledge base through Open WebUI's own API, as the caller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Request

from chat_server.caller import count_chat, readable_bases
from chat_server.direct import choose
from chat_server.uploads import add_documents, received, target_fields
from embed_server.auth import bearer_token
from embed_server.errors import InvalidRequest, RateLimited

router = APIRouter()


class UploadSlots:
    """Uploads under way: a few at a time in all (their own threads) and one per user at a time."""

    def __init__(self, total: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=total, thread_name_prefix="upload")
        self._total = total
        self._busy: set[str] = set()

    @asynccontextmanager
    async def slot(self, caller: str) -> AsyncIterator[None]:
        if caller in self._busy or len(self._busy) >= self._total:
            raise RateLimited("Another upload is under way; send the next when it is done.",
                              headers={"Retry-After": "10"})
        self._busy.add(caller)
        try:
            yield
        finally:
            self._busy.discard(caller)


@router.post("/api/documents", summary="Add files to a Knowledge base (multipart: 'file' fields, and 'knowledge' "
             "= an id or 'knowledge_name' = a new Knowledge base); each file's outcome")
async def documents(request: Request) -> dict[str, Any]:
    settings = request.app.state.settings
    token = bearer_token(request.headers.get("authorization"))
    # Open WebUI checks the credential, and the user's chat budget is counted, before a byte of the body is read:
    # the server does not read ahead (RequestGuard), so a refused caller's upload is never received.
    readable = await readable_bases(request)
    caller = await count_chat(request, token)
    uploads: UploadSlots = request.app.state.uploads
    async with uploads.slot(caller), received(request, settings.chat_upload_max_bytes) as upload:
        knowledge_id, new_name = target_fields(upload.fields)
        if not upload.files:
            raise InvalidRequest("No file was sent: add one or more 'file' fields.", param="file")
        if knowledge_id is not None:
            choose(readable, knowledge_id)  # 404 for one the caller cannot read, before anything is sent
        # Open WebUI takes minutes over a long PDF: in threads of their own, so chats never wait behind uploads.
        target, files = await asyncio.get_running_loop().run_in_executor(
            uploads.pool, add_documents, settings.openwebui_url, token, knowledge_id, new_name, upload.files)
    request.app.state.knowledge_access.forget(token)  # a new Knowledge base is readable at once
    return {"knowledge": {"id": target.id, "name": target.name, "created": target.created}, "files": files,
            "ok": all(f["status"] in ("uploaded", "replaced", "unchanged") for f in files)}

"""What the pipelines do with a chat: the filter adds retrieved Knowledge to it; the pipe answers from it.

Open WebUI vouches for the chatting user by name (the connection's key proves it is Open WebUI calling), so
the Knowledge a user gets is what ``KnowledgeAccess.readable_by`` says that user may read, whatever the
valves choose.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from chat_server.answering import Answering
from chat_server.prompt import reference_block
from chat_server.retrieval import Source
from chat_server.pipelines.valves import EVERY_KNOWLEDGE, PipeValves
from chat_server.schemas import ChatMessage
from embed_server.errors import APIError
from vector_bridge.access import AccessError, CredentialRefused, KnowledgeAccess, KnowledgeBase, OpenWebUIUnavailable

log = logging.getLogger(__name__)
_USER_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # what Open WebUI issues (UUIDs); it goes into a URL path


class PipelineError(APIError):
    """A request the pipeline cannot serve; its status and message reach Open WebUI (as ``detail``)."""

    type = "invalid_request_error"

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code
        if status_code >= 500:
            self.type = "server_error"


def plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Role and text of each message (Open WebUI's messages carry ids, files and content parts besides)."""
    plain = []
    for message in messages:
        if isinstance(message, dict) and message.get("role") in ("system", "user", "assistant"):
            plain.append(ChatMessage.model_validate(message).model_dump())
    return plain


# Models that retrieve for themselves (the chat server's knowledge-* models, the pipe): no second helping.
ANSWERS_FROM_KNOWLEDGE = "knowledge-"


def is_task(body: dict[str, Any]) -> bool:
    """Open WebUI's own background requests (titles, tags, follow-ups) pass through filters too."""
    return bool((body.get("metadata") or {}).get("task"))


class KnowledgePipelines:
    def __init__(self, answering: Answering, access: KnowledgeAccess, admin_key: str | None) -> None:
        self.answering = answering
        self.access = access
        self._admin_key = admin_key

    async def bases_for(self, user: dict[str, Any] | None, valves: PipeValves) -> list[KnowledgeBase]:
        if not user or not user.get("id"):
            raise PipelineError("Open WebUI sent no user with this request.", 400)
        if not _USER_ID.fullmatch(str(user["id"])):
            raise PipelineError("The user id Open WebUI sent is not one it issues.", 400)
        if not self._admin_key:
            raise PipelineError("The Pipelines server cannot tell which Knowledge this user may read: set "
                                "OPENWEBUI_API_KEY to an Open WebUI admin's API key.", 503)
        try:
            readable = await self.access.readable_by(str(user["id"]), self._admin_key)
        except CredentialRefused:
            raise PipelineError("Open WebUI refused the Pipelines server's OPENWEBUI_API_KEY.", 503) from None
        except OpenWebUIUnavailable as error:
            raise PipelineError(f"Open WebUI, which says who may read what, is unavailable: {error}", 502) from None
        except AccessError as error:
            raise PipelineError(str(error), 503) from None
        if EVERY_KNOWLEDGE in valves.knowledge:
            return readable
        return [base for base in readable if base.id in valves.knowledge]

    async def sources(self, body: dict[str, Any], user: dict[str, Any] | None, valves: PipeValves) -> list[Source]:
        bases = await self.bases_for(user, valves)
        return await self.answering.sources(bases, plain_messages(body.get("messages") or []), top_k=valves.top_k,
                                            min_score=valves.min_score)

    async def inlet(self, body: dict[str, Any], user: dict[str, Any] | None, valves: PipeValves) -> dict[str, Any]:
        """``body`` with the retrieved Knowledge put before the last user message; unchanged when nothing
        scores ``min_score`` or more, so a chat about something else goes on as if the filter were not there.

        A failure of ours (Open WebUI, the store or the embeddings server unreachable; no admin key) leaves the
        chat unchanged rather than failing it: the filter runs on every chat of the models it names, and a chat
        without the Knowledge is what the user would have had without the filter. It is logged."""
        if is_task(body) or str(body.get("model", "")).startswith(ANSWERS_FROM_KNOWLEDGE):
            return body
        try:
            sources = await self.sources(body, user, valves)
        except APIError as error:
            if error.status_code < 500:
                raise  # a request that is wrong in itself (no user, a malformed id) is refused
            log.warning("Knowledge filter skipped a chat", extra={"reason": error.message,
                                                                  "status": error.status_code})
            return body
        messages = list(body.get("messages") or [])
        last = next((i for i in range(len(messages) - 1, -1, -1) if isinstance(messages[i], dict)
                     and messages[i].get("role") == "user"), None)
        if not sources or last is None:
            return body
        block, content = reference_block(sources), messages[last].get("content")
        if isinstance(content, list):  # text and images as parts: the sources go first as a text part
            messages[last] = {**messages[last], "content": [{"type": "text", "text": block}, *content]}
        else:
            messages[last] = {**messages[last], "content": f"{block}\n\n{content or ''}"}
        return {**body, "messages": messages}

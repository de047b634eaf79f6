"""The direct chat API (for apps that do not use Open WebUI): its request, and the one path its HTTP route and
its WebSocket both take, so that the same question gets the same sources on either."""

from __future__ import annotations

from typing import Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chat_server.answering import Answer, Answering
from chat_server.errors import KnowledgeNotFound
from chat_server.sources import sources_field
from embed_server.errors import InvalidRequest, _describe_validation_error
from vector_bridge.access import KnowledgeBase

MAX_TEXT_CHARS = 32_000  # a question or history turn; far beyond any small generator's context anyway
MAX_HISTORY = 100
MAX_KNOWLEDGE = 1000


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str = Field(max_length=MAX_TEXT_CHARS)


class Question(BaseModel):
    """``POST /api/chat``'s body, and each question sent on the WebSocket."""

    # A new API: a misspelt field ("knowlege") is an error, not a silent search over everything.
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    knowledge: str | list[str] | None = Field(
        default=None, description="A Knowledge base id, a list of ids, or omitted for all the caller may read.")
    history: list[Turn] = Field(default=[], max_length=MAX_HISTORY, description="Earlier turns, oldest first.")
    top_k: int | None = Field(default=None, ge=1, le=50, description="Chunks that reach the prompt.")
    max_tokens: int | None = Field(default=None, ge=1, le=4096)

    @field_validator("question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the question is empty")
        return value

    @field_validator("knowledge")
    @classmethod
    def _ids(cls, value: str | list[str] | None) -> str | list[str] | None:
        ids = [value] if isinstance(value, str) else value or []
        if value is not None and (not ids or len(ids) > MAX_KNOWLEDGE or not all(0 < len(i.strip()) <= 256 for i in ids)):
            raise ValueError("give a Knowledge base id, a non-empty list of ids, or leave it out for all")
        return value

    def messages(self) -> list[dict[str, str]]:
        return [turn.model_dump() for turn in self.history] + [{"role": "user", "content": self.question}]


def parse_question(data: Any) -> Question:
    """A question from a WebSocket message, refused as the HTTP route refuses its body (400, same message)."""
    if not isinstance(data, dict):
        raise InvalidRequest("A message must be a JSON object.")
    try:
        return Question.model_validate(data)
    except ValidationError as error:
        message, param = _describe_validation_error(RequestValidationError(error.errors()))
        raise InvalidRequest(message, param=param) from None


def choose(readable: list[KnowledgeBase], wanted: str | list[str] | None) -> list[KnowledgeBase]:
    """The Knowledge bases asked for, among those the caller may read (all of them when none is named)."""
    if wanted is None:
        return readable
    by_id = {base.id: base for base in readable}
    ids = list(dict.fromkeys([wanted] if isinstance(wanted, str) else wanted))
    for knowledge_id in ids:
        if knowledge_id not in by_id:
            # The same words whether it does not exist or belongs to someone else.
            raise KnowledgeNotFound(f"The Knowledge base '{knowledge_id}' does not exist or you do not have "
                                    "access to it.", param="knowledge")
    return [by_id[knowledge_id] for knowledge_id in ids]


async def ask(answering: Answering, bases: list[KnowledgeBase], question: Question) -> Answer:
    messages = question.messages()
    sources = await answering.sources(bases, messages, top_k=question.top_k)
    return await answering.generate(messages, sources, max_tokens=question.max_tokens)


def knowledge_field(bases: list[KnowledgeBase]) -> list[dict[str, str]]:
    return [{"id": base.id, "name": base.name} for base in bases]


def reply(text: str, answer: Answer, bases: list[KnowledgeBase]) -> dict[str, Any]:
    return {"answer": text, "sources": sources_field(answer.sources), "knowledge": knowledge_field(bases)}

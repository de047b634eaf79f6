"""OpenAI chat-completions shapes, as far as this server reads and writes them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str = ""

    @field_validator("content", mode="before")
    @classmethod
    def _text_of_parts(cls, value: Any) -> Any:
        # Content may come as parts ([{"type": "text", "text": ...}, {"type": "image_url", ...}]): the text counts.
        if isinstance(value, list):
            return "\n".join(part.get("text", "") for part in value if isinstance(part, dict) and part.get("type") == "text")
        return "" if value is None else value


class ChatRequest(BaseModel):
    # Unknown fields are ignored, as OpenAI's clients and Open WebUI add their own.
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, description="knowledge-<id> for one Knowledge base, knowledge-all for all")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float = Field(default=0.0, ge=0, le=2)


class SourceOut(BaseModel):
    """One chunk that reached the prompt: the `sources` extension field of responses (plain OpenAI clients)."""

    number: int
    knowledge_id: str
    knowledge_name: str
    name: str
    text: str
    score: float
    metadata: dict[str, Any]

"""What writes the answers: any OpenAI-compatible LLM by URL, or the offline default in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol


class GeneratorUnavailable(RuntimeError):
    """The generator cannot answer now (down, timed out, or refused): a 502/503 for the caller, never a 500."""


class Generator(Protocol):
    name: str

    def stream(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float) -> AsyncIterator[str]:
        """The answer to ``messages`` (OpenAI chat format), a piece of text at a time."""
        ...

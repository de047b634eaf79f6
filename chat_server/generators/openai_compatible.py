"""Any OpenAI-compatible chat endpoint (Ollama, vLLM, llama.cpp's server, a hosted API) as the generator."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx

from chat_server.generators import GeneratorUnavailable


class OpenAICompatibleGenerator:
    def __init__(self, url: str, model: str, key: str | None, *, timeout: float) -> None:
        self.name = model
        self._model = model
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # A bound on every wait: connecting, and each read between two streamed pieces.
        self._http = httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers,
                                       timeout=httpx.Timeout(timeout, connect=min(timeout, 10)))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def stream(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float) -> AsyncIterator[str]:
        body = {"model": self._model, "messages": messages, "stream": True, "max_tokens": max_tokens,
                "temperature": temperature}
        try:
            async with self._http.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise GeneratorUnavailable(f"the generator answered {response.status_code}")
                async for line in response.aiter_lines():
                    piece = _content(line)
                    if piece is None:
                        break
                    if piece:
                        yield piece
        except httpx.TimeoutException:
            raise GeneratorUnavailable("the generator did not answer in time") from None
        except httpx.HTTPError as error:
            raise GeneratorUnavailable(f"the generator cannot be reached ({type(error).__name__})") from None


def _content(line: str) -> str | None:
    """The text of one server-sent event line; None at the end of the stream."""
    if not line.startswith("data:"):
        return ""
    data = line[5:].strip()
    if data == "[DONE]":
        return None
    try:
        choices = json.loads(data).get("choices") or []
    except ValueError:
        return ""
    return "".join((choice.get("delta") or {}).get("content") or "" for choice in choices)

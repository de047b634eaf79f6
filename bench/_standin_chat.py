"""The real chat server (settings from the environment, as `chat-server` reads them) with a stand-in generator
that records when it is called and answers at once: what `bench/chat.py` measures is everything before it.

    python bench/_standin_chat.py PORT

The generator's whole answer is one JSON object: ``waited_ms``, from the request reaching the app to the
generator's call; ``called``, the monotonic clock at the call (shared by every process on the host, so the
bench can also time it from its own send); ``prompt``, the system message it received (the numbered sources).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chat_server.app import create_app  # noqa: E402
from config import load_settings  # noqa: E402
from embed_server.logs import configure_logging  # noqa: E402

# Set by the outermost middleware for each request; the generator runs in the same request's context.
ARRIVED: ContextVar[float] = ContextVar("arrived")


class StampArrival:
    """Outermost ASGI layer: the moment uvicorn hands the request over, before the access gate and routing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            ARRIVED.set(time.perf_counter())
        await self.app(scope, receive, send)


class RecordingGenerator:
    """Implements ``chat_server.generators.Generator``: one piece, at once, that says when it was called."""

    name = "stand-in"

    async def stream(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float) -> AsyncIterator[str]:
        called = time.perf_counter()  # perf_counter is CLOCK_MONOTONIC on Linux: comparable across processes
        arrived = ARRIVED.get(None)
        yield json.dumps({"called": called, "waited_ms": None if arrived is None else (called - arrived) * 1000,
                          "prompt": messages[0]["content"]})


def main() -> None:
    settings = load_settings(chat_port=int(sys.argv[1]))
    configure_logging(settings.log_level, settings.log_format)  # the access log is part of the real cost
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app = StampArrival(create_app(settings, generator=RecordingGenerator()))
    uvicorn.run(app, host="127.0.0.1", port=settings.chat_port, log_config=None, timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()

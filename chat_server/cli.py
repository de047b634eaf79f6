"""``chat-server``: answer from the shared Open WebUI Knowledge over an OpenAI-compatible API, and (with a
pipelines key) over Open WebUI's Pipelines protocol on a second port."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from chat_server.app import create_app
from chat_server.pipelines.app import create_pipelines_app
from chat_server.pipelines.knowledge import PipelineError
from config import Settings, SettingsError, load_settings
from embed_server.logs import configure_logging
from vector_bridge.access import KnowledgeAccess


class _Companion(uvicorn.Server):
    """A second server in the process: the first one takes the signals and stops it."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def servers(settings: Settings) -> list[uvicorn.Server]:
    chat = create_app(settings)
    # A chat message is a question and some history: 1 MiB and two queued messages per socket, not uvicorn's
    # 16 MiB x 32 that a client could pile up while the server is busy answering.
    found = [uvicorn.Server(uvicorn.Config(chat, host=settings.chat_host, port=settings.chat_port, log_config=None,
                                           timeout_graceful_shutdown=10, ws_max_size=1024 * 1024, ws_max_queue=2))]
    if settings.pipelines_key is not None:
        pipelines = pipelines_app(settings, chat)
        found.append(_Companion(uvicorn.Config(pipelines, host=settings.pipelines_host, port=settings.pipelines_port,
                                               log_config=None, lifespan="off", timeout_graceful_shutdown=10)))
    return found


def pipelines_app(settings: Settings, chat: FastAPI) -> FastAPI:
    """The Pipelines server over the chat server's own answering path, access checks and metrics."""
    state = chat.state

    def access() -> KnowledgeAccess:
        if not hasattr(state, "knowledge_access"):  # made when the chat server starts: a moment after we do
            raise PipelineError("The server is starting; try again in a moment.", 503)
        return state.knowledge_access

    return create_pipelines_app(settings, state.answering, access, state.metrics, state.failed_attempts)


async def serve(running: list[uvicorn.Server]) -> None:
    main, *companions = running
    tasks = [asyncio.create_task(server.serve()) for server in companions]
    try:
        await main.serve()
    finally:
        for server in companions:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="chat-server", description=__doc__.split("`")[-1].strip(": "))
    parser.add_argument("--host", help="address to bind (default 127.0.0.1, env EMBED_CHAT_HOST)")
    parser.add_argument("--port", type=int, help="port to bind (default 8090, env EMBED_CHAT_PORT)")
    parser.add_argument("--pipelines-port", type=int, help="the Pipelines server's port (default 9099, env "
                        "EMBED_PIPELINES_PORT); it runs when EMBED_PIPELINES_KEY is set")
    parser.add_argument("--config", help="a TOML settings file (env EMBED_CONFIG)")
    args = parser.parse_args(argv)
    overrides = {key: value for key, value in {"chat_host": args.host, "chat_port": args.port,
                                               "pipelines_port": args.pipelines_port}.items() if value is not None}
    try:
        settings = load_settings(args.config, **overrides)
    except (SettingsError, FileNotFoundError) as error:
        print(f"chat-server: invalid settings: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    configure_logging(settings.log_level, settings.log_format)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Every route that answers from the Knowledge needs the caller's own Open WebUI credential, and every
    # Pipelines route the pipelines key, so there is no open mode to refuse: both may listen wherever Open
    # WebUI can reach them.
    asyncio.run(serve(servers(settings)))


if __name__ == "__main__":
    main()

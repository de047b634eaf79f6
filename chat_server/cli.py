"""``chat-server``: answer from the shared Open WebUI Knowledge over an OpenAI-compatible API."""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn

from chat_server.app import create_app
from config import SettingsError, load_settings
from embed_server.logs import configure_logging


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="chat-server", description=__doc__.split("`")[-1].strip(": "))
    parser.add_argument("--host", help="address to bind (default 127.0.0.1, env EMBED_CHAT_HOST)")
    parser.add_argument("--port", type=int, help="port to bind (default 8090, env EMBED_CHAT_PORT)")
    parser.add_argument("--config", help="a TOML settings file (env EMBED_CONFIG)")
    args = parser.parse_args(argv)
    overrides = {key: value for key, value in {"chat_host": args.host, "chat_port": args.port}.items()
                 if value is not None}
    try:
        settings = load_settings(args.config, **overrides)
    except (SettingsError, FileNotFoundError) as error:
        print(f"chat-server: invalid settings: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    configure_logging(settings.log_level, settings.log_format)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Every route that answers from the Knowledge needs the caller's own Open WebUI credential, so the chat
    # server has no open mode to refuse: it may listen wherever Open WebUI can reach it.
    uvicorn.run(create_app(settings), host=settings.chat_host, port=settings.chat_port, log_config=None,
                timeout_graceful_shutdown=10)


if __name__ == "__main__":
    main()

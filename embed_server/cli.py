"""``embed-server``: serve the configured models over HTTP."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn

from config import SettingsError, load_settings
from embed_server.app import create_app
from embed_server.backends.device import DeviceError, check_placements
from embed_server.logs import configure_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="embed-server", description=__doc__.split("`")[-1].strip(": "))
    parser.add_argument("--host", help="address to bind (default 127.0.0.1, env EMBED_HOST)")
    parser.add_argument("--port", type=int, help="port to bind (default 8080, env EMBED_PORT)")
    parser.add_argument("--config", help="a TOML settings file (env EMBED_CONFIG); see config/models.toml")
    parser.add_argument("--models-file", help="a TOML file of [[models]] to serve (env EMBED_MODELS_FILE)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = {key: value for key, value in
                 {"host": args.host, "port": args.port, "models_file": args.models_file}.items() if value is not None}
    try:
        settings = load_settings(args.config, **overrides)
    except (SettingsError, FileNotFoundError) as error:
        print(f"embed-server: invalid settings: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    try:
        check_placements(settings)
    except DeviceError as error:
        print(f"embed-server: invalid settings: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    problem = settings.exposure_problem()
    if problem:
        print(f"embed-server: {problem}", file=sys.stderr)
        raise SystemExit(2)
    configure_logging(settings.log_level, settings.log_format)
    # Fewer tokenizer threads than cores: the model's forward pass needs them.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger(__name__).info("starting", extra={"host": settings.host, "port": settings.port,
                                                        "models": [m.id for m in settings.models],
                                                        "threads": settings.threads})
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None,
                timeout_graceful_shutdown=10, backlog=2048)


if __name__ == "__main__":
    main()

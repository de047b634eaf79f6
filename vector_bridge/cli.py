"""`vector-bridge`: run the stack, wire Open WebUI to it, and work on the shared store."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx

from config import Settings, load_settings
from embed_server.logs import configure_logging
from vector_bridge.backup import BackupError, backup, restore
from vector_bridge.openwebui import OpenWebUIClient, OpenWebUIError
from vector_bridge.openwebui_env import PERSISTENT_CONFIG_NOTE, openwebui_environment, render_env_file
from vector_bridge.stack import openwebui_venv, run_stack
from vector_bridge.store import StoreError, connect


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vector-bridge", description="Embeddings and the shared Chroma store for Open WebUI.")
    parser.add_argument("--config", help="a TOML settings file (env EMBED_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start Chroma and the embeddings server, supervise them")
    up.add_argument("--with-openwebui", action="store_true", help="also start a pre-wired Open WebUI (installed once)")

    commands.add_parser("install-openwebui", help="install Open WebUI into its cached venv (once per version)")

    env = commands.add_parser("openwebui-env", help="print the environment block for Open WebUI")
    env.add_argument("--model", help="served model id Open WebUI should use (default: the first)")
    env.add_argument("--json", action="store_true")

    apply = commands.add_parser("openwebui-apply", help="switch a running Open WebUI to this stack, live")
    apply.add_argument("--url", help="Open WebUI address (env OPENWEBUI_URL)")
    apply.add_argument("--token", help="admin API key or token (env OPENWEBUI_API_KEY)")
    apply.add_argument("--model", help="served model id Open WebUI should use (default: the first)")
    apply.add_argument("--json", action="store_true")

    save = commands.add_parser("backup", help="write every collection of the store to one portable file")
    save.add_argument("file", type=Path)
    save.add_argument("--collection", action="append", help="only this collection (repeatable)")
    save.add_argument("--json", action="store_true")

    load = commands.add_parser("restore", help="recreate the collections of a backup file")
    load.add_argument("file", type=Path)
    load.add_argument("--replace", action="store_true", help="overwrite collections that exist and hold data")
    load.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings(args.config)
    configure_logging(settings.log_level, settings.log_format)

    if args.command == "up":
        return run_stack(settings, config_file=args.config, with_openwebui=args.with_openwebui)

    if args.command == "install-openwebui":
        print(openwebui_venv(settings))
        return 0

    if args.command == "openwebui-env":
        env = openwebui_environment(settings, args.model)
        print(json.dumps(env, indent=2) if args.json else render_env_file(env), end="\n" if args.json else "")
        return 0

    if args.command in ("backup", "restore"):
        return _backup_or_restore(args, settings)

    if args.command == "openwebui-apply":
        url = args.url or settings.openwebui_url
        token = args.token or (settings.openwebui_api_key.get_secret_value() if settings.openwebui_api_key else None)
        if not token:
            print("vector-bridge: an admin token is needed (--token or OPENWEBUI_API_KEY)", file=sys.stderr)
            return 2
        try:
            applied = OpenWebUIClient(url, token).apply_embedding_config(settings, args.model)
        except (OpenWebUIError, httpx.HTTPError) as error:
            print(f"vector-bridge: {error}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(applied, indent=2))
        else:
            print(f"Open WebUI at {url} now embeds with {applied['RAG_EMBEDDING_MODEL']} "
                  f"via {applied['openai_config']['url']} (engine {applied['RAG_EMBEDDING_ENGINE']}).")
        return 0
    return 2


def _backup_or_restore(args: argparse.Namespace, settings: Settings) -> int:
    progress = not args.json and sys.stderr.isatty()
    try:
        client = connect(settings)
        if args.command == "backup":
            summary = backup(client, args.file, collections=args.collection, progress=progress)
        else:
            summary = restore(client, args.file, replace=args.replace, progress=progress)
    except (StoreError, BackupError) as error:
        print(f"vector-bridge: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"file": str(args.file)} | summary.to_dict()))
    else:
        done = "wrote" if args.command == "backup" else "restored"
        print(f"{done} {summary.collections} collections, {summary.chunks} chunks "
              f"({summary.bytes / 1e6:.1f} MB) in {summary.seconds:.1f} s: {args.file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

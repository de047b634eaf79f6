"""`vector-bridge`: run the stack, wire Open WebUI to it, and work on the shared store."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from config import Settings, SettingsError, load_settings
from embed_server.logs import configure_logging
from vector_bridge.backup import BackupError, backup, restore
from vector_bridge.doctor import diagnose, gather
from vector_bridge.doctor import report as doctor_report
from vector_bridge.embeddings import EmbeddingsClient, EmbeddingsError, ModelNotServed
from vector_bridge.ingest import IngestError, ingest
from vector_bridge.cutover import CutoverError
from vector_bridge.migrate import MigrationError, migrate_store, roll_back
from vector_bridge.openwebui import OpenWebUIClient, OpenWebUIError
from vector_bridge.openwebui_env import (StoreDoesNotFit, CHAT_CONNECTION_NOTE, chat_connection_environment,
                                        openwebui_environment, render_env_file)
from vector_bridge.pgvector_migrate import migrate_pgvector, roll_back_pgvector
from vector_bridge.repair import remove_unlinked_chunks
from vector_bridge.search import (SearchError, UnknownEmbeddingModel, embedding_model, knowledge_collection,
                                  nearest_chunks, open_collection)
from vector_bridge.stack import openwebui_venv, pipelines_key, run_stack
from vector_bridge.store import StoreError, connect

if TYPE_CHECKING:
    from vector_bridge.store_move import StoreMove


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vector-bridge", description="Embeddings and the shared Chroma store for Open WebUI.")
    parser.add_argument("--config", help="a TOML settings file (env EMBED_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start Chroma and the embeddings server, supervise them")
    up.add_argument("--with-openwebui", action="store_true", help="also start a pre-wired Open WebUI (installed once)")
    up.add_argument("--with-chat", action="store_true", help="also start the Knowledge chat server (OpenAI-compatible)")
    up.add_argument("--store", choices=["chroma", "pgvector"], help="the shared store (env EMBED_STORE; default chroma): "
                    "pgvector runs a PostgreSQL with pgvector unless EMBED_PGVECTOR_URL names your own")

    commands.add_parser("install-openwebui", help="install Open WebUI into its cached venv (once per version)")

    env = commands.add_parser("openwebui-env", help="print the environment block for Open WebUI")
    env.add_argument("--model", help="served model id Open WebUI should use (default: the first)")
    env.add_argument("--chat", action="store_true", help="also the lines that connect the Knowledge chat server")
    env.add_argument("--store", choices=["chroma", "pgvector"], help="the store Open WebUI uses (env EMBED_STORE)")
    env.add_argument("--json", action="store_true")

    apply = commands.add_parser("openwebui-apply", help="switch a running Open WebUI to this stack, live")
    apply.add_argument("--url", help="Open WebUI address (env OPENWEBUI_URL)")
    apply.add_argument("--token", help="admin API key or token (env OPENWEBUI_API_KEY)")
    apply.add_argument("--model", help="served model id Open WebUI should use (default: the first)")
    apply.add_argument("--chat", action="store_true", help="also add the Knowledge chat server as a connection that "
                                                           "forwards each user's session")
    apply.add_argument("--json", action="store_true")

    find = commands.add_parser("search", help="top chunks of a Knowledge base, embedded with its own model")
    find.add_argument("query")
    where = find.add_mutually_exclusive_group(required=True)
    where.add_argument("--knowledge", help="Knowledge base name or id (looked up through Open WebUI)")
    where.add_argument("--collection", help="a Chroma collection name, e.g. file-<id>")
    find.add_argument("-k", type=int, default=5, help="chunks to return (default 5)")
    find.add_argument("--url", help="Open WebUI address (env OPENWEBUI_URL)")
    find.add_argument("--token", help="Open WebUI API key or token (env OPENWEBUI_API_KEY)")
    find.add_argument("--json", action="store_true")

    send = commands.add_parser("ingest", help="upload files and folders into an Open WebUI Knowledge base")
    send.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    send.add_argument("--knowledge", required=True, help="Knowledge base name or id")
    send.add_argument("--create", action="store_true", help="create the Knowledge base if it does not exist")
    send.add_argument("--concurrency", type=int, default=4, help="uploads at once (default 4)")
    send.add_argument("--url", help="Open WebUI address (env OPENWEBUI_URL)")
    send.add_argument("--token", help="Open WebUI API key or token (env OPENWEBUI_API_KEY)")
    send.add_argument("--json", action="store_true")

    fix = commands.add_parser("repair", help="remove a Knowledge base's chunks of files it no longer lists")
    fix.add_argument("--knowledge", required=True, help="Knowledge base name or id")
    fix.add_argument("--url", help="Open WebUI address (env OPENWEBUI_URL)")
    fix.add_argument("--token", help="Open WebUI API key or token (env OPENWEBUI_API_KEY)")
    fix.add_argument("--json", action="store_true")

    check = commands.add_parser("doctor", help="check every collection against Open WebUI's configuration")
    check.add_argument("--url", help="Open WebUI address (env OPENWEBUI_URL)")
    check.add_argument("--token", help="Open WebUI admin API key or token (env OPENWEBUI_API_KEY); without one, "
                                       "orphans are not checked")
    check.add_argument("--json", action="store_true")

    move = commands.add_parser("migrate", help="re-embed the whole store with another served model and switch Open "
                                                "WebUI to it in one cutover")
    target = move.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", metavar="MODEL", help="served model id to re-embed with")
    target.add_argument("--rollback", metavar="MODEL", help="undo the migration to MODEL, from the kept old vectors")
    target.add_argument("--to-store", metavar="STORE", help="copy every collection into the other store, unchanged: "
                        "'pgvector' (the store EMBED_PGVECTOR_URL names, else the built-in one) or a postgresql:// "
                        "URL, from the Chroma server the settings name; or 'chroma', from that pgvector store into "
                        "that Chroma server. Open WebUI keeps running on the first until you switch it")
    move.add_argument("--collection", action="append", help="only this collection (repeatable; implies "
                                                            "--store-only: Open WebUI is not switched)")
    move.add_argument("--store-only", action="store_true", help="migrate the store without switching Open WebUI")
    move.add_argument("--replace", action="store_true", help="with --to-store: make target collections that hold "
                      "chunks no move from this source wrote (data from before an earlier switch, another store's "
                      "copy) the source's copy; never touches chunks Open WebUI wrote beside this source's")
    move.add_argument("--copy-again", action="append", metavar="COLLECTION",
                      help="with --to-store: copy this collection anew though moves wrote it and the target now holds "
                           "none of it (repeatable; never for one Open WebUI deleted there after the switch)")
    move.add_argument("--drop-old", action="store_true", help="delete the old vectors once the cutover is done "
                                                              "(no rollback after that)")
    move.add_argument("--batch", type=int, default=128,
                      help="chunks per request to the embeddings server (1-2048; larger pages sort better by length)")
    move.add_argument("--url", help="Open WebUI address (env OPENWEBUI_URL)")
    move.add_argument("--token", help="Open WebUI admin API key or token (env OPENWEBUI_API_KEY)")
    move.add_argument("--json", action="store_true")

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
    try:
        store = getattr(args, "store", None)
        settings = load_settings(args.config, **({"store": store} if store else {}))
    except (SettingsError, FileNotFoundError) as error:
        print(f"vector-bridge: invalid settings: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)

    if args.command == "up":
        return run_stack(settings, config_file=args.config, with_openwebui=args.with_openwebui,
                         with_chat=args.with_chat)

    if args.command == "install-openwebui":
        print(openwebui_venv(settings))
        return 0

    if args.command == "openwebui-env":
        try:
            env = openwebui_environment(settings, args.model)
        except StoreDoesNotFit as error:
            print(f"vector-bridge: {error}", file=sys.stderr)
            return 2
        if args.chat:
            env |= chat_connection_environment(settings, pipelines_key(settings))
        print(json.dumps(env, indent=2) if args.json else render_env_file(env), end="\n" if args.json else "")
        if args.chat and not args.json:
            print("\n".join(f"# {line}" for line in textwrap.wrap(CHAT_CONNECTION_NOTE, 96)))
        return 0

    if args.command == "search":
        return _search(args, settings)

    if args.command == "ingest":
        return _ingest(args, settings)

    if args.command == "doctor":
        return _doctor(args, settings)

    if args.command == "repair":
        return _repair(args, settings)

    if args.command == "migrate":
        return _migrate(args, settings)

    if args.command in ("backup", "restore"):
        return _backup_or_restore(args, settings)

    if args.command == "openwebui-apply":
        url = args.url or settings.openwebui_url
        token = _openwebui_token(args, settings)
        if not token:
            print("vector-bridge: an admin token is needed (--token or OPENWEBUI_API_KEY)", file=sys.stderr)
            return 2
        try:
            with OpenWebUIClient(url, token) as webui:
                applied = webui.apply_embedding_config(settings, args.model)
                if args.chat:
                    applied["chat_connection"] = webui.add_chat_connection(settings.chat_url)
                    applied["pipelines_connection"] = webui.add_pipelines_connection(settings.pipelines_url,
                                                                                     pipelines_key(settings))
        except (OpenWebUIError, httpx.HTTPError) as error:
            print(f"vector-bridge: {error}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(redacted(applied), indent=2))
        else:
            print(f"Open WebUI at {url} now embeds with {applied['RAG_EMBEDDING_MODEL']} "
                  f"via {applied['openai_config']['url']} (engine {applied['RAG_EMBEDDING_ENGINE']}).")
        return 0
    return 2


_SECRET_NAMES = ("key", "token", "password", "secret", "credential")


def redacted(value: object) -> object:
    """``value`` with every secret-named field's value masked: what Open WebUI reads back holds keys in clear."""
    if isinstance(value, dict):
        return {name: "***" if isinstance(name, str) and any(s in name.lower() for s in _SECRET_NAMES) and item
                else redacted(item) for name, item in value.items()}
    if isinstance(value, list):
        return [redacted(item) for item in value]
    return value


def _openwebui_token(args: argparse.Namespace, settings: Settings) -> str | None:
    return args.token or (settings.openwebui_api_key.get_secret_value() if settings.openwebui_api_key else None)


def _openwebui(args: argparse.Namespace, settings: Settings) -> OpenWebUIClient:
    return OpenWebUIClient(args.url or settings.openwebui_url, _openwebui_token(args, settings))


def _search(args: argparse.Namespace, settings: Settings) -> int:
    if args.k < 1:
        print("vector-bridge: -k must be at least 1", file=sys.stderr)
        return 2
    try:
        name = args.collection or knowledge_collection(_openwebui(args, settings), args.knowledge)
        collection = open_collection(connect(settings), name)
        model = embedding_model(collection)
        try:
            [vector] = EmbeddingsClient(settings).embed(model, [args.query], "query")
        except ModelNotServed as error:
            raise UnknownEmbeddingModel(f"collection {name!r} was embedded with {model!r}: {error}") from None
        hits = nearest_chunks(collection, vector, args.k)
    except (SearchError, StoreError, EmbeddingsError, OpenWebUIError, httpx.HTTPError) as error:
        print(f"vector-bridge: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"collection": name, "model": model, "hits": [hit.to_dict() for hit in hits]},
                         ensure_ascii=False))
        return 0
    print(f"{len(hits)} chunks from {name} (embedded with {model}); score = cosine similarity")
    for rank, hit in enumerate(hits, 1):
        where = hit.metadata.get("name") or hit.metadata.get("source") or "?"
        page = f", page {hit.metadata['page']}" if "page" in hit.metadata else ""
        text = " ".join(hit.text.split())
        print(f"{rank:>2}. {hit.score:.3f}  {where}{page}\n    {text[:240]}{'...' if len(text) > 240 else ''}")
    return 0


def _ingest(args: argparse.Namespace, settings: Settings) -> int:
    try:
        with _openwebui(args, settings) as webui:
            report = ingest(webui, args.knowledge, args.paths, create=args.create, concurrency=args.concurrency,
                            progress=_show_progress(args))
    except (IngestError, SearchError, OpenWebUIError, httpx.HTTPError) as error:
        print(f"vector-bridge: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        counts = report.to_dict()["counts"]
        print(f"Knowledge base {report.knowledge_id}: " + ", ".join(f"{n} {name}" for name, n in counts.items()))
        for item in report.files:
            if item.outcome in ("failed", "skipped"):
                print(f"  {item.outcome}: {item.path}: {item.detail}")
    return 0 if report.ok else 1


def _repair(args: argparse.Namespace, settings: Settings) -> int:
    try:
        with _openwebui(args, settings) as webui:
            knowledge_id = knowledge_collection(webui, args.knowledge)
            linked = {record["id"] for record in webui.knowledge_files(knowledge_id)}
        removed = remove_unlinked_chunks(open_collection(connect(settings), knowledge_id), linked)
    except (SearchError, StoreError, OpenWebUIError, httpx.HTTPError) as error:
        print(f"vector-bridge: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"knowledge": knowledge_id, "files": len(linked), "removed_chunks": removed}))
    else:
        print(f"Knowledge base {knowledge_id}: {len(linked)} files; removed {removed} chunks of files it does not list")
    return 0


def _doctor(args: argparse.Namespace, settings: Settings) -> int:
    webui = _openwebui(args, settings) if _openwebui_token(args, settings) else None
    try:
        facts = gather(settings, webui)
    except (StoreError, OpenWebUIError, httpx.HTTPError) as error:
        print(f"vector-bridge: {error}", file=sys.stderr)
        return 1
    finally:
        if webui is not None:
            webui.close()
    findings = diagnose(facts)
    result = doctor_report(facts, findings)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0 if result["ok"] else 1
    expected = facts.expected
    print(f"Open WebUI embeds with {expected.model} ({expected.dimension or '?'} dimensions) via {expected.url} "
          f"[from {expected.source}]")
    pg = facts.pgvector
    if pg is not None:
        indexes = ", ".join(f"{index.name} ({index.method}{'' if index.valid else ', invalid'})"
                            for index in pg.indexes) or "none"
        print("pgvector: no document_chunk table yet" if pg.table is None else
              f"pgvector: document_chunk holds {pg.rows} chunks as {'halfvec' if pg.table.halfvec else 'vector'}"
              f"({pg.table.dimension}); vector indexes: {indexes}")
    print(f"{'collection':<44} {'chunks':>8} {'dim':>6}  model")
    for info in facts.collections:
        model = info.model or ("mixed" if len(info.models) > 1 else "?")
        print(f"{info.name:<44} {info.count:>8} {info.dimension or '-':>6}  {model}")
    for finding in findings:
        print(f"{finding.severity.upper()}: {finding.message}" + (f"\n    fix: {finding.fix}" if finding.fix else ""))
    for note in facts.notes:
        print(f"note: {note}")
    print("OK" if result["ok"] else "problems found")
    return 0 if result["ok"] else 1


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    if args.to_store:
        return _move_store(args, settings)
    if args.replace or args.copy_again:
        print(f"vector-bridge: {'--replace' if args.replace else '--copy-again'} goes with --to-store", file=sys.stderr)
        return 2
    if not 1 <= args.batch <= 2048:  # the embeddings API takes at most 2,048 inputs per request
        print("vector-bridge: --batch must be between 1 and 2048", file=sys.stderr)
        return 2
    store_only = args.store_only or bool(args.collection)
    if not store_only and not _openwebui_token(args, settings):
        print("vector-bridge: migrate switches Open WebUI's embedding model at the cutover, so it needs an Open "
              "WebUI admin API key or token (--token or OPENWEBUI_API_KEY); --store-only migrates the store alone",
              file=sys.stderr)
        return 2
    webui = None if store_only else _openwebui(args, settings)
    progress = _show_progress(args)
    try:
        client, embeddings = connect(settings), EmbeddingsClient(settings)
        # Chunks that record no model were embedded with the model Open WebUI uses now.
        default_model = webui.embedding_config()["RAG_EMBEDDING_MODEL"] if webui else settings.models[0].id
        switch = (lambda model: webui.apply_embedding_config(settings, model)) if webui else None
        on_pgvector = settings.store == "pgvector"
        if args.rollback:
            roll = roll_back_pgvector if on_pgvector else roll_back
            result = roll(client, embeddings, args.rollback, switch=switch, batch=args.batch, progress=progress)
        else:
            embeddings.embed(args.to, ["model check"], "document")  # refuse an unserved model before any work
            move = migrate_pgvector if on_pgvector else migrate_store
            result = move(client, embeddings, args.to, default_model=default_model, switch=switch,
                          only=args.collection, batch=args.batch, drop_old=args.drop_old, progress=progress)
    except (MigrationError, CutoverError, StoreError, EmbeddingsError, OpenWebUIError, httpx.HTTPError) as error:
        print(f"vector-bridge: {error}", file=sys.stderr)
        return 1
    finally:
        if webui is not None:
            webui.close()
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    for done in result.collections:
        print(f"{done.collection}: {done.outcome}, {done.chunks} chunks ({done.embedded} embedded now"
              f"{f', {done.removed} removed' if done.removed else ''}) in {done.seconds:.1f} s"
              f"{'; ' + done.detail if done.detail else ''}")
    if result.cutover:
        cut = result.cutover
        print(f"cutover: {cut.collections} collections swapped; a query could meet a mismatched collection for "
              f"{cut.window_seconds * 1000:.0f} ms; {cut.settled_after} chunks written meanwhile brought over")
    if store_only and result.collections:
        print(f"Open WebUI was not switched: switch it to {result.model} (vector-bridge openwebui-apply --model "
              f"{result.model}) or its queries stay on the old model.")
    else:
        print(f"Open WebUI: {result.openwebui}")
    return 0


def _move_store(args: argparse.Namespace, settings: Settings) -> int:
    import psycopg

    from vector_bridge.postgres import pgvector_url

    if args.to_store == "chroma":
        url = pgvector_url(settings)
    else:
        url = pgvector_url(settings) if args.to_store == "pgvector" else args.to_store
        if not url.startswith(("postgresql://", "postgres://")):
            print("vector-bridge: --to-store takes 'pgvector', a postgresql:// URL, or 'chroma'", file=sys.stderr)
            return 2
    try:
        if args.to_store == "chroma":
            report, extra = _move_to_chroma(args, settings, url)
        else:
            report, extra = _move_to_pgvector(args, settings, url)
    except StoreError as error:
        print(f"vector-bridge: {error}", file=sys.stderr)
        return 1
    except psycopg.Error as error:  # its primary message names the problem, never the connection's password
        print(f"vector-bridge: PostgreSQL refused: {error.diag.message_primary or type(error).__name__}",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_dict() | extra))
        return 1 if report.away else 0  # not every collection is in the target: not a run to switch after
    where = "pgvector" if report.target == "pgvector" else "Chroma"
    for done in report.collections:
        print(f"{done.collection}: {done.chunks} chunks ({done.written} written, {done.removed} removed, "
              f"{done.verified} compared whole"
              f"{f', {done.kept} left as Open WebUI wrote them in {where}' if done.kept else ''}"
              f"{f', {done.missing} deleted in {where} since a move wrote them, not brought back' if done.missing else ''}"
              f") in {done.seconds:.1f} s")
    if report.skipped:
        print(f"not copied (what migrate or restore keeps aside while it works): {', '.join(report.skipped)}")
    if report.left:
        print(f"gone from the source but left in {where} (some of their chunks came from another store's moves): "
              f"{', '.join(report.left)}")
    if report.away:
        print(f"not moved: {', '.join(report.away)} (a migrate or restore stopped between its renames: run it "
              "again to finish, then run this again)", file=sys.stderr)
        return 1
    if report.target == "pgvector":
        print(f"Every collection is in pgvector ({report.dimension} dimensions). To switch Open WebUI: stop it, run "
              "this command once more (it brings over what was written meanwhile), then start Open WebUI with "
              f"VECTOR_DB=pgvector, PGVECTOR_DB_URL (your URL), PGVECTOR_INDEX_METHOD=hnsw (the index the move built) "
              f"and PGVECTOR_INITIALIZE_MAX_VECTOR_LENGTH={report.dimension}"
              f"{' and PGVECTOR_USE_HALFVEC=true' if report.dimension and report.dimension > 2000 else ''} "
              "(`vector-bridge openwebui-env --store pgvector` prints them for the built-in store).")
        return 0
    for model, length in extra["dimensions_from_data"].items():
        print(f"note: {model} is not served here, so its vectors' length ({length}) was read from the data: the "
              "longest non-zero prefix of its chunks; serve it to have its own length checked")
    print("Every collection is in Chroma. To switch Open WebUI: stop it, run this command once more (it brings "
          "over what was written meanwhile), then start Open WebUI without its PGVECTOR_* variables and with:")
    for name, value in extra["openwebui_env"].items():
        print(f"  {name}={value}")
    if "CHROMA_HTTP_HEADERS" in extra["openwebui_env"]:
        print("(`vector-bridge openwebui-env --store chroma` prints the header with the token itself.)")
    return 0


def _move_to_pgvector(args: argparse.Namespace, settings: Settings, url: str) -> tuple[StoreMove, dict]:
    from vector_bridge.move_chroma import vector_length
    from vector_bridge.pgvector_store import PgvectorStore
    from vector_bridge.store import connect_chroma
    from vector_bridge.store_move import move_to_pgvector

    client = connect_chroma(settings)
    dimension = vector_length(client, args.collection)
    with PgvectorStore(url) as target:
        report = move_to_pgvector(client, target, dimension=dimension, only=args.collection, replace=args.replace,
                                  copy_again=args.copy_again,
                                  progress=_show_progress(args))
    return report, {}


def _move_to_chroma(args: argparse.Namespace, settings: Settings, url: str) -> tuple[StoreMove, dict]:
    from vector_bridge.pgvector_store import PgvectorStore
    from vector_bridge.store import connect_chroma
    from vector_bridge.store_move import move_to_chroma

    client = connect_chroma(settings)
    with PgvectorStore(url) as source:
        report, dimensions = move_to_chroma(source, client, settings, only=args.collection, replace=args.replace,
                                            copy_again=args.copy_again,
                                            progress=_show_progress(args))
    env = openwebui_environment(settings.model_copy(update={"store": "chroma"}))
    switch = {name: value for name, value in env.items() if name == "VECTOR_DB" or name.startswith("CHROMA_")}
    if "CHROMA_HTTP_HEADERS" in switch:  # the token stays out of reports: openwebui-env prints it
        switch["CHROMA_HTTP_HEADERS"] = "Authorization=Bearer <EMBED_CHROMA_TOKEN>"
    return report, {"openwebui_env": switch, "dimensions_from_data": dimensions.from_data}


def _show_progress(args: argparse.Namespace) -> bool:
    return not args.json and sys.stderr.isatty()


def _model_lengths(client: object, settings: Settings, only: list[str] | None) -> dict[str, int] | None:
    """On pgvector, each collection's vector length without the table's padding; Chroma keeps real lengths."""
    from vector_bridge.pgvector_store import PgvectorClient

    if not isinstance(client, PgvectorClient) or client.table is None:
        return None
    from vector_bridge.move_pgvector import real_dimensions

    # A collection whose length cannot be settled is backed up at the table's length: nothing is cut.
    return real_dimensions(client.store, client.table, settings, only, strict=False).by_collection


def _backup_or_restore(args: argparse.Namespace, settings: Settings) -> int:
    progress = _show_progress(args)
    try:
        client = connect(settings)
        if args.command == "backup":
            summary = backup(client, args.file, collections=args.collection, progress=progress,
                             lengths=_model_lengths(client, settings, args.collection))
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

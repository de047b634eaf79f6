"""`vector-bridge doctor`: what is wrong with the shared store, as Open WebUI will meet it.

``gather`` asks the real services (Chroma, our embeddings server, Open WebUI); ``diagnose`` turns
those facts into findings and knows nothing of the network, so each rule reads on its own.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from config import Settings
from vector_bridge.embeddings import EmbeddingsClient, EmbeddingsError, ModelNotServed
from vector_bridge.migrate import migration_part
from vector_bridge.openwebui import OpenWebUIClient, OpenWebUIError
from vector_bridge.openwebui_env import (HALFVEC_MAX_INDEXED, PGVECTOR_MAX_INDEXED, model_dimension,
                                         openwebui_environment)
from vector_bridge.owners import Owners, openwebui_kind, read_owners
from vector_bridge.pgvector_store import TABLE, PgvectorStore, Table, VectorIndex
from vector_bridge.restore import restore_part
from vector_bridge.store import MOVES_COLLECTION, STORE_COLLECTION, CollectionInfo, connect, describe_all

Severity = Literal["error", "warning", "info"]
# Rows per list an ivfflat index needs when it is built (Open WebUI waits for 50 x lists before it builds one).
IVFFLAT_TRAINING_ROWS = 50
# Collections chats use, which Open WebUI lists nowhere: reported together, never judged one by one.
UNJUDGED = {
    "web-search": "web search results (web-search-*): each search's pages, kept for the chat that ran it",
    "chat-content": "pages, videos or pasted texts added to chats (named by a hash)",
}


@dataclass
class Finding:
    severity: Severity
    message: str
    fix: str = ""
    collection: str | None = None


@dataclass
class Expected:
    """How Open WebUI embeds now, and what that gives."""

    source: str  # "open-webui" (its live config) or "settings" (what openwebui-env prints)
    engine: str
    model: str
    url: str
    dimension: int | None = None  # None: our server could not tell
    problem: str | None = None  # why the dimension is unknown


@dataclass
class PgvectorFacts:
    """Open WebUI's one chunk table as PostgreSQL describes it."""

    table: Table | None  # None: not created yet
    rows: int = 0
    indexes: list[VectorIndex] = field(default_factory=list)  # on the vector column


@dataclass
class Facts:
    collections: list[CollectionInfo]
    expected: Expected
    our_url: str
    owners: Owners | None  # Open WebUI's files, Knowledge bases and users as an admin sees them; None: not checked
    versions: dict[str, str | None] = field(default_factory=dict)  # server API, our chromadb, Open WebUI's
    notes: list[str] = field(default_factory=list)
    pgvector: PgvectorFacts | None = None  # on pgvector only


def diagnose(facts: Facts) -> list[Finding]:
    found: list[Finding] = []
    expected = facts.expected
    if expected.engine != "openai" or expected.url.rstrip("/") != facts.our_url.rstrip("/"):
        found.append(Finding("error", f"Open WebUI embeds with engine {expected.engine!r} at {expected.url!r}, "
                                      f"not through this server ({facts.our_url})",
                             "vector-bridge openwebui-apply"))
    if expected.problem:
        found.append(Finding("error", expected.problem, "serve that model (config/models.toml) or switch Open "
                                                        "WebUI to a served one with vector-bridge openwebui-apply"))
    if facts.pgvector is not None:
        found += pgvector_findings(facts.pgvector, expected)
    for info in facts.collections:
        # On pgvector every chunk has the table's length (padded): the table's findings judge the length.
        found += _collection_findings(info, expected, facts.owners, lengths=facts.pgvector is None)
    for kind, what in UNJUDGED.items():
        count = sum(1 for info in facts.collections if openwebui_kind(info.name)[0] == kind
                    and not restore_part(info.name) and not migration_part(info.name))
        if count:
            found.append(Finding("info", f"{count} collections of {what}: Open WebUI does not list which chats "
                                         "still use them, so they are not judged"))
    # The server reports its API version (1.0.0 for every chromadb 1.x), not its package's: the stack
    # runs it from this tool's chromadb, so that package is what Open WebUI's client must match.
    ours, webui = facts.versions.get("chromadb"), facts.versions.get("openwebui_chromadb")
    if ours and webui and ours != webui:
        found.append(Finding("error", f"the Chroma server runs chromadb {ours}, Open WebUI's client is chromadb "
                                      f"{webui}: Open WebUI's requests may fail",
                             f"install chromadb=={webui} here (the supported pair is 1.5.9 with Open WebUI 0.12.4)"))
    server_api = facts.versions.get("chroma_server_api")
    if server_api and not server_api.startswith("1."):
        found.append(Finding("error", f"the Chroma server speaks API {server_api}; chromadb 1.x clients need 1.x",
                             "run the server from the chromadb wheel (vector-bridge up)"))
    return found


def pgvector_findings(pg: PgvectorFacts, expected: Expected) -> list[Finding]:
    """What Open WebUI's pgvector table does to this model's vectors and to search speed."""
    dimension, model = expected.dimension, expected.model
    if pg.table is None:
        fix = ("start Open WebUI with the environment `vector-bridge openwebui-env --store pgvector` prints"
               + (f" (PGVECTOR_INITIALIZE_MAX_VECTOR_LENGTH={dimension}: Open WebUI's default is 1536)"
                  if dimension else "") + ", or bring the Chroma store over: vector-bridge migrate --to-store pgvector")
        return [Finding("warning", f"the table {TABLE} does not exist yet: Open WebUI has not started on this "
                                   "database, and creates it at its first start with the length it is given then", fix)]
    found = []
    table, kind = pg.table, "halfvec" if pg.table.halfvec else "vector"
    recreate = ("Open WebUI reads it only when it creates the table, so the table must be recreated: "
                + ("drop it (DROP TABLE document_chunk) and restart Open WebUI" if not pg.rows else
                   "move its chunks out (vector-bridge migrate --to-store chroma), drop it (DROP TABLE document_chunk), "
                   "start Open WebUI with the new setting and move them back (vector-bridge migrate --to-store "
                   "pgvector)"))
    if dimension and dimension > table.dimension:
        halfvec = " and PGVECTOR_USE_HALFVEC=true" if dimension > PGVECTOR_MAX_INDEXED else ""
        if pg.rows:
            # Moving mends only chunks of models that fit: those this model wrote lost their tails already.
            recreate += (f"; chunks {model} stored there hold cut vectors, which only embedding their files "
                         "again repairs")
        fix = (f"set PGVECTOR_INITIALIZE_MAX_VECTOR_LENGTH={dimension}{halfvec}; {recreate}"
               if dimension <= HALFVEC_MAX_INDEXED else
               f"serve a model of at most {HALFVEC_MAX_INDEXED} dimensions on pgvector (it indexes no longer vectors)")
        found.append(Finding("error", f"{model} gives {dimension}-dimension vectors, but {TABLE} holds {kind}"
                                      f"({table.dimension}): Open WebUI silently cuts every vector it stores and "
                                      "every query to that length, so searches compare cut vectors", fix))
    elif dimension and dimension < table.dimension:
        found.append(Finding("info", f"{model} gives {dimension}-dimension vectors and {TABLE} holds "
                                     f"{kind}({table.dimension}): Open WebUI pads each with zeros, so the table, its "
                                     f"index and every search carry {table.dimension / dimension:.1f} times the work",
                             f"PGVECTOR_INITIALIZE_MAX_VECTOR_LENGTH={dimension}; {recreate}"))
    limit = HALFVEC_MAX_INDEXED if table.halfvec else PGVECTOR_MAX_INDEXED
    usable = [index for index in pg.indexes if index.valid and index.cosine]
    if table.dimension > limit:
        if table.halfvec or table.dimension > HALFVEC_MAX_INDEXED:
            fix = f"serve a model of at most {HALFVEC_MAX_INDEXED} dimensions on pgvector"
        else:
            fix = f"set PGVECTOR_USE_HALFVEC=true (indexes up to {HALFVEC_MAX_INDEXED} dimensions); {recreate}"
        found.append(Finding("warning", f"{TABLE}.vector is {kind}({table.dimension}), longer than pgvector indexes as "
                                        f"{kind} ({limit}): every search scans all {pg.rows} chunks", fix))
        return found
    for index in pg.indexes:
        if not index.valid:
            found.append(Finding("warning", f"the vector index {index.name} is invalid (its build was interrupted): "
                                            "PostgreSQL never uses it", f"REINDEX INDEX {index.name}"))
        elif not index.cosine:
            found.append(Finding("warning", f"the vector index {index.name} is not for cosine distance, which Open "
                                            f"WebUI searches by, so it is never used ({index.definition})",
                                 f"DROP INDEX {index.name}, then restart Open WebUI with PGVECTOR_INDEX_METHOD=hnsw "
                                 "(it creates idx_document_chunk_vector at start)"))
    hnsw_fix = ("restart Open WebUI with PGVECTOR_INDEX_METHOD=hnsw: it creates idx_document_chunk_vector at start "
                "(its default, ivfflat, waits until the table holds 5,000 chunks)")
    if not usable:
        busy = pg.rows >= IVFFLAT_TRAINING_ROWS * 100
        found.append(Finding("warning" if busy else "info",
                             f"no usable vector index on {TABLE}: every search scans all {pg.rows} chunks"
                             + ("" if busy else " (quick at this size)"), hnsw_fix))
    for index in usable:
        if index.method == "ivfflat" and index.lists and pg.rows < IVFFLAT_TRAINING_ROWS * index.lists:
            found.append(Finding("warning", f"the ivfflat index {index.name} has {index.lists} lists but the table "
                                            f"holds {pg.rows} chunks, so it was built on fewer than the "
                                            f"{IVFFLAT_TRAINING_ROWS} per list its centroids need: they do not fit "
                                            "the data, and searches miss close chunks",
                                 f"REINDEX INDEX {index.name} once the table holds "
                                 f"{IVFFLAT_TRAINING_ROWS * index.lists} chunks, or DROP INDEX {index.name} and "
                                 + hnsw_fix))
    return found


def _collection_findings(info: CollectionInfo, expected: Expected, owners: Owners | None, *,
                         lengths: bool = True) -> list[Finding]:
    name = info.name
    restoring = restore_part(name)
    if restoring is not None:  # what an interrupted `vector-bridge restore` left; the same run finishes it
        kind, original = restoring
        what = "new data being built" if kind == "building" else "the old data, replaced"
        return [Finding("warning", f"{name}: {what} for {original} by a restore that did not finish "
                                   f"({info.count} chunks)", "run the same vector-bridge restore again: it "
                                   "finishes the swap or puts the old data back", name)]
    if name == STORE_COLLECTION:
        return [Finding("info", f"{name}: this store's id as a source of vector-bridge migrate --to-store (in its "
                                "metadata, no chunks)", "keep it: the records of moves out of this store name it", name)]
    if name == MOVES_COLLECTION:
        return [Finding("info", f"{name}: the record of the {info.count} chunks vector-bridge migrate --to-store "
                                "chroma wrote; later moves read it so they never undo what Open WebUI wrote after "
                                "the switch", "keep it while a move back from pgvector may run again", name)]
    part = migration_part(name)
    if part is not None:  # not Open WebUI's: judged as what migrate left, not by Open WebUI's model
        kind, original = part
        if kind == "backup":
            return [Finding("info", f"{name}: the old vectors of {original} ({info.count} chunks), kept by "
                                    "vector-bridge migrate", f"vector-bridge migrate --to {expected.model} "
                                                             f"--collection {original} --drop-old", name)]
        return [Finding("warning", f"{name}: new vectors for {original} from a migration that has not finished",
                        "run the same vector-bridge migrate again: it resumes", name)]
    found = _ownership_findings(info, owners)
    if info.count == 0:
        found.append(Finding("warning", f"{name}: empty", "delete it, or re-add its files in Open WebUI", name))
        return found
    if len(info.models) > 1:
        found.append(Finding("error", f"{name}: chunks from several models ({', '.join(sorted(info.models))}); "
                                      "searches mix incomparable vectors",
                             f"vector-bridge migrate --to {expected.model} --collection {name}", name))
    elif info.model and info.model != expected.model:
        found.append(Finding("error", f"{name}: embedded with {info.model}, but Open WebUI embeds queries with "
                                      f"{expected.model}: its searches here return nothing or noise",
                             f"vector-bridge migrate --to {expected.model} --collection {name}", name))
    if lengths and expected.dimension and info.dimension and info.dimension != expected.dimension:
        found.append(Finding("error", f"{name}: vectors of dimension {info.dimension}, {expected.model} gives "
                                      f"{expected.dimension} (Open WebUI: 'expecting embedding with dimension of "
                                      f"{info.dimension}, got {expected.dimension}')",
                             f"vector-bridge migrate --to {expected.model} --collection {name}", name))
    return found


def _ownership_findings(info: CollectionInfo, owners: Owners | None) -> list[Finding]:
    """Left over only when Open WebUI says its owner is gone; unknown is said as unknown."""
    name = info.name
    kind, owner = openwebui_kind(name)
    if owners is None or name in owners.alive or kind in ("knowledge-bases", *UNJUDGED):
        return []
    owner_kind = {"file": "file", "knowledge": "Knowledge base", "user-memory": "user"}.get(kind)
    left_over = owners.is_left_over(name)
    if owner_kind and left_over:
        return [Finding("warning", f"{name}: no Open WebUI {owner_kind} has id {owner} any more, so nothing "
                                   f"reads these {info.count} chunks",
                        f"keep a copy (vector-bridge backup FILE --collection {name}), then delete it", name)]
    if kind in ("file", "knowledge") and left_over is None:  # (memories: one note says users were not read)
        return [Finding("info", f"{name}: whether Open WebUI still has {owner_kind} {owner} is unknown (not in its "
                                "lists, and the lookup by id gave no clear answer)", "run doctor again", name)]
    if kind == "other":
        return [Finding("warning", f"{name}: no Open WebUI file, Knowledge base or user refers to it, and Open WebUI "
                                   f"makes no collection of this name: another tool's, or made by hand "
                                   f"({info.count} chunks)", "find out what writes it before deleting it", name)]
    return []


def gather(settings: Settings, webui: OpenWebUIClient | None) -> Facts:
    notes: list[str] = []
    expected = _expected(settings, webui, notes)
    client = connect(settings)
    collections = describe_all(client)
    owners = _owners(webui, [c.name for c in collections], notes) if webui else None
    if webui is None:
        notes.append("no Open WebUI token: orphans not checked, expected model taken from these settings")
    versions = {"chroma_server_api": client.get_version(), "chromadb": importlib.metadata.version("chromadb"),
                "openwebui_chromadb": _openwebui_chroma_version(settings)}
    pgvector = None
    if settings.store == "pgvector":
        versions = {"pgvector": client.get_version()}  # Open WebUI's chromadb client plays no part
        pgvector = pgvector_facts(client.store)
    return Facts(collections, expected, settings.embeddings_url, owners, versions, notes, pgvector)


def pgvector_facts(store: PgvectorStore) -> PgvectorFacts:
    table = store.table()
    if table is None:
        return PgvectorFacts(None)
    return PgvectorFacts(table, store.count(), store.vector_indexes())


def _expected(settings: Settings, webui: OpenWebUIClient | None, notes: list[str]) -> Expected:
    if webui is not None:
        config = webui.embedding_config()
        expected = Expected("open-webui", config.get("RAG_EMBEDDING_ENGINE", ""), config.get("RAG_EMBEDDING_MODEL", ""),
                            (config.get("openai_config") or {}).get("url", ""))
    else:
        env = openwebui_environment(settings)
        expected = Expected("settings", env["RAG_EMBEDDING_ENGINE"], env["RAG_EMBEDDING_MODEL"],
                            env["RAG_OPENAI_API_BASE_URL"])
    try:
        expected.dimension = len(EmbeddingsClient(settings).embed(expected.model, ["dimension check"], "query")[0])
    except ModelNotServed:
        expected.problem = f"Open WebUI embeds with {expected.model!r}, which this server does not serve"
    except EmbeddingsError as error:
        if any(expected.model in spec.names for spec in settings.models):
            # The server is down, but its configuration tells the length all the same (openwebui-env reads it too).
            expected.dimension = model_dimension(settings, expected.model)
            notes.append(f"the embeddings server did not answer ({error}); {expected.model}'s dimension was read "
                         "from the served models' configuration")
        else:
            notes.append(f"dimension not checked: {error}")
    return expected


def _owners(webui: OpenWebUIClient, names: list[str], notes: list[str]) -> Owners | None:
    try:
        if webui.session_user().get("role") != "admin":
            notes.append("orphans not checked: the token is not an admin's, so other users' files are hidden")
            return None
        owners = read_owners(webui, names)
    except (OpenWebUIError, httpx.HTTPError) as error:
        notes.append(f"orphans not checked: {error}")
        return None
    if owners.users is None:
        notes.append("memory collections not checked: Open WebUI's user list could not be read")
    return owners


def _openwebui_chroma_version(settings: Settings) -> str | None:
    """The chromadb client inside a locally installed Open WebUI, read from its metadata, not imported."""
    venv = settings.cache_dir / f"open-webui-{settings.openwebui_version}"
    for found in sorted(Path(venv).glob("lib/python*/site-packages/chromadb-*.dist-info")):
        return found.name.removeprefix("chromadb-").removesuffix(".dist-info")
    return None


def report(facts: Facts, findings: list[Finding]) -> dict[str, Any]:
    return {
        "ok": not any(f.severity == "error" for f in findings),
        "openwebui": asdict(facts.expected),
        "collections": [info.to_dict() for info in facts.collections],
        "findings": [asdict(f) for f in findings],
        "versions": facts.versions,
        "notes": facts.notes,
        "pgvector": asdict(facts.pgvector) if facts.pgvector else None,
    }

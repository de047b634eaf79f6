"""`vector-bridge doctor`: what is wrong with the shared store, as Open WebUI will meet it.

``gather`` asks the real services (Chroma, our embeddings server, Open WebUI); ``diagnose`` turns
those facts into findings and knows nothing of the network, so each rule reads on its own.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from config import Settings
from vector_bridge.embeddings import EmbeddingsClient, EmbeddingsError, ModelNotServed
from vector_bridge.migrate import migration_part
from vector_bridge.openwebui import OpenWebUIClient, OpenWebUIError
from vector_bridge.openwebui_env import openwebui_environment
from vector_bridge.store import CollectionInfo, connect, describe_all

Severity = Literal["error", "warning", "info"]
# Open WebUI's own collection of Knowledge base descriptions: no file or Knowledge base id names it.
OPENWEBUI_COLLECTIONS = {"knowledge-bases"}


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
class Facts:
    collections: list[CollectionInfo]
    expected: Expected
    our_url: str
    referenced: set[str] | None  # collections Open WebUI's files and Knowledge bases name; None: not checked
    versions: dict[str, str | None] = field(default_factory=dict)  # server API, our chromadb, Open WebUI's
    notes: list[str] = field(default_factory=list)


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
    for info in facts.collections:
        found += _collection_findings(info, expected, facts.referenced)
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


def _collection_findings(info: CollectionInfo, expected: Expected, referenced: set[str] | None) -> list[Finding]:
    name = info.name
    found: list[Finding] = []
    part = migration_part(name)
    if part is not None:  # not Open WebUI's: judged as what migrate left, not by Open WebUI's model
        kind, original = part
        if kind == "backup":
            return [Finding("info", f"{name}: the old vectors of {original} ({info.count} chunks), kept by "
                                    "vector-bridge migrate", f"vector-bridge migrate --to {expected.model} "
                                                             f"--collection {original} --drop-old", name)]
        return [Finding("warning", f"{name}: new vectors for {original} from a migration that has not finished",
                        "run the same vector-bridge migrate again: it resumes", name)]
    if referenced is not None and name not in referenced and name not in OPENWEBUI_COLLECTIONS:
        found.append(Finding("warning", f"{name}: no Open WebUI file or Knowledge base refers to it "
                                        f"({info.count} chunks)",
                             f"keep a copy (vector-bridge backup FILE --collection {name}), then delete it", name))
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
    if expected.dimension and info.dimension and info.dimension != expected.dimension:
        found.append(Finding("error", f"{name}: vectors of dimension {info.dimension}, {expected.model} gives "
                                      f"{expected.dimension} (Open WebUI: 'expecting embedding with dimension of "
                                      f"{info.dimension}, got {expected.dimension}')",
                             f"vector-bridge migrate --to {expected.model} --collection {name}", name))
    return found


def gather(settings: Settings, webui: OpenWebUIClient | None) -> Facts:
    notes: list[str] = []
    expected = _expected(settings, webui, notes)
    client = connect(settings)
    referenced = _referenced_collections(webui, notes) if webui else None
    if webui is None:
        notes.append("no Open WebUI token: orphans not checked, expected model taken from these settings")
    versions = {"chroma_server_api": client.get_version(), "chromadb": importlib.metadata.version("chromadb"),
                "openwebui_chromadb": _openwebui_chroma_version(settings)}
    return Facts(describe_all(client), expected, settings.embeddings_url, referenced, versions, notes)


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
        notes.append(f"dimension not checked: {error}")
    return expected


def _referenced_collections(webui: OpenWebUIClient, notes: list[str]) -> set[str] | None:
    try:
        if webui.session_user().get("role") != "admin":
            notes.append("orphans not checked: the token is not an admin's, so other users' files are hidden")
            return None
        return {base["id"] for base in webui.list_knowledge()} | {f"file-{f['id']}" for f in webui.files()}
    except OpenWebUIError as error:
        notes.append(f"orphans not checked: {error}")
        return None


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
    }

"""Documents uploaded to ``POST /api/documents``: read from the request into temporary files, then put into a
Knowledge base through Open WebUI's own API, as the caller, by ``vector_bridge.ingest`` (so they show in Open
WebUI's Knowledge page, and Open WebUI extracts, chunks and embeds them as it does its own uploads).

The body is parsed as it arrives and each file spooled to disk past 1 MB (Starlette's multipart parser);
counting stops the read the moment the upload passes its size limit.
"""

from __future__ import annotations

import shutil
import tempfile
import unicodedata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import httpx
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from chat_server.errors import KnowledgeNotFound, UpstreamUnavailable, UploadTooLarge
from embed_server.errors import InvalidRequest, PermissionDenied
from vector_bridge.ingest import FileOutcome, IngestError, Unreachable, ingest
from vector_bridge.openwebui import OpenWebUIClient, OpenWebUIError

MAX_FILES = 100
OPENWEBUI_TIMEOUT = 600.0  # one call to Open WebUI; extracting a long PDF takes minutes
MAX_NAME_BYTES = 255  # a file name on most file systems, and in Open WebUI's listing


@dataclass
class Upload:
    """The request's fields, and its files as (name the client gave, cleaned; temporary path)."""

    fields: dict[str, str] = field(default_factory=dict)
    files: list[tuple[str, Path]] = field(default_factory=list)


def safe_name(name: str | None) -> str:
    """The last part of a client's file name, without control characters: never a path of this machine."""
    name = PurePosixPath((name or "").replace("\\", "/")).name
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    stem, dot, suffix = name.rpartition(".")
    if len(name) > MAX_NAME_BYTES:  # cut by characters first, keeping a short suffix: .pdf must stay .pdf
        name = f"{stem[:MAX_NAME_BYTES - len(suffix) - 1]}.{suffix}" if dot and len(suffix) <= 16 else name[:MAX_NAME_BYTES]
    while len(name.encode()) > MAX_NAME_BYTES:  # then by bytes: at most a few hundred steps
        stem, dot, suffix = name.rpartition(".")
        name = f"{stem[:-1]}{dot}{suffix}" if dot and stem else name[:-1]
    return name if name not in ("", ".", "..") else "upload"


@asynccontextmanager
async def received(request: Request, limit: int) -> AsyncIterator[Upload]:
    """The multipart upload of ``request``, its files in a temporary folder that is removed afterwards."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InvalidRequest("Send the files as multipart/form-data, each in a field named 'file'.")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise UploadTooLarge(_too_large(limit))
    folder = Path(tempfile.mkdtemp(prefix="chat-upload-"))
    try:
        yield await _save(request, limit, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _save(request: Request, limit: int, folder: Path) -> Upload:
    async def counted() -> AsyncIterator[bytes]:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:  # a body sent without a length, or longer than it said
                raise UploadTooLarge(_too_large(limit))
            yield chunk

    parser = MultiPartParser(request.headers, counted(), max_files=MAX_FILES, max_fields=20)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise InvalidRequest(f"The upload could not be read: {error.message}") from None
    upload = Upload()
    try:
        for number, (key, value) in enumerate(form.multi_items()):
            if isinstance(value, UploadFile):
                if key not in ("file", "files"):
                    raise InvalidRequest(f"Unexpected file field '{key[:40]}': name it 'file'.", param=key[:40])
                # One folder per file: two files may share a name (ingest then reports the second).
                path = folder / str(number) / safe_name(value.filename)
                path.parent.mkdir()
                with path.open("wb") as out:
                    shutil.copyfileobj(value.file, out, 1 << 20)
                upload.files.append((path.name, path))
            else:
                upload.fields[key] = value
    finally:
        await form.close()
    return upload


def _too_large(limit: int) -> str:
    return f"The upload is larger than {limit} bytes (chat_upload_max_bytes)."


@dataclass
class Target:
    id: str
    name: str
    created: bool


def target_knowledge(webui: OpenWebUIClient, knowledge_id: str | None, new_name: str | None) -> Target:
    """The Knowledge base to add to, checked as the caller may write it, or a new one made in their name.
    Blocking: Open WebUI's client is synchronous."""
    try:
        if knowledge_id is None:
            made = webui.create_knowledge(new_name or "")
            return Target(made["id"], made.get("name") or new_name or "", True)
        found = webui.knowledge(knowledge_id)
    except OpenWebUIError as error:
        raise _refusal(error, knowledge_id) from None
    except httpx.HTTPError as error:
        raise UpstreamUnavailable(f"Open WebUI could not be reached ({type(error).__name__}).") from None
    if not found.get("write_access"):
        # Open WebUI would take the file, then leave it out of the Knowledge base without a word.
        raise PermissionDenied(f"You may read the Knowledge base '{knowledge_id}' but not add files to it.",
                               param="knowledge")
    return Target(found["id"], found.get("name") or "", False)


def _refusal(error: OpenWebUIError, knowledge_id: str | None) -> Exception:
    if error.status is not None and error.status >= 500:
        return UpstreamUnavailable(f"Open WebUI answered {error.status}.")
    if knowledge_id is not None and error.status in (401, 404):  # Open WebUI's 401 here means "not yours"
        return KnowledgeNotFound(f"The Knowledge base '{knowledge_id}' does not exist or you do not have access "
                                 "to it.", param="knowledge")
    if error.status in (401, 403):
        return PermissionDenied("Open WebUI does not let you create Knowledge bases.", param="knowledge_name")
    return InvalidRequest(f"Open WebUI refused it: {error}")


def put_files(webui: OpenWebUIClient, target: Target, files: list[tuple[str, Path]]) -> list[dict[str, str | None]]:
    """Each file's outcome in the Knowledge base, by the name it was sent with. Blocking."""
    first: dict[str, Path] = {}
    for name, path in files:
        first.setdefault(name, path)  # a Knowledge base tells files apart by name: the first of a name goes in
    try:
        report = ingest(webui, target.id, list(first.values()), concurrency=2, progress=False)
    except Unreachable as error:
        raise UpstreamUnavailable(f"Open WebUI kept failing: {error}") from None
    except (IngestError, OpenWebUIError) as error:
        raise UpstreamUnavailable(f"Open WebUI refused the upload: {error}") from None
    by_path: dict[str, FileOutcome] = {outcome.path: outcome for outcome in report.files}
    answered: list[dict[str, str | None]] = []
    for name, path in files:
        outcome = by_path.get(str(path))
        if outcome is None or first[name] != path:
            answered.append({"name": name, "status": "failed", "file_id": None,
                             "detail": "another file of this upload has the same name"})
            continue
        # A detail may quote a temporary path of this machine; the caller knows the file by its name.
        detail = outcome.detail.replace(str(path), name).replace(str(path.parent.parent), "")
        answered.append({"name": name, "status": outcome.outcome, "file_id": outcome.file_id, "detail": detail})
    return answered


def target_fields(fields: dict[str, str]) -> tuple[str | None, str | None]:
    """(Knowledge id, name of a new Knowledge base): exactly one of the two form fields."""
    unknown = sorted(set(fields) - {"knowledge", "knowledge_name"})
    if unknown:
        raise InvalidRequest(f"Unknown field '{unknown[0][:40]}': send 'knowledge' (an id) or 'knowledge_name'.",
                             param=unknown[0][:40])
    knowledge_id, new_name = fields.get("knowledge", "").strip() or None, fields.get("knowledge_name", "").strip() or None
    if (knowledge_id is None) == (new_name is None):
        raise InvalidRequest("Send either 'knowledge' (the id of a Knowledge base you may write) or "
                             "'knowledge_name' (the name of a new one).", param="knowledge")
    return knowledge_id, new_name


def add_documents(openwebui_url: str, token: str, knowledge_id: str | None, new_name: str | None,
                  files: list[tuple[str, Path]]) -> tuple[Target, list[dict[str, str | None]]]:
    """Into the Knowledge base as the holder of ``token``; returns when Open WebUI has processed every file
    (seconds for a text file, minutes for a long PDF). Blocking."""
    with OpenWebUIClient(openwebui_url, token, timeout=OPENWEBUI_TIMEOUT) as webui:
        target = target_knowledge(webui, knowledge_id, new_name)
        return target, put_files(webui, target, files)

"""Re-embed collections with another served model while Open WebUI keeps answering from the old ones.

For a collection NAME and target model M:

1. build   vectors from M go into the shadow collection ``NAME.to.<M>``, page by page; chunks already
           there are skipped, so a killed run resumes where it stopped. NAME stays untouched.
2. verify  the shadow holds exactly NAME's ids.
3. swap    NAME becomes ``NAME.pre.<M>`` (the old vectors, kept as a backup), then the shadow becomes NAME.
           A run killed between the two renames is finished by the next run.
4. drop    with ``--drop-old``, the backup goes once the swap is done.

Chunk metadata keeps everything but the model named in ``embedding_config``. Texts are embedded as
Open WebUI embeds document chunks (newlines as spaces, ``input_type: document``), so the new vectors
equal what Open WebUI would have stored with M.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from tqdm import tqdm

from vector_bridge.embeddings import EmbeddingsClient
from vector_bridge.store import describe, parse_embedding_config

Outcome = Literal["migrated", "already", "skipped"]
IN_FLIGHT = 2
MIGRATION_PART = re.compile(r"(?P<name>.+)\.(?P<part>to|pre)\.(?P<model>[a-zA-Z0-9._-]+)")


class MigrationError(RuntimeError):
    pass


@dataclass
class Migration:
    collection: str
    outcome: Outcome
    chunks: int = 0
    embedded: int = 0  # chunks embedded by this run (less than chunks when resuming)
    seconds: float = 0.0
    detail: str = ""


def slug(model: str) -> str:
    """A model id as Chroma allows in a collection name ([a-zA-Z0-9._-], alphanumeric at both ends)."""
    return re.sub(r"[^a-zA-Z0-9._-]+", "-", model).strip("._-") or "model"


def shadow_name(name: str, model: str) -> str:
    return f"{name}.to.{slug(model)}"


def backup_name(name: str, model: str) -> str:
    return f"{name}.pre.{slug(model)}"


def migration_part(name: str) -> tuple[Literal["shadow", "backup"], str] | None:
    """For a collection migrate made: whether it is new vectors being built or old ones kept, and for which."""
    found = MIGRATION_PART.fullmatch(name)
    if found is None:
        return None
    return ("shadow" if found["part"] == "to" else "backup"), found["name"]


def with_model(metadata: dict[str, Any] | None, model: str) -> dict[str, Any]:
    """The chunk's metadata with ``embedding_config`` naming the new model, in Open WebUI's repr style."""
    metadata = dict(metadata or {})
    config = parse_embedding_config(metadata.get("embedding_config")) or {"engine": "openai"}
    metadata["embedding_config"] = repr({**config, "model": model})
    return metadata


def _names(client: ClientAPI) -> set[str]:
    return {collection.name for collection in client.list_collections()}


def plan(client: ClientAPI, model: str, only: list[str] | None) -> list[str]:
    """The collections to migrate: the named ones, or every collection whose chunks name another model."""
    names = _names(client)
    if only:
        missing = [name for name in only if name not in names and backup_name(name, model) not in names]
        if missing:
            raise MigrationError(f"no such collection: {', '.join(missing)}")
        return only
    pending = []
    for name in sorted(names):
        if part := migration_part(name):  # our own shadows and backups are never migrated themselves
            kind, original = part
            if kind == "shadow" and name == shadow_name(original, model) and original not in names:
                pending.append(original)  # killed between the two renames
            continue
        info = describe(client.get_collection(name))
        if info.count and info.models and set(info.models) != {model} or backup_name(name, model) in names:
            pending.append(name)  # to move, or moved with its old vectors still kept (for --drop-old)
    return pending


def migrate_collection(client: ClientAPI, embeddings: EmbeddingsClient, name: str, model: str, *,
                       batch: int = 128, drop_old: bool = False, progress: bool = True) -> Migration:
    started = time.perf_counter()
    shadow_id, old_id = shadow_name(name, model), backup_name(name, model)
    names = _names(client)
    if name not in names and shadow_id in names and old_id in names:
        client.get_collection(shadow_id).modify(name=name)  # finish a swap that was cut off
        return _finish(client, Migration(name, "migrated", detail="finished an interrupted swap"), old_id, drop_old,
                       started)
    source = client.get_collection(name)
    info = describe(source)
    if info.models and set(info.models) == {model}:
        return _finish(client, Migration(name, "already", info.count), old_id, drop_old, started)
    if not info.count:
        return Migration(name, "skipped", 0, detail="empty")

    shadow = client.get_or_create_collection(shadow_id, metadata=source.metadata or {"hnsw:space": "cosine"})
    embedded = 0
    # Two pages are embedding at any time, so the server has the next one queued while it answers one;
    # pages are written in order as their vectors arrive (bench/bridge.py: pages of 64 one at a time ran
    # at 0.62x the raw model's rate, pages of 128 two at a time at 0.72x).
    with tqdm(total=info.count, unit="chunk", desc=name[:40], disable=not progress) as bar, \
            ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
        in_flight: deque[tuple[Page, Future[np.ndarray]]] = deque()
        for page in _pages_to_embed(source, shadow, batch, bar):
            texts = [(text or "").replace("\n", " ") for text in page.documents]
            in_flight.append((page, pool.submit(embeddings.embed, model, texts, "document")))
            if len(in_flight) == IN_FLIGHT:
                embedded += _write(shadow, *in_flight.popleft(), model, bar)
        while in_flight:
            embedded += _write(shadow, *in_flight.popleft(), model, bar)
    _verify(source, shadow)
    source.modify(name=old_id)
    shadow.modify(name=name)
    return _finish(client, Migration(name, "migrated", info.count, embedded), old_id, drop_old, started)


@dataclass
class Page:
    ids: list[str]
    documents: list[str]
    metadatas: list[Any]


def _pages_to_embed(source: Collection, shadow: Collection, batch: int, bar: tqdm) -> Iterator[Page]:
    """Pages of chunks the shadow does not hold yet (all of them, unless a killed run is resumed)."""
    offset = 0
    while True:
        page = source.get(offset=offset, limit=batch, include=["documents", "metadatas"])
        if not page["ids"]:
            return
        offset += len(page["ids"])
        done = set(shadow.get(ids=page["ids"], include=[])["ids"])
        todo = [i for i, chunk_id in enumerate(page["ids"]) if chunk_id not in done]
        bar.update(len(page["ids"]) - len(todo))
        if todo:
            yield Page([page["ids"][i] for i in todo], [page["documents"][i] for i in todo],  # type: ignore[index]
                       [page["metadatas"][i] for i in todo])  # type: ignore[index]


def _write(shadow: Collection, page: Page, vectors: Future[np.ndarray], model: str, bar: tqdm) -> int:
    shadow.upsert(ids=page.ids, embeddings=vectors.result(), documents=page.documents,
                  metadatas=[with_model(metadata, model) for metadata in page.metadatas])
    bar.update(len(page.ids))
    return len(page.ids)


def _verify(source: Collection, shadow: Collection) -> None:
    want, have = set(source.get(include=[])["ids"]), set(shadow.get(include=[])["ids"])
    if want != have:
        raise MigrationError(f"{source.name}: the new vectors miss {len(want - have)} chunks and have "
                             f"{len(have - want)} extra; nothing was swapped, run again")


def _finish(client: ClientAPI, result: Migration, old_id: str, drop_old: bool, started: float) -> Migration:
    if drop_old and old_id in _names(client):
        client.delete_collection(old_id)
        result.detail = (result.detail + "; " if result.detail else "") + "old vectors dropped"
    result.seconds = time.perf_counter() - started
    return result

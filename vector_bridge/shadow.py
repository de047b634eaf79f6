"""Bring a re-embedded copy of a collection to exactly its source's chunks.

A chunk is the same in both when its document and its metadata (all but ``embedding_config``, which names
the model) are equal; only chunks that are missing or differ are embedded again, and chunks the source no
longer holds are deleted from the copy. So one function builds a copy from nothing, resumes a killed
build, catches up with what Open WebUI wrote meanwhile, and rolls a migration back.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from chromadb.api.models.Collection import Collection
from tqdm import tqdm

from vector_bridge.embeddings import EmbeddingsClient
from vector_bridge.store import METADATA_PAGE, parse_embedding_config

# Two pages are embedding at any time, so the server has the next one queued while it answers one;
# pages are written in order as their vectors arrive (bench/bridge.py: pages of 64 one at a time ran
# at 0.62x the raw model's rate, pages of 128 two at a time at 0.72x).
IN_FLIGHT = 2


@dataclass
class SyncResult:
    chunks: int  # in the source when the sync started
    embedded: int = 0  # missing or changed in the copy, embedded now
    removed: int = 0  # in the copy, no longer in the source
    ids: frozenset[str] = frozenset()  # the source's ids the copy now matches (what a cutover settles against)

    @property
    def changed(self) -> bool:
        return bool(self.embedded or self.removed)


def with_model(metadata: dict[str, Any] | None, model: str) -> dict[str, Any]:
    """The chunk's metadata with ``embedding_config`` naming ``model``, in Open WebUI's repr style."""
    metadata = dict(metadata or {})
    config = parse_embedding_config(metadata.get("embedding_config")) or {"engine": "openai"}
    metadata["embedding_config"] = repr({**config, "model": model})
    return metadata


def fingerprint(document: str | None, metadata: dict[str, Any] | None) -> str:
    content = {key: value for key, value in (metadata or {}).items() if key != "embedding_config"}
    blob = json.dumps([document or "", content], sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def all_ids(collection: Collection) -> list[str]:
    """Every id, in one request: the list is taken before any chunk is read, so paging cannot skip one
    that moves while others write."""
    return list(collection.get(include=[])["ids"])


def _chunks(collection: Collection, ids: list[str], page: int) -> Iterator[tuple[list[str], list[Any], list[Any]]]:
    for start in range(0, len(ids), page):
        got = collection.get(ids=ids[start:start + page], include=["documents", "metadatas"])
        yield got["ids"], list(got["documents"] or []), list(got["metadatas"] or [])


def recorded_model(metadata: dict[str, Any] | None) -> str | None:
    config = parse_embedding_config((metadata or {}).get("embedding_config"))
    return str(config["model"]) if config and config.get("model") else None


def fingerprints(collection: Collection, model: str | None = None) -> dict[str, str]:
    """Each chunk's fingerprint; with ``model``, chunks that record another model count as stale (Open WebUI
    wrote them with its old model while a cutover was under way) and get no fingerprint that could match."""
    found: dict[str, str] = {}
    for ids, documents, metadatas in _chunks(collection, all_ids(collection), METADATA_PAGE):
        for chunk_id, document, metadata in zip(ids, documents, metadatas):
            stale = model is not None and recorded_model(metadata) not in (model, None)
            found[chunk_id] = "stale" if stale else fingerprint(document, metadata)
    return found


@dataclass
class _Page:
    ids: list[str]
    documents: list[str]
    metadatas: list[Any]


def sync_copy(source: Collection, copy: Collection, embeddings: EmbeddingsClient, model: str, *,
              batch: int = 128, progress: bool = False) -> SyncResult:
    """Make ``copy`` hold exactly ``source``'s chunks, with vectors from ``model`` for what it lacked."""
    wanted = fingerprints(source)
    have = fingerprints(copy, model)
    gone = sorted(set(have) - set(wanted))
    for start in range(0, len(gone), METADATA_PAGE):
        copy.delete(ids=gone[start:start + METADATA_PAGE])
    todo = [chunk_id for chunk_id, print_ in wanted.items() if have.get(chunk_id) != print_]
    embedded = copy_chunks(source, copy, todo, embeddings, model, batch=batch, progress=progress,
                           already=len(wanted) - len(todo))
    return SyncResult(len(wanted), embedded, len(gone), frozenset(wanted))


def copy_chunks(source: Collection, copy: Collection, ids: list[str], embeddings: EmbeddingsClient, model: str, *,
                batch: int = 128, progress: bool = False, already: int = 0) -> int:
    """Embed these chunks of ``source`` with ``model`` into ``copy`` (upserted); how many were written."""
    written = 0
    with tqdm(total=already + len(ids), initial=already, unit="chunk", desc=source.name[:40],
              disable=not progress) as bar, ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
        in_flight: deque[tuple[_Page, Future[np.ndarray]]] = deque()
        for found, documents, metadatas in _chunks(source, ids, batch):
            if not found:
                continue  # deleted from the source since the ids were taken
            page = _Page(list(found), [document or "" for document in documents], metadatas)
            # Open WebUI embeds a document chunk with its newlines as spaces.
            texts = [text.replace("\n", " ") for text in page.documents]
            in_flight.append((page, pool.submit(embeddings.embed, model, texts, "document")))
            if len(in_flight) == IN_FLIGHT:
                written += _write(copy, *in_flight.popleft(), model, bar)
        while in_flight:
            written += _write(copy, *in_flight.popleft(), model, bar)
    return written


def _write(copy: Collection, page: _Page, vectors: Future[np.ndarray], model: str, bar: tqdm) -> int:
    copy.upsert(ids=page.ids, embeddings=vectors.result(), documents=page.documents,
                metadatas=[with_model(metadata, model) for metadata in page.metadatas])
    bar.update(len(page.ids))
    return len(page.ids)


def same_chunks(source: Collection, copy: Collection) -> bool:
    return fingerprints(source) == fingerprints(copy)

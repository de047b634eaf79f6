"""Restore a backup file into the shared store without ever leaving a half-restored collection.

Each collection NAME of the file is built in a temporary collection ``NAME.restoring``, checked to
hold exactly the file's ids, and only then swapped in: NAME (if any) becomes ``NAME.replaced``, the
temporary becomes NAME, and the replaced one is dropped. Chroma has no atomic swap, so between those
two renames (two requests, milliseconds) NAME is briefly absent; at every other moment NAME holds its
old data or the complete new data. A run killed anywhere is finished by running it again: it finds
these leftovers first, completes an interrupted swap with a verified temporary (or rolls back to the
old data), and rebuilds an unfinished temporary.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from tqdm import tqdm

from vector_bridge.backup_file import PAGE, BackupError, CollectionHeader, Summary, decode_vector, read_contents, records
from vector_bridge.store import TOOL_COLLECTIONS

log = logging.getLogger(__name__)
BUILDING = ".restoring"
REPLACED = ".replaced"


def restore_part(name: str) -> tuple[str, str] | None:
    """For a collection restore made: ("building" or "replaced", the collection it stands for)."""
    for suffix, part in ((BUILDING, "building"), (REPLACED, "replaced")):
        if name.endswith(suffix) and len(name) > len(suffix):
            return part, name[: -len(suffix)]
    return None


class _Store:
    """The few collection operations a restore needs, by name."""

    def __init__(self, client: ClientAPI) -> None:
        self.client = client

    def get(self, name: str) -> Collection | None:
        return next((c for c in self.client.list_collections() if c.name == name), None)

    def rename(self, collection: Collection, name: str) -> None:
        log.info("renaming collection", extra={"collection": collection.name, "to": name})
        collection.modify(name=name)

    def drop(self, name: str) -> None:
        log.info("dropping collection", extra={"collection": name})
        self.client.delete_collection(name)


def _holds_exactly(collection: Collection | None, header: CollectionHeader) -> bool:
    return collection is not None and sorted(collection.get(include=[])["ids"]) == sorted(header.ids)


def _holds_at_least(collection: Collection, header: CollectionHeader) -> bool:
    return set(header.ids) <= set(collection.get(include=[])["ids"])


def _merge(source: Collection, target: Collection) -> None:
    """Every chunk of ``source`` into ``target``, vectors as they are."""
    got = source.get(include=["documents", "metadatas", "embeddings"])
    if got["ids"]:
        target.upsert(ids=got["ids"], documents=got["documents"], metadatas=got["metadatas"],
                      embeddings=got["embeddings"])


def _finish_interrupted(store: _Store, header: CollectionHeader) -> None:
    """Bring NAME back to a plain state after a killed run: old data or the verified new data."""
    name = header.name
    replaced = store.get(name + REPLACED)
    if replaced is None:
        return
    current = store.get(name)
    if current is not None and store.get(name + BUILDING) is None:
        store.drop(name + REPLACED)  # the swap went through; only dropping the old data was left
        return
    building = store.get(name + BUILDING)
    if current is not None:
        # The name was free between the two renames and Open WebUI wrote to it, creating it anew: those
        # chunks are a user's, so they join whichever copy takes the name.
        target = building if _holds_exactly(building, header) else replaced
        _merge(current, target)  # type: ignore[arg-type]
        store.drop(name)
    if _holds_exactly(building, header) or (building is not None and current is not None
                                            and _holds_at_least(building, header)):
        assert building is not None
        store.rename(building, name)  # killed between the two renames: finish the swap
        store.drop(name + REPLACED)
    else:
        store.rename(replaced, name)  # no complete new data: put the old back, then restore again


def _swap(store: _Store, building: Collection, name: str) -> None:
    current = store.get(name)
    if current is not None:
        store.rename(current, name + REPLACED)
    store.rename(building, name)
    if current is not None:
        store.drop(name + REPLACED)


def restore(client: ClientAPI, path: Path, *, replace: bool = False, progress: bool = True) -> Summary:
    """Recreate every collection of the backup. Existing non-empty collections are kept unless ``replace``."""
    from vector_bridge.pgvector_store import PgvectorClient

    if isinstance(client, PgvectorClient):
        from vector_bridge.pgvector_restore import restore_into_pgvector

        return restore_into_pgvector(client, path, replace=replace, progress=progress)
    started = time.perf_counter()
    # Backups made before the tools' own collections were left out: those describe the store they came from.
    contents = [header for header in read_contents(path) if header.name not in TOOL_COLLECTIONS]
    store = _Store(client)
    for header in contents:
        _finish_interrupted(store, header)
    existing = {c.name: c for c in client.list_collections()}
    clashes = [h.name for h in contents if h.name in existing and existing[h.name].count() > 0]
    if clashes and not replace:
        raise BackupError(f"these collections exist and hold data: {', '.join(clashes)}; "
                          "restore into an empty store or pass --replace")
    ours = {h.name for h in contents}
    leftovers = sorted(name for name in existing if (part := restore_part(name)) and part[1] not in ours)
    if leftovers:
        log.warning("another restore's temporary collections were left alone", extra={"collections": leftovers})
    by_name = {h.name: h for h in contents}
    total = sum(h.count for h in contents)
    building: Collection | None = None
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        if batch:
            assert building is not None
            building.add(ids=[c["id"] for c in batch],
                         embeddings=np.stack([decode_vector(c["embedding"]) for c in batch]),
                         documents=[c["document"] for c in batch],
                         metadatas=[c["metadata"] for c in batch])  # type: ignore[arg-type]
            bar.update(len(batch))
            batch.clear()

    with tqdm(total=total, unit="chunk", desc="restore", disable=not progress) as bar:
        skipping = False
        for record in records(path):
            if "collection" in record:
                skipping = record["collection"] not in by_name
            if skipping:
                skipping = "end_collection" not in record
                continue
            if "collection" in record:
                name = record["collection"]
                if store.get(name + BUILDING) is not None:
                    store.drop(name + BUILDING)  # an unfinished build: its content is unknown, start again
                building = client.create_collection(name + BUILDING, metadata=record.get("metadata") or None)
            elif "id" in record:
                batch.append(record)
                if len(batch) >= PAGE:
                    flush()
            elif "end_collection" in record:
                flush()
                assert building is not None
                header = by_name[record["end_collection"]]
                if not _holds_exactly(building, header):
                    raise BackupError(f"collection {header.name}: {building.count()} chunks after restore, "
                                      f"the backup holds {header.count}; the old data is untouched")
                _swap(store, building, header.name)
    return Summary(len(contents), total, path.stat().st_size, time.perf_counter() - started, leftovers)

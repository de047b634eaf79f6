"""Chroma's side of `migrate --to-store` (the loop is store_move.py): the Chroma server as a source, and as a
target collections made as Open WebUI 0.12.4 makes them (``get_or_create_collection(name,
metadata={"hnsw:space": "cosine"})``, no embedding function), ids, texts and metadata as the source has them.

The record of what a move wrote lives on the Chroma side too, in the collection ``vector_bridge_moved_chunk``:
one entry per chunk (id ``<collection>:<chunk id>``; Chroma's collection names cannot hold ``:``), with two
fingerprints: of the chunk as sent, and of the row as Chroma then held it, read back (Chroma 1.5.9 hands back
vector components up to about one float32 ulp from what it was sent, the same values on every later read,
restarts included, so what it holds is not bit for bit what was sent). A later run changes or deletes only rows still as the move left them, so
once Open WebUI runs on Chroma nothing it wrote there is undone.

Chroma has no transaction spanning two collections, so a page is written in three steps: its entries are
marked pending, the chunks are replaced (deleted, then added) or deleted, then the entries get their fingerprints (or go). A run
killed in between leaves pending entries, and the next run takes each such row as the move's own, whatever
it holds (only a move writes these collections until Open WebUI is switched, and the switch comes after a
run that finished, which leaves nothing pending), so it compares and rewrites them like any other.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.errors import ChromaError

from vector_bridge.migrate import migration_part
from vector_bridge.pgvector_store import Chunk
from vector_bridge.restore import restore_part
from vector_bridge.shadow import all_ids
from vector_bridge.store import METADATA_PAGE, MOVES_COLLECTION, STORE_COLLECTION, TOOL_COLLECTIONS
from vector_bridge.store_move import PAGE, Record, StoreMoveError, fingerprint

# Open WebUI's collection settings (open_webui/retrieval/vector/dbs/chroma.py, insert and upsert).
OPENWEBUI_COLLECTION_METADATA = {"hnsw:space": "cosine"}
_NO_VECTOR = [1.0]  # the record's entries are looked up by id and metadata, never by vector; Chroma wants one


log = logging.getLogger(__name__)


class NothingToMove(StoreMoveError):
    pass


class MixedLengths(StoreMoveError):
    pass


class ChromaRefused(StoreMoveError):
    pass


def vector_length(client: ClientAPI, only: list[str] | None = None) -> int:
    """The one vector length of the collections to move: pgvector's one table takes one length."""
    lengths: dict[int, str] = {}
    for collection in client.list_collections():
        if _not_openwebuis(collection.name) or (only and collection.name not in only):
            continue
        first = collection.peek(1)
        if first["embeddings"] is not None and len(first["embeddings"]):
            lengths.setdefault(len(first["embeddings"][0]), collection.name)
    if not lengths:
        raise NothingToMove("no collection holds any chunk: nothing to move")
    if len(lengths) > 1:
        described = ", ".join(f"{length} ({name})" for length, name in sorted(lengths.items()))
        raise MixedLengths(f"the collections hold vectors of different lengths: {described}; pgvector keeps all "
                           "chunks in one table of one length: migrate them to one model first")
    return next(iter(lengths))


def _not_openwebuis(name: str) -> bool:
    return bool(_away(name)) or name in TOOL_COLLECTIONS


def _away(name: str) -> str | None:
    """The collection that a migrate or restore part (its shadow, kept or replaced data) stands for."""
    part = migration_part(name) or restore_part(name)
    return part[1] if part else None


def store_id(client: ClientAPI) -> str:
    """This Chroma store's own id, kept in the metadata of a collection of ours (made on first use): every
    Chroma database has the same id, so nothing else tells one store from another, or from one made again."""
    try:
        # Made with its id in one step: of two first runs at once, one makes it and the other reads it.
        client.create_collection(STORE_COLLECTION, embedding_function=None, metadata={
            "vector_bridge": "this store's id as a source of migrate --to-store", "store_id": uuid.uuid4().hex})
    except (ChromaError, ValueError):
        pass  # there already (or not allowed: then the read below says so)
    try:
        found = (client.get_collection(STORE_COLLECTION, embedding_function=None).metadata or {}).get("store_id")
    except (ChromaError, ValueError) as error:
        raise ChromaRefused(f"Chroma would not keep this store's id in the collection {STORE_COLLECTION}: "
                            f"{type(error).__name__}") from None
    if not found:
        raise ChromaRefused(f"the collection {STORE_COLLECTION} has no store_id in its metadata: delete it (it holds "
                            "no chunks) and run again; moves from this store then count as from another store")
    return str(found)


class ChromaSource:
    engine = "Chroma"

    def __init__(self, client: ClientAPI) -> None:
        self.client = client
        self.token = f"chroma:{store_id(client)}"
        self._names: list[str] = []

    def migrating(self, name: str) -> bool:
        return any(_away(other) == name for other in self._names)

    def names(self) -> tuple[list[str], list[str]]:
        names = self._names = sorted(collection.name for collection in self.client.list_collections())
        # migrate's shadows and kept old vectors are not the live store; the record is the move's own
        return ([n for n in names if not _not_openwebuis(n)],
                [n for n in names if _away(n)])

    def ids(self, name: str) -> list[str]:
        return all_ids(self.client.get_collection(name))

    def read(self, name: str, ids: list[str]) -> list[Chunk]:
        return _read(self.client.get_collection(name), ids)


def _read(collection: Collection, ids: list[str]) -> list[Chunk]:
    got = collection.get(ids=ids, include=["documents", "metadatas", "embeddings"])
    return [Chunk(chunk_id, document or "", np.asarray(vector, dtype=np.float32), dict(metadata or {}))
            for chunk_id, document, metadata, vector in zip(got["ids"], got["documents"], got["metadatas"],
                                                             got["embeddings"])]


def chroma_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Values Chroma cannot hold, turned as Open WebUI's own Chroma client turns them (``process_metadata``):
    None dropped, lists, dicts and datetimes as their text. Open WebUI stored pgvector's metadata through the
    same function, so its chunks pass unchanged."""
    converted = {}
    for key, value in metadata.items():
        if value is None:
            continue
        converted[key] = str(value) if isinstance(value, (list, dict, dt.datetime)) else value
    return converted


class ChromaTarget:
    engine = "Chroma"

    def __init__(self, client: ClientAPI, token: str, *, ef_search: int = 0) -> None:
        self.client, self.token, self.ef_search = client, token, ef_search
        self._record = client.get_or_create_collection(
            MOVES_COLLECTION, metadata={"vector_bridge": "chunks vector-bridge migrate --to-store chroma wrote"},
            embedding_function=None)
        self._collections: dict[str, Collection] = {}
        self._lengths: dict[str, int] = {}  # each collection's vector length, once known
        self._absent: set[str] = set()  # collections moves wrote that are gone: not made again unasked
        self._existing: set[str] | None = None

    def _collection(self, name: str) -> Collection:
        if name not in self._collections:
            self._collections[name] = self.client.get_collection(name, embedding_function=None)
        return self._collections[name]

    def open(self, name: str) -> None:
        if name in TOOL_COLLECTIONS:
            raise ChromaRefused(f"{name}: the name of one of this tool's own collections on Chroma; rename it")
        self._absent.discard(name)
        if self._existing is None:  # once a run: Open WebUI keeps a collection per file, thousands of them
            self._existing = {collection.name for collection in self.client.list_collections()}
        if name not in self._existing:
            if self.written(name):
                self._absent.add(name)  # deleted since moves wrote it: the caller decides (it stays deleted unasked)
                return
            self.forget(name)  # only what a killed run left (pending entries, a take-over's marker): nothing to keep
        self._existing.add(name)
        try:
            collection = self.client.get_or_create_collection(name, metadata=OPENWEBUI_COLLECTION_METADATA,
                                                              embedding_function=None)
        except (ChromaError, ValueError) as error:  # a name Chroma does not take, say
            raise ChromaRefused(f"{name}: Chroma refused the collection: {error}") from None
        hnsw = (collection.configuration_json or {}).get("hnsw") or {}
        if hnsw and hnsw.get("ef_search", 0) < self.ef_search:
            # what `vector-bridge up` sets on every collection when Chroma starts (store.widen_hnsw_search)
            collection.modify(configuration={"hnsw": {"ef_search": self.ef_search}})
        self._collections[name] = collection
        self._settle_pending(name)
        self._finish_take_over(name)

    def _entries(self, name: str) -> list[tuple[str, dict[str, Any]]]:
        found, offset = [], 0
        while True:
            page = self._record.get(where={"collection": name}, include=["metadatas"], limit=METADATA_PAGE,
                                    offset=offset)
            found += list(zip(page["ids"], page["metadatas"]))
            offset += len(page["ids"])
            if len(page["ids"]) < METADATA_PAGE:
                return found

    def _settle_pending(self, name: str) -> None:
        """A run killed mid-page: its rows are the move's, as they are now (see the module's docstring)."""
        entries = {entry["chunk"]: (key, entry.get("source")) for key, entry in self._entries(name)
                   if entry.get("pending") and not entry.get("take_over")}
        pending = {chunk_id: key for chunk_id, (key, _) in entries.items()}
        if not pending:
            return
        now = self._fingerprints(name, list(pending))
        settled = [chunk_id for chunk_id in pending if chunk_id in now]
        if settled:
            # Each as the store whose run it was: another store's killed page stays that store's.
            self._record.upsert(ids=[pending[c] for c in settled], embeddings=[_NO_VECTOR] * len(settled),
                                metadatas=[self._entry(name, c, "", now[c]) | (
                                    {"source": entries[c][1]} if entries[c][1] else {}) for c in settled])
        absent = [pending[c] for c in pending if c not in now]
        if absent:
            self._record.delete(ids=absent)
        log.info("took over a killed run's page", extra={"collection": name, "present": len(settled),
                                                         "absent": len(absent)})

    def _finish_take_over(self, name: str) -> None:
        """A take-over killed between its pages, by a run from this store: finished as it was asked (every
        row, or only those another store's move wrote). Another store's is left for that store to finish."""
        entries = self._entries(name)
        marker = next((entry for _, entry in entries if entry.get("take_over")), None)
        if marker is None or marker.get("source") != self.token:
            return
        sources = {entry["chunk"]: entry.get("source") for _, entry in entries if not entry.get("take_over")}
        now = self.fingerprints(name)
        if marker.get("whole"):
            rows = {chunk_id: print_ for chunk_id, print_ in now.items() if sources.get(chunk_id) != self.token}
        else:  # never a row no move wrote: Open WebUI's
            rows = {chunk_id: print_ for chunk_id, print_ in now.items()
                    if chunk_id in sources and sources[chunk_id] != self.token}
        self.take_over(name, rows, whole=bool(marker.get("whole")))
        log.info("finished a killed run's take-over", extra={"collection": name})

    def ids(self, name: str) -> set[str]:
        return set() if name in self._absent else set(all_ids(self._collection(name)))

    def fingerprints(self, name: str) -> dict[str, str]:
        return {} if name in self._absent else self._fingerprints(name, all_ids(self._collection(name)))

    def _fingerprints(self, name: str, ids: list[str]) -> dict[str, str]:
        found = {}
        for start in range(0, len(ids), PAGE):
            for chunk in _read(self._collection(name), ids[start:start + PAGE]):
                found[chunk.id] = fingerprint(chunk)
        return found

    def written(self, name: str) -> dict[str, Record]:
        return {entry["chunk"]: Record(entry["sent"], entry["stored"], entry.get("source"))
                for _, entry in self._entries(name) if not entry.get("pending") and not entry.get("take_over")}

    def moved_collections(self) -> dict[str, set[str | None]]:
        found: dict[str, set[str | None]] = {}
        offset = 0
        while True:
            page = self._record.get(include=["metadatas"], limit=METADATA_PAGE, offset=offset)
            for entry in page["metadatas"]:
                if not entry.get("take_over"):
                    found.setdefault(entry["collection"], set()).add(entry.get("source"))
            offset += len(page["ids"])
            if len(page["ids"]) < METADATA_PAGE:
                return found

    def take_over(self, name: str, fingerprints: dict[str, str], *, whole: bool) -> None:
        """Record these rows as this source's, and other stores' records of the collection as this source's
        too (chunks deleted here stay deleted). Chroma writes one page of entries at a time: a marker first
        (which store, and whether every row was asked for), gone only when all is done, so a run killed in
        between has the next one from this store finish it (``open``)."""
        marker = _key(name, "")  # no chunk has an empty id
        self._record.upsert(ids=[marker], embeddings=[_NO_VECTOR], metadatas=[
            {"collection": name, "chunk": "", "take_over": True, "source": self.token, "whole": whole}])
        ids = list(fingerprints)
        for start in range(0, len(ids), METADATA_PAGE):
            page = ids[start:start + METADATA_PAGE]
            # "" as sent: each row is compared with the source again and rewritten.
            self._record.upsert(ids=[_key(name, chunk_id) for chunk_id in page],
                                embeddings=[_NO_VECTOR] * len(page),
                                metadatas=[self._entry(name, chunk_id, "", fingerprints[chunk_id])
                                           for chunk_id in page])
        # Other stores' records left (chunks deleted here since): this source's now, so they stay deleted.
        foreign = [key for key, entry in self._entries(name)
                   if not entry.get("take_over") and entry.get("source") != self.token]
        for start in range(0, len(foreign), METADATA_PAGE):
            page = foreign[start:start + METADATA_PAGE]
            self._record.update(ids=page, metadatas=[{"source": self.token}] * len(page))
        self._record.delete(ids=[marker])

    def forget(self, name: str) -> None:
        self._record.delete(where={"collection": name})

    def retire(self, name: str) -> None:
        if name in self._absent:
            return
        collection = self._collection(name)
        if collection.count() == 0:  # what Open WebUI does when it deletes a knowledge base: no collection
            self.client.delete_collection(name)
            self._collections.pop(name, None)
            if self._existing is not None:
                self._existing.discard(name)
            self._lengths.pop(name, None)

    def as_stored(self, chunk: Chunk) -> Chunk:
        return Chunk(chunk.id, chunk.text, np.asarray(chunk.vector, dtype=np.float32), chroma_metadata(chunk.metadata))

    def write(self, name: str, chunks: list[Chunk]) -> None:
        stored = [self.as_stored(chunk) for chunk in chunks]
        ids = [chunk.id for chunk in stored]
        self._check_length(name, len(stored[0].vector))
        keys = self._mark_pending(name, ids)
        collection = self._collection(name)
        try:
            # Deleted, then added: an upsert would keep metadata keys the new chunk lacks (Chroma merges an
            # existing record's metadata with the new, and keeps it whole for None).
            collection.delete(ids=ids)
            collection.add(ids=ids, embeddings=np.stack([chunk.vector for chunk in stored]),
                           documents=[chunk.text for chunk in stored],
                           metadatas=[chunk.metadata or None for chunk in stored])
        except (ChromaError, ValueError) as error:  # the server's refusals, and the client's own checks
            raise ChromaRefused(f"{name}: Chroma refused a page: {error}") from None
        self._lengths[name] = len(stored[0].vector)
        now = self._fingerprints(name, ids)  # what Chroma holds, a ulp off what was sent (module docstring)
        self._record.upsert(ids=keys, embeddings=[_NO_VECTOR] * len(keys),
                            metadatas=[self._entry(name, chunk.id, fingerprint(chunk), now[chunk.id])
                                       for chunk in stored])

    def delete(self, name: str, ids: list[str]) -> None:
        keys = self._mark_pending(name, ids)
        self._collection(name).delete(ids=ids)
        self._record.delete(ids=keys)

    def _check_length(self, name: str, length: int) -> None:
        """Before a page's rows are deleted to be replaced: Chroma would refuse vectors of another length than
        the collection's only at the add, with the old rows already gone."""
        if name not in self._lengths:
            first = self._collection(name).peek(1)["embeddings"]
            if first is None or not len(first):
                return  # an empty collection takes the length of its first add
            self._lengths[name] = len(first[0])
        if self._lengths[name] != length:
            raise ChromaRefused(f"{name}: the collection holds {self._lengths[name]}-dimension vectors and the "
                                f"source's are {length}: Open WebUI writes it with another model now? Move it "
                                "after migrating it to one model, or delete it in Chroma first")

    def _mark_pending(self, name: str, ids: list[str]) -> list[str]:
        keys = [_key(name, chunk_id) for chunk_id in ids]
        self._record.upsert(ids=keys, embeddings=[_NO_VECTOR] * len(keys),
                            metadatas=[self._entry(name, chunk_id, "", "", pending=True) for chunk_id in ids])
        return keys

    def read(self, name: str, ids: list[str]) -> list[Chunk]:
        return _read(self._collection(name), ids)

    def _entry(self, name: str, chunk_id: str, sent: str, stored: str, *, pending: bool = False) -> dict[str, Any]:
        return {"collection": name, "chunk": chunk_id, "sent": sent, "stored": stored, "pending": pending,
                "source": self.token}

    def finish(self) -> None:
        pass  # Chroma indexes as it goes


def _key(name: str, chunk_id: str) -> str:
    return f"{name}:{chunk_id}"



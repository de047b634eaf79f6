"""`vector-bridge migrate --to-store URL`: bring every collection of the Chroma store into pgvector, ids,
texts, metadata and vectors unchanged, while Open WebUI keeps running on Chroma.

Each run brings the target to what the source holds now: chunks missing or different there (text,
metadata, vector) are written, chunks the source no longer has are deleted, in pages that are each one
transaction, recorded with what was written. So a killed run is simply run again, and a last run after
Open WebUI has stopped brings over what it wrote meanwhile. Rows that are not as a move left them were
written by Open WebUI itself after the switch: they are never changed or deleted, and a chunk a move wrote
that has since gone from pgvector is not brought back (its owner deleted it there). Then every collection
is checked: the source's ids are there, and a random sample compares whole (text, metadata, vector).
Open WebUI reads VECTOR_DB when it starts, so the switch is a restart with the environment the report names.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from chromadb.api import ClientAPI
from tqdm import tqdm

from vector_bridge.migrate import migration_part
from vector_bridge.pgvector_store import (Chunk, PgvectorError, PgvectorStore, Table, as_stored, chunk_fingerprint,
                                          without_nul)
from vector_bridge.shadow import all_ids
from vector_bridge.store import METADATA_PAGE

PAGE = 256
SAMPLE = 32  # chunks per collection read back and compared whole
TOLERANCE = 1e-6


@dataclass
class MovedCollection:
    collection: str
    chunks: int
    written: int
    removed: int
    verified: int  # chunks compared whole after the copy
    seconds: float
    kept: int = 0  # rows Open WebUI wrote or changed in pgvector after the switch: left as they are


@dataclass
class StoreMove:
    target: str
    dimension: int
    collections: list[MovedCollection] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # our own migration shadows and kept old vectors

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "dimension": self.dimension, "skipped": self.skipped,
                "collections": [asdict(c) for c in self.collections]}


def vector_length(client: ClientAPI, only: list[str] | None = None) -> int:
    """The one vector length of the collections to move: pgvector's one table takes one length."""
    lengths: dict[int, str] = {}
    for collection in client.list_collections():
        if migration_part(collection.name) or (only and collection.name not in only):
            continue
        first = collection.peek(1)
        if first["embeddings"] is not None and len(first["embeddings"]):
            lengths.setdefault(len(first["embeddings"][0]), collection.name)
    if not lengths:
        raise PgvectorError("no collection holds any chunk: nothing to move")
    if len(lengths) > 1:
        described = ", ".join(f"{length} ({name})" for length, name in sorted(lengths.items()))
        raise PgvectorError(f"the collections hold vectors of different lengths: {described}; pgvector keeps all "
                            "chunks in one table of one length: migrate them to one model first")
    return next(iter(lengths))


def move_to_pgvector(client: ClientAPI, target: PgvectorStore, *, dimension: int, only: list[str] | None = None,
                     progress: bool = False, seed: int | None = None) -> StoreMove:
    table = target.table() or target.create_table(dimension)
    target.prepare_moves()
    if table.dimension != dimension:
        raise PgvectorError(f"the target's table holds {table.dimension}-dimension vectors and the served model "
                            f"gives {dimension}: Open WebUI would pad or cut them. Use an empty database.")
    names = sorted(collection.name for collection in client.list_collections())
    if only:
        missing = sorted(set(only) - set(names))
        if missing:
            raise PgvectorError(f"no such collection: {', '.join(missing)}")
        names = [name for name in names if name in only]
    report = StoreMove(target="pgvector", dimension=dimension)
    sampler = random.Random(seed if seed is not None else time.time_ns())
    for name in names:
        if migration_part(name):
            report.skipped.append(name)
            continue
        report.collections.append(_move_one(client, target, table, name, progress, sampler))
    target.create_vector_index(table)
    return report


def _move_one(client: ClientAPI, target: PgvectorStore, table: Table, name: str, progress: bool,
              sampler: random.Random) -> MovedCollection:
    started = time.monotonic()
    source = client.get_collection(name)
    ids = all_ids(source)
    have, wrote = target.fingerprints(name), target.written(name)

    def ours(chunk_id: str) -> bool:
        """The row is as a move wrote it (absent rows included when no move ever wrote them)."""
        return have.get(chunk_id) == wrote.get(chunk_id)

    wanted = set(ids)
    gone = sorted(chunk_id for chunk_id in have if chunk_id not in wanted and ours(chunk_id))
    kept = sum(1 for chunk_id in have if chunk_id not in wanted and not ours(chunk_id))
    for start in range(0, len(gone), METADATA_PAGE):
        target.delete(name, gone[start:start + METADATA_PAGE])
    written = 0
    with tqdm(total=len(ids), unit="chunk", desc=name[:40], disable=not progress) as bar:
        for start in range(0, len(ids), PAGE):
            page = _read(source, ids[start:start + PAGE])
            changed = [chunk for chunk in page if ours(chunk.id)
                       and have.get(chunk.id) != chunk_fingerprint(chunk.text, chunk.metadata,
                                                                           as_stored(chunk.vector, table))]
            kept += sum(1 for chunk in page if not ours(chunk.id))
            if changed:
                target.write(name, changed, table)
                written += len(changed)
            bar.update(len(page))
    verified = _verify(source, target, table, name, [i for i in ids if ours(i)], sampler)
    return MovedCollection(name, len(ids), written, len(gone), verified, round(time.monotonic() - started, 2), kept)


def _read(source: Any, ids: list[str]) -> list[Chunk]:
    got = source.get(ids=ids, include=["documents", "metadatas", "embeddings"])
    return [Chunk(chunk_id, without_nul(document or ""), np.asarray(vector, dtype=np.float32),
                  without_nul(dict(metadata or {})))
            for chunk_id, document, metadata, vector in zip(got["ids"], got["documents"], got["metadatas"],
                                                             got["embeddings"])]


def _verify(source: Any, target: PgvectorStore, table: Table, name: str, ids: list[str],
            sampler: random.Random) -> int:
    """Every id this move answers for is in pgvector; a random sample compares whole (text, metadata, vector
    to 1e-6, halfvec to its precision)."""
    missing = set(ids) - set(target.fingerprints(name))
    if missing:
        raise PgvectorError(f"{name}: {len(missing)} chunks missing in pgvector after the copy (deleted from Chroma "
                            "meanwhile? run again)")
    sample = sampler.sample(ids, min(SAMPLE, len(ids)))
    wanted = {chunk.id: chunk for chunk in _read(source, sample)}
    tolerance = 1e-3 if table.halfvec else TOLERANCE
    for chunk in target.read(name, sample):
        expected = wanted.get(chunk.id)
        if expected is None:
            continue  # deleted from Chroma since: the next run removes it
        vector = chunk.vector[:len(expected.vector)]
        if (chunk.text != expected.text or chunk.metadata != expected.metadata
                or not np.allclose(vector, expected.vector, atol=tolerance, rtol=0)):
            raise PgvectorError(f"{name}: chunk {chunk.id} differs in pgvector after the copy")
    return len(sample)

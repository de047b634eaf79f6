"""`vector-bridge migrate --to-store`: bring every collection of one store Open WebUI speaks into the other
(Chroma -> pgvector, or pgvector -> Chroma), ids, texts, metadata and vectors unchanged, while Open WebUI keeps
running on the first.

This module is the loop both directions share; each engine gives a ``Source`` (what to copy) and a ``Target``
(where, with a record of what moves wrote there): ``move_pgvector.py`` and ``move_chroma.py``.

Each run brings the target to what the source holds now: chunks missing or different there (text, metadata,
vector) are written, chunks the source no longer has are deleted (whole collections too), page by page, and
every write is recorded beside the chunks (the target's record: a table on pgvector, a collection on Chroma).
So a killed run is simply run again, and a last run after Open WebUI has stopped brings over what it wrote
meanwhile. Rows that are not as a move left them were written by Open WebUI itself after the switch: they are
never changed or deleted, and a chunk a move wrote that has since gone from the target is not brought back
(its owner deleted it there).

The record also names the store each chunk came from (an id each store keeps for itself: a Chroma store in a
collection of ours, since every Chroma database has the same id; a pgvector database in a table of ours, with
the table's oid). A run changes or deletes only chunks a move from its own source wrote, so a Chroma store made
again, or another one, never deletes what the first moved; and a collection is removed from the target only
when every chunk of it came from this source and the source holds it under no name (migrate's swap, cut
between its renames, keeps it as NAME.pre.M).

Two states are refused rather than guessed at: a collection the target holds that no move from this source
wrote (old data from before an earlier switch, or another store's copy: ``replace`` takes it over, recorded
before the first write, so a killed run goes on from it; it changes nothing in a collection holding rows a
move from this source wrote), and a
collection the record says moves wrote that the target now holds none of (its table dropped or emptied, or
Open WebUI deleted it after the switch: ``copy_again`` names the collections to forget the record of and copy
anew). Then every collection is checked: the source's ids are there, and a
random sample compares whole (text, metadata, vector to 1e-6 as the target stores it). Open WebUI reads
VECTOR_DB when it starts, so the switch is a restart with the environment the report names.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from vector_bridge.pgvector_store import Chunk, chunk_fingerprint
from vector_bridge.store import METADATA_PAGE, StoreError

PAGE = 256
SAMPLE = 32  # chunks per collection read back and compared whole
TOLERANCE = 1e-6

log = logging.getLogger(__name__)


class StoreMoveError(StoreError):
    pass


class NoSuchCollection(StoreMoveError):
    pass


class TargetHoldsOtherData(StoreMoveError):
    """The target already has chunks in a collection no move ever wrote into."""


class TargetLostChunks(StoreMoveError):
    """Earlier moves wrote a collection that the target now holds nothing of."""


class CopyDiffers(StoreMoveError):
    """After the copy, the target lacks a chunk or holds it otherwise than the source."""


@dataclass(frozen=True)
class Record:
    """What a move wrote for one chunk: the fingerprint of what it sent (the source's chunk as the target keeps
    it) and of the row as the target held it right after. They differ where the target changes values on the
    way in (Chroma's vectors come back about a float32 ulp off): ``stored`` tells whether the row is still as the move left it,
    ``sent`` whether the source has changed since."""

    sent: str
    stored: str
    source: str | None = None  # the store the chunk came from (Source.token); None: written before it was kept


class Source(Protocol):
    engine: str
    token: str  # this store among all others, as the record names where a chunk came from

    def migrating(self, name: str) -> bool:
        """Whether ``name`` is away under another name for now (migrate's swap, cut between its renames)."""

    def names(self) -> tuple[list[str], list[str]]:
        """The collections to move, and those left out on purpose (the tools' own)."""

    def ids(self, name: str) -> list[str]: ...

    def read(self, name: str, ids: list[str]) -> list[Chunk]: ...


class Target(Protocol):
    engine: str

    def open(self, name: str) -> None:
        """Ready to take ``name``'s chunks; finishes what a killed run left half recorded."""

    def ids(self, name: str) -> set[str]: ...

    def fingerprints(self, name: str) -> dict[str, str]: ...

    def written(self, name: str) -> dict[str, Record]: ...

    def as_stored(self, chunk: Chunk) -> Chunk:
        """The chunk as this target will hold it (padding, precision, the metadata values it takes)."""

    def moved_collections(self) -> dict[str, set[str | None]]:
        """The collections the record says moves wrote into, with the sources of their rows."""

    def take_over(self, name: str, fingerprints: dict[str, str], *, whole: bool) -> None:
        """Record these rows as this source's, durably, before anything else is written; ``whole``: every row
        of the collection was asked for (else only those another store's move wrote)."""

    def forget(self, name: str) -> None:
        """Drop the record of ``name``: it describes rows that are no longer there."""

    def write(self, name: str, chunks: list[Chunk]) -> None: ...

    def delete(self, name: str, ids: list[str]) -> None: ...

    def retire(self, name: str) -> None:
        """The source no longer has ``name`` and its rows the move answers for are deleted: drop what is left
        of the collection itself where the engine keeps one (never rows anyone else wrote)."""

    def read(self, name: str, ids: list[str]) -> list[Chunk]: ...

    def finish(self) -> None: ...


@dataclass
class MovedCollection:
    collection: str
    chunks: int
    written: int
    removed: int
    verified: int  # chunks compared whole after the copy
    seconds: float
    kept: int = 0  # rows Open WebUI wrote or changed in the target after the switch: left as they are
    missing: int = 0  # rows moves wrote that are gone from the target (deleted there): not brought back
    dimension: int | None = None  # the vectors' length in the target


@dataclass
class StoreMove:
    target: str
    dimension: int | None  # pgvector: the table's; Chroma: the collections' when they all share one
    collections: list[MovedCollection] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # our own migration shadows and kept old vectors
    away: list[str] = field(default_factory=list)  # collections under another name for now (a cut swap): not moved
    # Gone from the source but left in the target: some of their chunks came from another store's moves.
    left: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "dimension": self.dimension, "skipped": self.skipped, "left": self.left,
                "away": self.away,
                "collections": [asdict(c) for c in self.collections]}


def fingerprint(chunk: Chunk) -> str:
    return chunk_fingerprint(chunk.text, chunk.metadata, chunk.vector)


def move(source: Source, target: Target, *, only: list[str] | None = None, replace: bool = False,
         copy_again: list[str] | None = None, progress: bool = False, seed: int | None = None,
         dimensions: dict[str, int] | None = None) -> StoreMove:
    names, skipped = source.names()
    listed = {*names, *skipped}
    if only:
        missing = sorted(set(only) - set(names) - set(skipped))
        if missing:
            raise NoSuchCollection(f"no such collection in {source.engine}: {', '.join(missing)}")
        names, skipped = [n for n in names if n in only], [n for n in skipped if n in only]
    if unknown := sorted(set(copy_again or []) - set(names)):
        raise NoSuchCollection(f"--copy-again: no such collection to move from {source.engine}: {', '.join(unknown)}")
    report = StoreMove(target=target.engine.lower(), dimension=None, skipped=skipped)
    moved = target.moved_collections()
    # A migrate or restore cut between its renames: the collection has no name of its own in the source now.
    report.away = sorted(name for name in moved if name not in listed and source.migrating(name)
                         and (not only or name in only))
    sampler = random.Random(seed if seed is not None else time.time_ns())
    for name in names:
        done = _move_one(source, target, name, replace, name in (copy_again or []), progress, sampler)
        done.dimension = (dimensions or {}).get(name)
        log.info("collection moved", extra={"to": report.target} | asdict(done))
        report.collections.append(done)
    # Collections deleted from the source since a move wrote them (a knowledge base removed in Open WebUI).
    # Only where every chunk came from this very store, and it holds the collection under no name now (the
    # listing names() took, in which migrate's renames are atomic).
    for name, sources in sorted(moved.items()):
        if name in names or name in skipped or (only and name not in only) or source.migrating(name):
            continue
        if sources != {source.token}:
            report.left.append(name)  # written from another store (or a copy of this one made again)
            continue
        done = _remove_one(target, name, source.token)
        log.info("collection removed", extra={"to": report.target} | asdict(done))
        report.collections.append(done)
    target.finish()
    return report


def _ours(have: dict[str, str], wrote: dict[str, Record], chunk_id: str, token: str) -> bool:
    """The row is as a move from this store left it (absent rows included when no move ever wrote them). Rows
    a move from another store wrote are never this run's to change or delete: a Chroma made again, say, lacks
    every chunk of the first."""
    record = wrote.get(chunk_id)
    if record is None:
        return chunk_id not in have
    return record.source == token and have.get(chunk_id) == record.stored


def _remove_one(target: Target, name: str, token: str) -> MovedCollection:
    started = time.monotonic()
    target.open(name)
    have, wrote = target.fingerprints(name), target.written(name)
    gone = sorted(chunk_id for chunk_id in have if _ours(have, wrote, chunk_id, token))
    for start in range(0, len(gone), METADATA_PAGE):
        target.delete(name, gone[start:start + METADATA_PAGE])
    kept = len(have) - len(gone)
    missing = sum(1 for chunk_id in wrote if chunk_id not in have)
    target.forget(name)  # what is left (if anything) is Open WebUI's own: no record applies any more
    if not kept:
        target.retire(name)
    return MovedCollection(name, 0, 0, len(gone), 0, round(time.monotonic() - started, 2), kept, missing)


def _move_one(source: Source, target: Target, name: str, replace: bool, copy_again: bool, progress: bool,
              sampler: random.Random) -> MovedCollection:
    started = time.monotonic()
    ids = source.ids(name)
    target.open(name)
    have, wrote = target.fingerprints(name), target.written(name)
    if have and not any(record.source == source.token for record in wrote.values()):
        if not replace:
            whose = ("moves from another store (or from a version that did not tell stores apart) wrote them"
                     if wrote else f"no move wrote them (left from before Open WebUI moved away from {target.engine}?)")
            lacking = len(set(have) - set(ids))
            raise TargetHoldsOtherData(
                f"{name}: {target.engine} already holds {len(have)} chunks in this collection and no move from this "
                f"store wrote them: {whose}. Back them up and delete the collection, or run again with --replace "
                f"to make it this source's copy (which deletes the {lacking} of them this source lacks)")
        target.take_over(name, have, whole=True)
        wrote = target.written(name)
    elif replace and (foreign := {chunk_id: print_ for chunk_id, print_ in have.items()
                                  if chunk_id in wrote and wrote[chunk_id].source != source.token}):
        # chunks another store's move wrote: this source's copy from now on
        target.take_over(name, foreign, whole=False)
        wrote = target.written(name)
    elif wrote and not have:
        if not copy_again:
            raise TargetLostChunks(
                f"{name}: earlier moves wrote {len(wrote)} chunks into this collection and {target.engine} holds "
                "none of them now (its table dropped or emptied, or Open WebUI deleted it after the switch). If "
                "Open WebUI already runs on the target and deleted it there, leave it out (--collection names "
                f"the others); otherwise run again with --copy-again {name}")
        target.forget(name)
        target.open(name)
        wrote = {}

    def ours(chunk_id: str) -> bool:
        return _ours(have, wrote, chunk_id, source.token)

    wanted = set(ids)
    gone = sorted(chunk_id for chunk_id in have if chunk_id not in wanted and ours(chunk_id))
    kept = sum(1 for chunk_id in have if chunk_id not in wanted and not ours(chunk_id))
    for start in range(0, len(gone), METADATA_PAGE):
        target.delete(name, gone[start:start + METADATA_PAGE])
    written = missing = 0
    with tqdm(total=len(ids), unit="chunk", desc=name[:40], disable=not progress) as bar:
        for start in range(0, len(ids), PAGE):
            page = source.read(name, ids[start:start + PAGE])
            changed = []
            for chunk in page:
                record = wrote.get(chunk.id)
                if chunk.id not in have and record is not None:
                    missing += 1  # written by a move, deleted in the target since: its owner's doing
                elif not ours(chunk.id):
                    kept += 1
                elif (have.get(chunk.id) is None or record is None
                      or record.sent != fingerprint(target.as_stored(chunk))):
                    changed.append(chunk)
            if changed:
                target.write(name, changed)
                written += len(changed)
            bar.update(len(page))
    verified = _verify(source, target, name, [i for i in ids if ours(i)], sampler)
    return MovedCollection(name, len(ids), written, len(gone), verified, round(time.monotonic() - started, 2), kept,
                           missing)


def _verify(source: Source, target: Target, name: str, ids: list[str], sampler: random.Random) -> int:
    """Every id this move answers for is in the target; a random sample compares whole: text, metadata, and the
    vector to 1e-6 against the source's as the target stores it (halfvec: in half precision)."""
    missing = set(ids) - target.ids(name)
    if missing:
        raise CopyDiffers(f"{name}: {len(missing)} chunks missing in {target.engine} after the copy (deleted from "
                          f"{source.engine} meanwhile? run again)")
    sample = sampler.sample(ids, min(SAMPLE, len(ids)))
    wanted = {chunk.id: target.as_stored(chunk) for chunk in source.read(name, sample)}
    for chunk in target.read(name, sample):
        expected = wanted.get(chunk.id)
        if expected is None:
            continue  # deleted from the source since: the next run removes it
        if (chunk.text != expected.text or chunk.metadata != expected.metadata
                or chunk.vector.shape != expected.vector.shape
                or not np.allclose(chunk.vector, expected.vector, atol=TOLERANCE, rtol=0)):
            raise CopyDiffers(f"{name}: chunk {chunk.id} differs in {target.engine} after the copy")
    return len(sample)


def move_to_pgvector(client: Any, target: Any, *, dimension: int, only: list[str] | None = None,
                     replace: bool = False, copy_again: list[str] | None = None, progress: bool = False,
                     seed: int | None = None) -> StoreMove:
    """Chroma (``client``) -> pgvector (``target``, a PgvectorStore), the table made for ``dimension``."""
    from vector_bridge.move_chroma import ChromaSource
    from vector_bridge.move_pgvector import PgvectorTarget, TableDoesNotFit

    table = target.table() or target.create_table(dimension)
    if table.dimension != dimension:
        raise TableDoesNotFit(f"the target's table holds {table.dimension}-dimension vectors and the collections "
                              f"hold {dimension}: Open WebUI would pad or cut them. Use an empty database.")
    source = ChromaSource(client)
    report = move(source, PgvectorTarget(target, table, source.token), only=only, replace=replace,
                  copy_again=copy_again, progress=progress, seed=seed)
    report.dimension = dimension
    for done in report.collections:
        done.dimension = dimension
    return report


def move_to_chroma(source: Any, client: Any, settings: Any, *, only: list[str] | None = None, replace: bool = False,
                   copy_again: list[str] | None = None, progress: bool = False,
                   seed: int | None = None) -> tuple[StoreMove, Any]:
    """pgvector (``source``, a PgvectorStore) -> the Chroma server ``client`` reaches; vectors in each collection's
    real length (move_pgvector.real_dimensions)."""
    from vector_bridge.move_chroma import ChromaTarget
    from vector_bridge.move_pgvector import PgvectorSource, open_source_table, real_dimensions

    table = open_source_table(source)
    source.hold_writer_lock()  # a `migrate` re-embedding it meanwhile would hand over half-moved vectors
    dimensions = real_dimensions(source, table, settings, only)
    moving = PgvectorSource(source, dimensions)
    report = move(moving, ChromaTarget(client, moving.token, ef_search=settings.chroma_ef_search),
                  only=only, replace=replace, copy_again=copy_again, progress=progress, seed=seed,
                  dimensions=dimensions.by_collection)
    lengths = set(dimensions.by_collection.values())
    report.dimension = lengths.pop() if len(lengths) == 1 else None
    return report, dimensions

"""Move a pgvector store to another served model, and Open WebUI with it, in one transaction.

On Chroma a migration builds shadow collections and renames them at the cutover (migrate.py). pgvector has
no collections to rename and ids are unique across its one table, but it has transactions:

1. build     model M's vectors for every chunk of the collections to migrate go into a side table (one row
             per model and chunk, with the text and metadata they were embedded from) while Open WebUI keeps
             answering from ``document_chunk`` with its old model. Pages commit one by one, so a killed run
             resumes where it stopped.
2. catch up  the side rows are brought to exactly the live chunks again (what Open WebUI added, changed or
             deleted during the build), until a pass finds nothing new.
3. cut over  a last catch-up, then one transaction keeps the old vectors in the side table under their
             model, gives every migrated chunk whose text and metadata are still those M's vector was made
             from that vector and M in its metadata, and records the move (with the transaction's id) in
             ``vector_bridge_model_move``. Open WebUI reads the old vectors until the commit and the new ones
             after it, and is switched to M right then. A run killed before the commit changed nothing; one
             killed after it switches Open WebUI and settles when run again.
4. settle    every chunk of those collections that the cutover did not write (row version other than the
             cutover's: skipped because it had changed, or written since, with or without a model recorded)
             is embedded again with M and updated only if it still holds the text and metadata embedded, so
             a chunk Open WebUI deletes or edits meanwhile is never brought back or reverted.

``--rollback M`` moves the collections recorded as moved to M back to the model whose vectors were kept
(only chunks written since are embedded; collections Open WebUI created after the cutover are embedded
whole), and ``--drop-old`` deletes every kept vector. M's vectors must fit the table's fixed length. One
command writes the store at a time (a PostgreSQL advisory lock, released when its connection ends).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from vector_bridge.cutover import Cutover, switch_with_retries
from vector_bridge.embeddings import EmbeddingsClient
from vector_bridge.migrate import CATCH_UP_PASSES, Migration, MigrationError, StoreMigration
from vector_bridge.pgvector_store import TABLE, PgvectorClient, PgvectorCollection, Table, vector_literal
from vector_bridge.shadow import sync_copy, with_model
from vector_bridge.store import describe

SIDE = "vector_bridge_model_chunk"
MOVES = "vector_bridge_model_move"  # per collection: the model it was moved to, the model kept, the cutover
SETTLE_PASSES = 3


class SideCopy:
    """One collection's rows of one model in the side table, with the collection API sync_copy works on."""

    def __init__(self, client: PgvectorClient, name: str, model: str) -> None:
        self._db = client.store._db
        self._table = client.table
        self.name = name
        self.model = model

    def get(self, ids: list[str] | None = None, include: list[str] | None = None, **_: Any) -> dict[str, Any]:
        query = f"SELECT id, text, vmetadata FROM {SIDE} WHERE model = %s AND collection_name = %s"
        arguments: list[Any] = [self.model, self.name]
        if ids is not None:
            query += " AND id = ANY(%s)"
            arguments.append(list(ids))
        rows = self._db.execute(query + " ORDER BY id", arguments).fetchall()
        self._db.commit()
        return {"ids": [row[0] for row in rows], "documents": [row[1] for row in rows],
                "metadatas": [row[2] or {} for row in rows]}

    def upsert(self, ids: list[str], embeddings: Any, documents: list[str], metadatas: list[Any]) -> None:
        from psycopg.types.json import Jsonb

        assert self._table is not None
        with self._db.transaction(), self._db.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {SIDE} (model, id, collection_name, text, vmetadata, vector) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (model, id) DO UPDATE SET collection_name = EXCLUDED.collection_name, "
                "text = EXCLUDED.text, vmetadata = EXCLUDED.vmetadata, vector = EXCLUDED.vector",
                [(self.model, chunk_id, self.name, document, Jsonb(metadata or {}),
                  vector_literal(np.asarray(vector), self._table.dimension))
                 for chunk_id, vector, document, metadata in zip(ids, embeddings, documents, metadatas)])

    def delete(self, ids: list[str]) -> None:
        with self._db.transaction():
            self._db.execute(f"DELETE FROM {SIDE} WHERE model = %s AND collection_name = %s AND id = ANY(%s)",
                             (self.model, self.name, list(ids)))


def prepare(client: PgvectorClient, embeddings: EmbeddingsClient, model: str) -> Table:
    """The table, checked to hold ``model``'s vectors, the side tables beside it, and the store's one writer."""
    table = client.table
    if table is None:
        raise MigrationError(f"{TABLE} does not exist yet: Open WebUI has stored nothing in pgvector")
    client.store.hold_writer_lock()
    [probe] = embeddings.embed(model, ["model check"], "document")
    if len(probe) > table.dimension:
        raise MigrationError(f"{model} gives {len(probe)}-dimension vectors and {TABLE} holds "
                             f"{table.dimension}; Open WebUI would cut them. Move the store into a table sized for "
                             "it (PGVECTOR_INITIALIZE_MAX_VECTOR_LENGTH) or pick a model that fits")
    kind = "halfvec" if table.halfvec else "vector"
    db = client.store._db
    with db.transaction():
        db.execute(f"CREATE TABLE IF NOT EXISTS {SIDE} (model text NOT NULL, id text NOT NULL, "
                   f"collection_name text NOT NULL, text text, vmetadata jsonb, vector {kind}({table.dimension}), "
                   "PRIMARY KEY (model, id))")
        db.execute(f"CREATE INDEX IF NOT EXISTS {SIDE}_collection ON {SIDE} (model, collection_name)")
        db.execute(f"CREATE TABLE IF NOT EXISTS {MOVES} (collection_name text PRIMARY KEY, model text NOT NULL, "
                   "kept_model text, cutover_xid text NOT NULL, settled boolean NOT NULL DEFAULT false)")
    return table


@dataclass(frozen=True)
class Moved:
    collection: str
    model: str
    kept_model: str | None
    cutover_xid: str
    settled: bool


def moves(client: PgvectorClient) -> dict[str, Moved]:
    rows = client.store._db.execute(
        f"SELECT collection_name, model, kept_model, cutover_xid, settled FROM {MOVES}").fetchall()
    client.store._db.commit()
    return {row[0]: Moved(*row) for row in rows}


def models_of(collection: PgvectorCollection, default_model: str) -> Counter[str]:
    info = describe(collection)
    return Counter(info.models or {default_model: info.count})


def migrate_pgvector(client: PgvectorClient, embeddings: EmbeddingsClient, model: str, *, default_model: str,
                     switch: Callable[[str], None] | None, only: list[str] | None = None, batch: int = 128,
                     drop_old: bool = False, progress: bool = False) -> StoreMigration:
    """Every collection (or ``only`` these) to ``model``, then ``switch`` Open WebUI to it at the cutover."""
    prepare(client, embeddings, model)
    names = sorted(client.store.collections())
    missing = sorted(set(only or []) - set(names))
    if missing:
        raise MigrationError(f"no such collection: {', '.join(missing)}")
    result = StoreMigration(model)
    for moved in moves(client).values():  # a cutover whose run ended before it had settled
        if moved.model == model and not moved.settled and (not only or moved.collection in only):
            _settle(client, embeddings, model, moved.collection, moved.cutover_xid, batch)
    from_models: dict[str, str] = {}
    built: dict[str, Migration] = {}
    for _ in range(CATCH_UP_PASSES):
        changed = False
        for name in client.store.collections():
            if only and name not in only:
                continue
            models = models_of(PgvectorCollection(client, name), default_model)
            if set(models) == {model}:
                built.setdefault(name, Migration(name, "already", sum(models.values())))
                continue
            if name not in from_models:
                from_models[name] = next(m for m, _ in models.most_common() if m != model)
                _forget_other_builds(client, name, model)
            started = time.perf_counter()
            synced = sync_copy(PgvectorCollection(client, name), SideCopy(client, name, model), embeddings, model,
                               batch=batch, progress=progress)
            done = built.setdefault(name, Migration(name, "migrated"))
            done.outcome, done.chunks = "migrated", synced.chunks
            done.embedded, done.removed = done.embedded + synced.embedded, done.removed + synced.removed
            done.seconds += time.perf_counter() - started
            changed |= synced.changed
        if not changed:
            break
    result.collections = [built[name] for name in sorted(built)]
    pending = {name: from_models[name] for name, done in built.items() if done.outcome == "migrated"}
    if pending or switch is not None:
        result.cutover = _cut_over(client, embeddings, model, pending, lambda: switch(model) if switch else None,
                                   batch)
        result.openwebui = "switched" if switch else "not switched"
    if drop_old:
        _drop_kept(client, model, result)
    return result


def _forget_other_builds(client: PgvectorClient, name: str, model: str) -> None:
    """Side rows of this collection that are neither its kept old vectors nor this build's: an abandoned
    migration to some other model. They would only take room (and keep texts)."""
    kept = moves(client).get(name)
    with client.store._db.transaction():
        client.store._db.execute(f"DELETE FROM {SIDE} WHERE collection_name = %s AND model <> %s "
                                 "AND model IS DISTINCT FROM %s", (name, model, kept.kept_model if kept else None))


def roll_back_pgvector(client: PgvectorClient, embeddings: EmbeddingsClient, model: str, *,
                       switch: Callable[[str], None] | None, batch: int = 128,
                       progress: bool = False) -> StoreMigration:
    """The collections moved to ``model`` back on the models whose vectors were kept; collections created
    since the cutover (on ``model``) go to the model most of them return to."""
    prepare(client, embeddings, model)
    recorded = [moved for moved in moves(client).values() if moved.model == model]
    if not any(moved.kept_model for moved in recorded):
        raise MigrationError(f"no old vectors are kept for a migration to {model!r}: nothing to roll back "
                             "(they are gone after --drop-old)")
    back: dict[str, list[str]] = {}
    for moved in recorded:
        if moved.collection in client.store.collections():
            back.setdefault(moved.kept_model or "", []).append(moved.collection)
    if not any(back):
        raise MigrationError(f"the collections moved to {model!r} whose old vectors are kept have all been "
                             "deleted since: nothing to roll back")
    previous = max((m for m in back if m), key=lambda m: len(back[m]))
    back[previous] = back.get(previous, []) + back.pop("", [])  # kept vectors dropped: embedded whole
    marked = {moved.collection for moved in recorded}
    for name in sorted(set(client.store.collections()) - marked):
        if set(models_of(PgvectorCollection(client, name), model)) == {model}:
            back[previous].append(name)
    result = StoreMigration(previous)
    for old_model, names in sorted(back.items(), key=lambda item: item[0] == previous):  # the switch last
        done = migrate_pgvector(client, embeddings, old_model, default_model=model, only=sorted(names), batch=batch,
                                switch=switch if old_model == previous else None, progress=progress)
        for migration in done.collections:
            migration.outcome = "rolled back" if migration.outcome == "migrated" else migration.outcome
        result.collections += done.collections
        result.cutover = done.cutover or result.cutover
    result.openwebui = f"switched back to {previous}" if switch else "not switched"
    return result


def _cut_over(client: PgvectorClient, embeddings: EmbeddingsClient, model: str, pending: dict[str, str],
              switch: Callable[[], None], batch: int) -> Cutover:
    """One transaction for every collection, then Open WebUI's switch, then the chunks it did not cover.

    No table lock: Open WebUI keeps reading (the old vectors, until the commit) and inserting. A chunk takes
    its new vector only where its text and metadata are still those the vector was made from; the rows the
    cutover updates stay locked until it commits, so Open WebUI's edits and deletions of those chunks wait
    for it (26 s at 10,000 chunks, mostly pgvector maintaining its HNSW index)."""
    caught_up = sum(sync_copy(PgvectorCollection(client, name), SideCopy(client, name, model), embeddings, model,
                              batch=batch).embedded for name in pending)
    db, names = client.store._db, sorted(pending)
    started, started_at = time.perf_counter(), time.time()
    with _top_level(client):
        for name in names:  # the old vectors, kept for a rollback under the model they came from
            db.execute(f"DELETE FROM {SIDE} WHERE collection_name = %s AND model NOT IN (%s, %s)",
                       (name, model, pending[name]))
            db.execute(
                f"INSERT INTO {SIDE} (model, id, collection_name, text, vmetadata, vector) "
                f"SELECT %s, id, collection_name, text, vmetadata, vector FROM {TABLE} WHERE collection_name = %s "
                "ON CONFLICT (model, id) DO UPDATE SET collection_name = EXCLUDED.collection_name, "
                "text = EXCLUDED.text, vmetadata = EXCLUDED.vmetadata, vector = EXCLUDED.vector",
                (pending[name], name))
        db.execute(
            f"UPDATE {TABLE} AS live SET vector = side.vector, vmetadata = side.vmetadata FROM {SIDE} AS side "
            "WHERE side.model = %s AND side.id = live.id AND side.collection_name = live.collection_name "
            "AND live.collection_name = ANY(%s) AND live.text IS NOT DISTINCT FROM side.text "
            "AND live.vmetadata - 'embedding_config' = side.vmetadata - 'embedding_config'", (model, names))
        # Row versions this transaction writes carry its id (xmin): the settle step finds every other one.
        xid = _transaction_id(client)
        for name in names:
            db.execute(f"INSERT INTO {MOVES} (collection_name, model, kept_model, cutover_xid, settled) "
                       "VALUES (%s, %s, %s, %s, false) ON CONFLICT (collection_name) DO UPDATE SET "
                       "model = EXCLUDED.model, kept_model = EXCLUDED.kept_model, cutover_xid = EXCLUDED.cutover_xid, "
                       "settled = false", (name, model, pending[name], xid))
    committed = time.perf_counter()
    switch_with_retries(switch)
    switched = time.perf_counter()
    settled = sum(_settle(client, embeddings, model, name, xid, batch) for name in names)
    with db.transaction():  # M's copies are live now: the side table keeps only old vectors
        db.execute(f"DELETE FROM {SIDE} WHERE model = %s AND collection_name = ANY(%s)", (model, names))
    return Cutover(len(names), round(switched - committed, 4), round(committed - started, 4),
                   round(switched - committed, 4), caught_up, settled, started_at)


def _top_level(client: PgvectorClient) -> Any:
    """A transaction of its own, never a savepoint inside a read left open: rows written in a savepoint carry
    the savepoint's id in ``xmin``, and settling would then take them all for rows the cutover did not write."""
    db = client.store._db
    db.commit()
    return db.transaction()


def _transaction_id(client: PgvectorClient) -> str:
    """This transaction's id as row versions show it in ``xmin`` (32 bits)."""
    row = client.store._db.execute("SELECT (pg_current_xact_id()::text::bigint % 4294967296)::text").fetchone()
    return str(row[0])


def _settle(client: PgvectorClient, embeddings: EmbeddingsClient, model: str, name: str, cutover_xid: str,
            batch: int) -> int:
    """Embed again with ``model`` every chunk of ``name`` whose row version the cutover (or this settling) did
    not write, each updated only if it still holds what was embedded; marked settled once none is left."""
    db = client.store._db
    ours = [cutover_xid]
    fixed = 0
    for _ in range(SETTLE_PASSES):
        rows = db.execute(f"SELECT id, text, vmetadata FROM {TABLE} WHERE collection_name = %s "
                          "AND NOT (xmin::text = ANY(%s)) ORDER BY id", (name, ours)).fetchall()
        db.commit()
        if not rows:
            with db.transaction():
                db.execute(f"UPDATE {MOVES} SET settled = true WHERE collection_name = %s AND cutover_xid = %s",
                           (name, cutover_xid))
            break
        for start in range(0, len(rows), batch):
            page = rows[start:start + batch]
            vectors = embeddings.embed(model, [(text or "").replace("\n", " ") for _, text, _ in page], "document")
            updated, xid = _update_if_unchanged(client, name, model, page, vectors)
            fixed += updated
            ours.append(xid)
    return fixed


def _update_if_unchanged(client: PgvectorClient, name: str, model: str, page: list[tuple[str, str, Any]],
                         vectors: np.ndarray) -> tuple[int, str]:
    """One transaction: each chunk takes its new vector only if its text and metadata are still as read.
    Returns how many did, and the transaction's id."""
    from psycopg.types.json import Jsonb

    table = client.table
    assert table is not None
    db = client.store._db
    updated = 0
    with _top_level(client):
        for (chunk_id, text, metadata), vector in zip(page, vectors):
            cursor = db.execute(
                f"UPDATE {TABLE} SET vector = %s, vmetadata = %s WHERE id = %s AND collection_name = %s "
                "AND text IS NOT DISTINCT FROM %s AND vmetadata IS NOT DISTINCT FROM %s",
                (vector_literal(np.asarray(vector), table.dimension), Jsonb(with_model(metadata, model)), chunk_id,
                 name, text, Jsonb(metadata) if metadata is not None else None))
            updated += cursor.rowcount
        xid = _transaction_id(client)
    return updated, xid


def _drop_kept(client: PgvectorClient, model: str, result: StoreMigration) -> None:
    """Every kept vector, of collections deleted since included: their texts are not kept either."""
    db = client.store._db
    with db.transaction():
        dropped = db.execute(f"SELECT DISTINCT collection_name FROM {SIDE} WHERE model <> %s", (model,)).fetchall()
        db.execute(f"DELETE FROM {SIDE} WHERE model <> %s", (model,))
        db.execute(f"UPDATE {MOVES} SET kept_model = NULL")
    result.collections += [Migration(row[0], "already", detail="old vectors dropped") for row in sorted(dropped)]

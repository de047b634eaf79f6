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
             model and gives every migrated chunk M's vector and metadata; Open WebUI reads the old vectors
             until the commit and the new ones after it, and is switched to M right then. A run killed
             before the commit changed nothing; one killed after it switches Open WebUI when run again.
4. settle    chunks Open WebUI wrote with its old model since the last catch-up (during the transaction, or
             between the commit and its switch) are embedded again with M, in place.

``--rollback M`` is the same move towards the models the kept vectors hold (only chunks written since are
embedded), and ``--drop-old`` deletes the kept vectors. M's vectors must fit the table's fixed length.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable

import numpy as np

from vector_bridge.cutover import Cutover, switch_with_retries
from vector_bridge.embeddings import EmbeddingsClient
from vector_bridge.migrate import CATCH_UP_PASSES, Migration, MigrationError, StoreMigration
from vector_bridge.pgvector_store import TABLE, PgvectorClient, PgvectorCollection, Table, vector_literal
from vector_bridge.shadow import copy_chunks, fingerprints, sync_copy
from vector_bridge.store import describe

SIDE = "vector_bridge_model_chunk"


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
    """The table, checked to hold ``model``'s vectors, and the side table beside it."""
    table = client.table
    if table is None:
        raise MigrationError(f"{TABLE} does not exist yet: Open WebUI has stored nothing in pgvector")
    [probe] = embeddings.embed(model, ["model check"], "document")
    if len(probe) > table.dimension:
        raise MigrationError(f"{model} gives {len(probe)}-dimension vectors and {TABLE} holds "
                             f"{table.dimension}; Open WebUI would cut them. Move the store into a table sized for "
                             "it (PGVECTOR_INITIALIZE_MAX_VECTOR_LENGTH) or pick a model that fits")
    kind = "halfvec" if table.halfvec else "vector"
    with client.store._db.transaction():
        client.store._db.execute(
            f"CREATE TABLE IF NOT EXISTS {SIDE} (model text NOT NULL, id text NOT NULL, collection_name text NOT NULL, "
            f"text text, vmetadata jsonb, vector {kind}({table.dimension}), PRIMARY KEY (model, id))")
        client.store._db.execute(f"CREATE INDEX IF NOT EXISTS {SIDE}_collection ON {SIDE} (model, collection_name)")
    return table


def models_of(collection: PgvectorCollection, default_model: str) -> Counter[str]:
    info = describe(collection)
    return Counter(info.models or {default_model: info.count})


def kept_models(client: PgvectorClient, name: str, model: str) -> list[str]:
    """The models whose vectors a migration kept for this collection (its old ones), other than ``model``."""
    rows = client.store._db.execute(f"SELECT DISTINCT model FROM {SIDE} WHERE collection_name = %s AND model <> %s",
                                    (name, model)).fetchall()
    client.store._db.commit()
    return sorted(row[0] for row in rows)


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
    _settle(client, embeddings, model, [n for n in names if not only or n in only], batch)
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
            from_models[name] = next(m for m, _ in models.most_common() if m != model)
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
        _drop_kept(client, model, result, only)
    return result


def roll_back_pgvector(client: PgvectorClient, embeddings: EmbeddingsClient, model: str, *,
                       switch: Callable[[str], None] | None, batch: int = 128,
                       progress: bool = False) -> StoreMigration:
    """The collections migrated to ``model`` back on the models their kept vectors hold."""
    prepare(client, embeddings, model)
    back: dict[str, list[str]] = {}
    for name in sorted(client.store.collections()):
        kept = kept_models(client, name, model)
        if len(kept) > 1:
            raise MigrationError(f"{name}: old vectors of several models are kept ({', '.join(kept)}); roll back by "
                                 "hand with `migrate --to MODEL --collection NAME`")
        if kept:
            back.setdefault(kept[0], []).append(name)
    if not back:
        raise MigrationError(f"no old vectors are kept for a migration to {model!r}: nothing to roll back "
                             "(they are gone after --drop-old)")
    previous = max(back, key=lambda m: len(back[m]))
    result = StoreMigration(previous)
    for old_model, names in sorted(back.items()):
        done = migrate_pgvector(client, embeddings, old_model, default_model=model, only=names, batch=batch,
                                switch=switch if old_model == previous else None, progress=progress)
        for migration in done.collections:
            migration.outcome = "rolled back" if migration.outcome == "migrated" else migration.outcome
        result.collections += done.collections
        result.cutover = done.cutover if old_model == previous else result.cutover
    result.openwebui = f"switched back to {previous}" if switch else "not switched"
    return result


def _cut_over(client: PgvectorClient, embeddings: EmbeddingsClient, model: str, pending: dict[str, str],
              switch: Callable[[], None], batch: int) -> Cutover:
    """One transaction for every collection, then Open WebUI's switch, then what it wrote in between.

    No table lock: Open WebUI keeps reading (the old vectors, until the commit) and writing. A chunk takes
    its new vector only where its text and metadata are still those the vector was made from, so a chunk
    Open WebUI wrote or changed after the last catch-up keeps its old-model vector and record until it is
    settled, right after the switch."""
    caught_up = sum(sync_copy(PgvectorCollection(client, name), SideCopy(client, name, model), embeddings, model,
                              batch=batch).embedded for name in pending)
    db, names = client.store._db, sorted(pending)
    started, started_at = time.perf_counter(), time.time()
    with db.transaction():
        for name in names:  # the old vectors, kept for a rollback under the model they came from
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
    committed = time.perf_counter()
    switch_with_retries(switch)
    switched = time.perf_counter()
    settled = _settle(client, embeddings, model, names, batch)
    with db.transaction():  # M's copies are live now: the side table keeps only old vectors
        db.execute(f"DELETE FROM {SIDE} WHERE model = %s AND collection_name = ANY(%s)", (model, names))
    return Cutover(len(names), round(switched - committed, 4), round(committed - started, 4),
                   round(switched - committed, 4), caught_up, settled, started_at)


def _settle(client: PgvectorClient, embeddings: EmbeddingsClient, model: str, names: list[str], batch: int) -> int:
    """Chunks Open WebUI wrote with its previous model into collections already moved to ``model`` (between a
    cutover's commit and its switch): embedded again with ``model`` in place."""
    fixed = 0
    for name in names:
        if not kept_models(client, name, model):
            continue  # never moved to a model other than its own: nothing can be stale
        live = PgvectorCollection(client, name)
        if set(models_of(live, model)) == {model}:
            continue
        stale = [chunk_id for chunk_id, print_ in fingerprints(live, model).items() if print_ == "stale"]
        fixed += copy_chunks(live, live, stale, embeddings, model, batch=batch)
    return fixed


def _drop_kept(client: PgvectorClient, model: str, result: StoreMigration, only: list[str] | None) -> None:
    for name in sorted(client.store.collections()):
        if (only and name not in only) or not kept_models(client, name, model):
            continue
        with client.store._db.transaction():
            client.store._db.execute(f"DELETE FROM {SIDE} WHERE collection_name = %s AND model <> %s", (name, model))
        result.collections.append(Migration(name, "already", detail="old vectors dropped"))


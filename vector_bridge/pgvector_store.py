"""Open WebUI's pgvector store, read and written in Open WebUI's own layout.

Open WebUI (``VECTOR_DB=pgvector``) keeps every chunk in one table, ``document_chunk(id text primary key,
vector vector(N) | halfvec(N), collection_name text, text text, vmetadata jsonb)``: a "collection" is a
``collection_name`` value, ids are unique across the whole table, and vectors are zero-padded or cut to
the N the table was created with. This module writes exactly that, so Open WebUI reads what we write.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from vector_bridge.store import StoreError

TABLE = "document_chunk"
# What `migrate --to-store` wrote (id, fingerprint, the table's oid), beside Open WebUI's table: a later run
# changes or deletes only rows still as it wrote them, so once Open WebUI runs on pgvector nothing of its own
# is undone. Records of a table since dropped and made again describe rows that are gone: the oid tells them.
MOVES = "vector_bridge_moved_chunk"
STORE_ID = "vector_bridge_store"  # this database's id as a source of moves (one row)
_TABLE_OID = f"to_regclass('{TABLE}')::oid"
# The names Open WebUI gives its indexes: it creates them only where they do not exist yet.
VECTOR_INDEX = "idx_document_chunk_vector"
COLLECTION_INDEX = "idx_document_chunk_collection_name"
HALFVEC_ABOVE = 2000  # pgvector indexes `vector` up to 2,000 dimensions, `halfvec` up to 4,000
WRITER_LOCK = 0x76656374_6272  # an advisory lock key of our own ("vectbr")

log = logging.getLogger(__name__)


class PgvectorError(StoreError):
    pass


class DoesNotFit(PgvectorError):
    """Vectors longer than the table's fixed length: Open WebUI would cut them, so they are refused."""


class StoreBusy(PgvectorError):
    """Another vector-bridge command is writing the store."""


class IdTaken(PgvectorError):
    """A chunk id another collection already uses: ids are a primary key across the whole table."""


@dataclass(frozen=True)
class Table:
    dimension: int
    halfvec: bool


@dataclass(frozen=True)
class VectorIndex:
    name: str
    method: str  # hnsw, ivfflat, or another access method
    definition: str  # CREATE INDEX ... as PostgreSQL prints it
    valid: bool  # false: a build was interrupted, and PostgreSQL never uses it
    lists: int | None  # ivfflat's

    @property
    def cosine(self) -> bool:
        """Open WebUI orders by cosine distance (<=>): an index of another operator class is never used."""
        return "_cosine_ops" in self.definition


@dataclass
class Chunk:
    id: str
    text: str
    vector: np.ndarray
    metadata: dict[str, Any]


class PgvectorStore:
    def __init__(self, url: str) -> None:
        import psycopg

        try:
            # Never prepared on the server: after five runs psycopg 3 would, and PostgreSQL may then pick a
            # generic plan that skips the HNSW index and compares every chunk (bench/store.py measured 63 ms
            # of CPU a query at 10k chunks instead of 1 ms). Open WebUI's psycopg2 never prepares either.
            self._db = psycopg.connect(url, connect_timeout=10, prepare_threshold=None)
        except psycopg.Error as error:
            # psycopg's message may quote the URL's password: say only what failed.
            raise PgvectorError(f"cannot connect to PostgreSQL ({type(error).__name__})") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PgvectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def hold_writer_lock(self) -> None:
        """Be the one vector-bridge command writing this store (migrate, restore, a move into it) until this
        connection ends: two interleaved would each undo the other's work. PostgreSQL releases the lock when
        the connection goes, a killed process included."""
        held = self._db.execute("SELECT pg_try_advisory_lock(%s)", (WRITER_LOCK,)).fetchone()[0]
        self._db.commit()
        if not held:
            raise StoreBusy("another vector-bridge command (migrate, restore or a store move) is writing this "
                            "store; run this one when it has finished")

    def table(self) -> Table | None:
        """The chunk table's vector column, or None when Open WebUI (or we) have not created it yet."""
        row = self._db.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attname = 'vector' AND NOT attisdropped", (TABLE,)).fetchone()
        self._db.commit()
        if row is None:
            return None
        found = re.fullmatch(r"(vector|halfvec)\((\d+)\)", row[0])
        if found is None:
            raise PgvectorError(f"{TABLE}.vector is {row[0]}, not a sized vector or halfvec column")
        return Table(int(found[2]), found[1] == "halfvec")

    def create_table(self, dimension: int) -> Table:
        """The table as Open WebUI creates it for ``dimension`` (its first start then finds it and checks N)."""
        halfvec = dimension > HALFVEC_ABOVE
        kind = "halfvec" if halfvec else "vector"
        with self._db.transaction():
            self._db.execute("CREATE EXTENSION IF NOT EXISTS vector")
            self._db.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id text PRIMARY KEY, vector {kind}({dimension}), "
                             "collection_name text NOT NULL, text text, vmetadata jsonb)")
            self._db.execute(f"CREATE INDEX IF NOT EXISTS {COLLECTION_INDEX} ON {TABLE} (collection_name)")
        return Table(dimension, halfvec)

    def prepare_moves(self) -> None:
        """The record table, rid of records about an earlier ``document_chunk`` (dropped and made again)."""
        with self._db.transaction():
            self._db.execute(f"CREATE TABLE IF NOT EXISTS {MOVES} (id text PRIMARY KEY, collection_name text NOT NULL, "
                             "fingerprint text NOT NULL, table_oid oid, source text)")
            self._db.execute(f"ALTER TABLE {MOVES} ADD COLUMN IF NOT EXISTS table_oid oid")
            self._db.execute(f"ALTER TABLE {MOVES} ADD COLUMN IF NOT EXISTS source text")
            # Thousands of collections (Open WebUI keeps one per file): each run reads the record by collection.
            self._db.execute(f"CREATE INDEX IF NOT EXISTS {MOVES}_collection ON {MOVES} (collection_name)")
            # Records from before the oid was kept are about the table there is now: moves ran on it since.
            self._db.execute(f"UPDATE {MOVES} SET table_oid = {_TABLE_OID} WHERE table_oid IS NULL")
            stale = self._db.execute(f"DELETE FROM {MOVES} WHERE table_oid IS DISTINCT FROM {_TABLE_OID}").rowcount
        if stale:
            log.warning("forgot the records of moves into an earlier document_chunk table", extra={"records": stale})

    def create_vector_index(self, table: Table) -> None:
        """HNSW with Open WebUI's name and defaults (m 16, ef_construction 64): built once after a bulk copy,
        which is faster than growing it row by row."""
        opclass = "halfvec_cosine_ops" if table.halfvec else "vector_cosine_ops"
        with self._db.transaction():
            self._db.execute(f"CREATE INDEX IF NOT EXISTS {VECTOR_INDEX} ON {TABLE} USING hnsw (vector {opclass}) "
                             "WITH (m = 16, ef_construction = 64)")

    def vector_indexes(self) -> list[VectorIndex]:
        """The indexes on the chunk table's vector column (whatever their names: Open WebUI's, or made by hand)."""
        rows = self._db.execute(
            "SELECT c.relname, am.amname, pg_get_indexdef(i.indexrelid), i.indisvalid, c.reloptions "
            "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = to_regclass(%s) AND a.attname = 'vector' ORDER BY c.relname", (TABLE,)).fetchall()
        self._db.commit()
        found = []
        for name, method, definition, valid, options in rows:
            settings = dict(option.split("=", 1) for option in options or [])
            found.append(VectorIndex(name, method, definition, bool(valid),
                                     int(settings["lists"]) if "lists" in settings else None))
        return found

    def count(self) -> int:
        row = self._db.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
        self._db.commit()
        return int(row[0])

    def collections(self) -> dict[str, int]:
        rows = self._db.execute(f"SELECT collection_name, count(*) FROM {TABLE} GROUP BY collection_name").fetchall()
        self._db.commit()
        return dict(rows)

    def ids(self, collection: str) -> list[str]:
        rows = self._db.execute(f"SELECT id FROM {TABLE} WHERE collection_name = %s ORDER BY id", (collection,)).fetchall()
        self._db.commit()
        return [row[0] for row in rows]

    def recorded_configs(self) -> dict[str, dict[str | None, int]]:
        """Per collection, how many chunks carry each ``embedding_config`` string (None: none recorded)."""
        rows = self._db.execute(f"SELECT collection_name, vmetadata->>'embedding_config', count(*) FROM {TABLE} "
                                "GROUP BY 1, 2").fetchall()
        self._db.commit()
        found: dict[str, dict[str | None, int]] = {}
        for collection, config, count in rows:
            found.setdefault(collection, {})[config] = int(count)
        return found

    def vectors(self) -> Iterator[tuple[dict[str, Any] | None, np.ndarray]]:
        """Every chunk's metadata and vector, through a server-side cursor."""
        with self._db.transaction(), self._db.cursor(name="vectors") as cursor:
            cursor.itersize = 1000
            cursor.execute(f"SELECT vmetadata, vector::text FROM {TABLE}")
            for metadata, vector in cursor:
                yield metadata, parse_vector(vector)

    def fingerprints(self, collection: str) -> dict[str, str]:
        """Each chunk's fingerprint, read through a server-side cursor: memory holds ids and hashes only."""
        found: dict[str, str] = {}
        with self._db.transaction(), self._db.cursor(name="fingerprints") as cursor:
            cursor.itersize = 1000
            cursor.execute(f"SELECT id, text, vmetadata, vector::text FROM {TABLE} WHERE collection_name = %s",
                           (collection,))
            for chunk_id, text, metadata, vector in cursor:
                found[chunk_id] = chunk_fingerprint(text, metadata, parse_vector(vector))
        return found

    def written(self, collection: str) -> dict[str, tuple[str, str | None]]:
        """What earlier moves wrote into this collection of this very table: id -> (the fingerprint written,
        the store it came from)."""
        if not self._has_moves():
            return {}
        rows = self._db.execute(f"SELECT id, fingerprint, source FROM {MOVES} WHERE collection_name = %s "
                                f"AND table_oid = {_TABLE_OID}", (collection,)).fetchall()
        self._db.commit()
        return {chunk_id: (print_, source) for chunk_id, print_, source in rows}

    def _has_moves(self) -> bool:
        found = self._db.execute("SELECT to_regclass(%s)", (MOVES,)).fetchone()[0] is not None
        self._db.commit()
        return found

    def moved_collections(self) -> dict[str, set[str | None]]:
        """The collections earlier moves wrote into, each with the sources its rows came from."""
        if not self._has_moves():
            return {}
        rows = self._db.execute(f"SELECT DISTINCT collection_name, source FROM {MOVES} "
                                f"WHERE table_oid = {_TABLE_OID}").fetchall()
        self._db.commit()
        found: dict[str, set[str | None]] = {}
        for collection, source in rows:
            found.setdefault(collection, set()).add(source)
        return found

    def write(self, collection: str, chunks: list[Chunk], table: Table, source: str | None) -> None:
        """Insert or replace ``chunks`` in one transaction, recorded as a move's from ``source``: all of them
        or none."""
        with self._db.transaction():
            self.upsert(collection, chunks, table)
            # The record of what was written commits with the rows themselves.
            self._record(collection, [(chunk.id, chunk_fingerprint(chunk.text, chunk.metadata,
                                                                   as_stored(chunk.vector, table)))
                                      for chunk in chunks], source)

    def take_over(self, collection: str, fingerprints: dict[str, str], source: str | None) -> None:
        """Record these rows as moved from ``source``, and other stores' records of the collection as from it
        too (chunks deleted here since stay deleted), in one transaction: a run killed after this goes on from
        them, not from a collection nobody answers for."""
        with self._db.transaction():
            self._db.execute(f"UPDATE {MOVES} SET source = %s WHERE collection_name = %s AND source IS DISTINCT "
                             "FROM %s", (source, collection, source))
            self._record(collection, list(fingerprints.items()), source)

    def forget(self, collection: str) -> None:
        """Drop the records of what moves wrote into ``collection`` (they describe rows no longer there)."""
        with self._db.transaction():
            self._db.execute(f"DELETE FROM {MOVES} WHERE collection_name = %s", (collection,))

    def _record(self, collection: str, prints: list[tuple[str, str]], source: str | None) -> None:
        with self._db.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {MOVES} (id, collection_name, fingerprint, table_oid, source) "
                f"VALUES (%s, %s, %s, {_TABLE_OID}, %s) ON CONFLICT (id) DO UPDATE SET "
                "collection_name = EXCLUDED.collection_name, fingerprint = EXCLUDED.fingerprint, "
                "table_oid = EXCLUDED.table_oid, source = EXCLUDED.source",
                [(chunk_id, collection, print_, source) for chunk_id, print_ in prints])

    def identity(self) -> str:
        """This table among all stores, as a move's record names where a chunk came from: an id this database
        keeps for it (made once, in a table of ours beside Open WebUI's), and the table's oid, so a table
        dropped and made again is another source. A copy of the database (a restored dump) keeps the id."""
        import psycopg

        try:
            with self._db.transaction():
                if self._db.execute("SELECT to_regclass(%s)", (STORE_ID,)).fetchone()[0] is None:
                    self._db.execute(f"CREATE TABLE IF NOT EXISTS {STORE_ID} (one boolean PRIMARY KEY DEFAULT true "
                                     "CHECK (one), store_id text NOT NULL)")
                    self._db.execute(f"INSERT INTO {STORE_ID} (store_id) VALUES (%s) ON CONFLICT DO NOTHING",
                                     (uuid.uuid4().hex,))
                store_id, table = self._db.execute(f"SELECT store_id, {_TABLE_OID} FROM {STORE_ID}").fetchone()
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction):
            raise PgvectorError(f"this role cannot create the one-row table {STORE_ID} that records this database's "
                                "id as a source of moves: run the command once as the owner of Open WebUI's "
                                "tables") from None
        return f"pgvector:{store_id}/{table}"

    def upsert(self, collection: str, chunks: list[Chunk], table: Table) -> None:
        """Insert or replace ``chunks`` inside the caller's transaction (one of its own when there is none)."""
        from psycopg.types.json import Jsonb

        too_long = next((chunk for chunk in chunks if len(trimmed(chunk.vector)) > table.dimension), None)
        if too_long is not None:
            raise DoesNotFit(f"chunk {too_long.id} of {collection} has a {len(trimmed(too_long.vector))}-dimension "
                             f"vector; {TABLE} holds {table.dimension}, and Open WebUI would cut it")
        ids = [chunk.id for chunk in chunks]
        with self._db.transaction():
            taken = self._db.execute(f"SELECT id, collection_name FROM {TABLE} WHERE id = ANY(%s) "
                                     "AND collection_name <> %s LIMIT 1", (ids, collection)).fetchone()
            if taken is not None:
                raise IdTaken(f"chunk id {taken[0]} of {collection} is already used by {taken[1]}: ids are "
                              "unique across pgvector's one table")
            with self._db.cursor() as cursor:
                # A row another collection took after the check above is not overwritten: it is not counted,
                # and the whole transaction is refused below.
                cursor.executemany(
                    f"INSERT INTO {TABLE} (id, vector, collection_name, text, vmetadata) VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (id) DO UPDATE SET vector = EXCLUDED.vector, text = EXCLUDED.text, "
                    f"vmetadata = EXCLUDED.vmetadata WHERE {TABLE}.collection_name = EXCLUDED.collection_name",
                    [(chunk.id, vector_literal(chunk.vector, table.dimension), collection, without_nul(chunk.text),
                      Jsonb(without_nul(chunk.metadata))) for chunk in chunks])
                if cursor.rowcount != len(chunks):
                    raise IdTaken(f"{len(chunks) - cursor.rowcount} chunk ids of {collection} were taken by another "
                                  "collection meanwhile: ids are unique across pgvector's one table")

    def delete(self, collection: str, ids: list[str]) -> None:
        with self._db.transaction():
            self._db.execute(f"DELETE FROM {TABLE} WHERE collection_name = %s AND id = ANY(%s)", (collection, ids))
            self._db.execute(f"DELETE FROM {MOVES} WHERE collection_name = %s AND id = ANY(%s)", (collection, ids))

    def read(self, collection: str, ids: list[str] | None = None) -> Iterator[Chunk]:
        query = f"SELECT id, text, vector::text, vmetadata FROM {TABLE} WHERE collection_name = %s"
        arguments: tuple[Any, ...] = (collection,)
        if ids is not None:
            query, arguments = query + " AND id = ANY(%s)", (collection, ids)
        rows = self._db.execute(query + " ORDER BY id", arguments).fetchall()
        self._db.commit()
        for chunk_id, text, vector, metadata in rows:
            yield Chunk(chunk_id, text or "", parse_vector(vector), metadata or {})


def chunk_fingerprint(text: str | None, metadata: dict[str, Any] | None, vector: np.ndarray) -> str:
    """Text, the whole metadata and the vector's float32 values (trailing padding aside): a chunk re-embedded
    with the same model and metadata (a changed prefix, say) still counts as changed."""
    import hashlib

    values = trimmed(vector)
    blob = json.dumps([without_nul(text or ""), metadata or {}], sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode() + values.tobytes()).hexdigest()


def trimmed(vector: np.ndarray) -> np.ndarray:
    """The vector without the zeros pgvector's fixed length padded it with."""
    values = np.asarray(vector, dtype=np.float32)
    nonzero = np.flatnonzero(values)
    return values[: nonzero[-1] + 1] if len(nonzero) else values[:0]


def as_stored(vector: np.ndarray, table: Table) -> np.ndarray:
    """The values pgvector will hold: halfvec keeps half precision."""
    values = np.asarray(vector, dtype=np.float32)
    return values.astype(np.float16).astype(np.float32) if table.halfvec else values


def without_nul(value: Any) -> Any:
    """PostgreSQL text and jsonb cannot hold NUL characters; Open WebUI drops them too."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {without_nul(key): without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nul(item) for item in value]
    return value


def vector_literal(vector: np.ndarray, dimension: int) -> str:
    """pgvector's text form, zero-padded or cut to the table's dimension as Open WebUI does. float32 values
    are written with every digit they need, so the stored value is the same float32."""
    values = np.asarray(vector, dtype=np.float32)[:dimension]
    if len(values) < dimension:
        values = np.concatenate([values, np.zeros(dimension - len(values), dtype=np.float32)])
    return "[" + ",".join(repr(float(value)) for value in values) + "]"


def parse_vector(text: str) -> np.ndarray:
    return np.array(text.strip("[]").split(","), dtype=np.float32) if text else np.zeros(0, dtype=np.float32)


class NotOnPgvector(PgvectorError):
    """A Chroma operation with no pgvector counterpart (renames, empty collections): the tools that need one
    take another way on pgvector."""


class PgvectorClient:
    """The part of chromadb's client API that search, the chat server, doctor and backup read with, over
    Open WebUI's pgvector table: each ``collection_name`` is a collection. Chunks are written with upsert and
    delete; what has no pgvector counterpart (renames, empty collections) raises NotOnPgvector."""

    def __init__(self, url: str) -> None:
        self.store = PgvectorStore(url)
        self._table = self.store.table()
        self._scan_on()

    def _scan_on(self) -> None:
        """With a collection filter, HNSW alone may find fewer than k rows (it filters after its ef_search
        candidates); pgvector 0.8's iterative scan keeps looking, as Open WebUI's PGVECTOR_ITERATIVE_SCAN does.
        Older pgvector lacks the setting: the query then finds what the index gives."""
        import psycopg

        try:
            self.store._db.execute("SET hnsw.iterative_scan = relaxed_order")
            self.store._db.commit()
        except psycopg.Error:
            self.store._db.rollback()

    def heartbeat(self) -> int:
        return 0

    def get_version(self) -> str:
        row = self.store._db.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        self.store._db.commit()
        return f"pgvector {row[0] if row else 'absent'}"

    @property
    def table(self) -> Table | None:
        return self._table

    def refresh_table(self) -> None:
        """Read the table's shape again: after it was created, by Open WebUI or by us."""
        self._table = self.store.table()

    def list_collections(self) -> list[PgvectorCollection]:
        if self._table is None:
            return []
        return [PgvectorCollection(self, name) for name in sorted(self.store.collections())]

    def get_collection(self, name: str) -> PgvectorCollection:
        if self._table is None or not self._count(name):
            # Open WebUI has no empty collections on pgvector: a name with no rows does not exist.
            raise ValueError(f"Collection {name} does not exist.")
        return PgvectorCollection(self, name)

    def _count(self, name: str) -> int:
        row = self.store._db.execute(f"SELECT count(*) FROM {TABLE} WHERE collection_name = %s", (name,)).fetchone()
        self.store._db.commit()
        return int(row[0])

    def __getattr__(self, operation: str) -> Any:
        if operation in ("create_collection", "get_or_create_collection", "delete_collection"):
            raise NotOnPgvector(f"{operation}: pgvector has no empty collections; a collection is its chunks")
        raise AttributeError(operation)


class PgvectorCollection:
    def __init__(self, client: PgvectorClient, name: str) -> None:
        self._client = client
        self._db = client.store._db
        self.name = name
        self.id = name
        self.metadata: dict[str, Any] | None = None

    def count(self) -> int:
        return self._client._count(self.name)

    def get(self, ids: list[str] | None = None, limit: int | None = None, offset: int | None = None,
            include: list[str] | None = None, **unsupported: Any) -> dict[str, Any]:
        if unsupported:
            raise NotOnPgvector(f"filters ({', '.join(unsupported)}) are not available on pgvector yet")
        include = ["documents", "metadatas"] if include is None else include
        query = f"SELECT id, text, vmetadata, vector::text FROM {TABLE} WHERE collection_name = %s"
        arguments: list[Any] = [self.name]
        if ids is not None:
            query += " AND id = ANY(%s)"
            arguments.append(list(ids))
        query += " ORDER BY id"
        if limit is not None:
            query += " LIMIT %s"
            arguments.append(limit)
        if offset:
            query += " OFFSET %s"
            arguments.append(offset)
        rows = self._db.execute(query, arguments).fetchall()
        self._db.commit()
        return {"ids": [row[0] for row in rows],
                "documents": [row[1] for row in rows] if "documents" in include else None,
                "metadatas": [row[2] or {} for row in rows] if "metadatas" in include else None,
                "embeddings": np.stack([parse_vector(row[3]) for row in rows]) if "embeddings" in include and rows
                else ([] if "embeddings" in include else None)}

    def peek(self, limit: int = 10) -> dict[str, Any]:
        return self.get(limit=limit, include=["documents", "metadatas", "embeddings"])

    def query(self, query_embeddings: list[Any], n_results: int = 10, include: list[str] | None = None,
              **unsupported: Any) -> dict[str, Any]:
        """Nearest chunks by cosine distance, as Open WebUI's own pgvector search orders them."""
        if unsupported:
            raise NotOnPgvector(f"filters ({', '.join(unsupported)}) are not available on pgvector yet")
        table = self._client.table
        assert table is not None
        kind = "halfvec" if table.halfvec else "vector"
        answer: dict[str, list[Any]] = {"ids": [], "documents": [], "metadatas": [], "distances": []}
        for vector in query_embeddings:
            rows = self._db.execute(
                f"SELECT id, text, vmetadata, vector <=> %s::{kind} AS distance FROM {TABLE} "
                "WHERE collection_name = %s ORDER BY distance LIMIT %s",
                (vector_literal(np.asarray(vector), table.dimension), self.name, n_results)).fetchall()
            self._db.commit()
            rows.sort(key=lambda row: row[3])  # relaxed_order may return near-ties out of order
            answer["ids"].append([row[0] for row in rows])
            answer["documents"].append([row[1] for row in rows])
            answer["metadatas"].append([row[2] or {} for row in rows])
            answer["distances"].append([float(row[3]) for row in rows])
        return answer

    def upsert(self, ids: list[str], embeddings: Any, documents: list[str] | None = None,
               metadatas: list[dict[str, Any] | None] | None = None) -> None:
        """Chroma's upsert, in one transaction: ids another collection holds are refused (IdTaken)."""
        table = self._client.table
        if table is None:
            raise PgvectorError(f"{TABLE} does not exist yet: nothing can be written before Open WebUI creates it")
        documents = documents if documents is not None else [""] * len(ids)
        metadatas = metadatas if metadatas is not None else [None] * len(ids)
        self._client.store.upsert(self.name, [
            Chunk(chunk_id, document or "", np.asarray(vector, dtype=np.float32), dict(metadata or {}))
            for chunk_id, vector, document, metadata in zip(ids, embeddings, documents, metadatas)], table)

    def delete(self, ids: list[str]) -> None:
        """These chunks of this collection, in one transaction. A move's record of them stays, so a later
        ``migrate --to-store`` run does not bring back what was deleted here."""
        with self._db.transaction():
            self._db.execute(f"DELETE FROM {TABLE} WHERE collection_name = %s AND id = ANY(%s)", (self.name, list(ids)))

    def __getattr__(self, operation: str) -> Any:
        if operation in ("add", "update", "modify"):
            raise NotOnPgvector(f"{operation} on a collection is not available on pgvector")
        raise AttributeError(operation)

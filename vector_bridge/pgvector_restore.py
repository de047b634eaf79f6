"""Restore a backup file into Open WebUI's pgvector table, each collection in one transaction.

PostgreSQL gives what Chroma cannot: a collection's old rows are deleted and the file's rows written in one
transaction, checked to hold exactly the file's ids before it commits. So whoever reads the table (Open WebUI,
search, the chat server) sees each collection with its old rows or with all of the file's, never a mix, and
a run killed anywhere leaves nothing to clean up: PostgreSQL rolls back the open transaction, and running the
same command again restores what did not commit. Open WebUI's writes to a collection wait for its restore to
commit. A restore that finds an id another collection uses stops with that collection untouched.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vector_bridge.backup_file import PAGE, BackupError, CollectionHeader, Summary, decode_vector, read_contents, records
from vector_bridge.pgvector_store import TABLE, Chunk, PgvectorClient, PgvectorStore, Table
from vector_bridge.store import TOOL_COLLECTIONS


def restore_into_pgvector(client: PgvectorClient, path: Path, *, replace: bool = False,
                          progress: bool = True) -> Summary:
    """Every collection of the backup; existing non-empty ones are kept unless ``replace``."""
    started = time.perf_counter()
    contents = read_contents(path)  # a damaged file is refused before anything is written
    # A backup of Chroma may hold the tools' own collections: they describe that store, not Open WebUI's data.
    contents = [header for header in contents if header.name not in TOOL_COLLECTIONS]
    store = client.store
    store.hold_writer_lock()
    existing = store.collections() if client.table else {}
    clashes = [header.name for header in contents if existing.get(header.name)]
    if clashes and not replace:
        raise BackupError(f"these collections exist and hold data: {', '.join(clashes)}; "
                          "restore into an empty store or pass --replace")
    table = client.table or _create_table(client, path)
    by_name = {header.name: header for header in contents}
    with tqdm(total=sum(h.count for h in contents), unit="chunk", desc="restore", disable=not progress) as bar:
        stream = records(path)
        for record in stream:
            if "collection" in record and record["collection"] in by_name:
                _restore_collection(store, table, by_name[record["collection"]], stream, bar)
    store.create_vector_index(table)  # after the rows when the table is new: one build, not one per row
    return Summary(len(contents), sum(h.count for h in contents), path.stat().st_size,
                   time.perf_counter() - started)


def _restore_collection(store: PgvectorStore, table: Table, header: CollectionHeader,
                        stream: Iterator[dict[str, Any]], bar: tqdm) -> None:
    db = store._db
    with db.transaction():
        db.execute(f"DELETE FROM {TABLE} WHERE collection_name = %s", (header.name,))
        page: list[Chunk] = []
        for record in stream:
            if "end_collection" in record:
                break
            page.append(Chunk(record["id"], record.get("document") or "", decode_vector(record["embedding"]),
                              dict(record.get("metadata") or {})))
            if len(page) >= PAGE:
                store.upsert(header.name, page, table)
                bar.update(len(page))
                page = []
        if page:
            store.upsert(header.name, page, table)
            bar.update(len(page))
        held = db.execute(f"SELECT id FROM {TABLE} WHERE collection_name = %s", (header.name,)).fetchall()
        if sorted(row[0] for row in held) != sorted(header.ids):
            # Raising inside the block rolls the whole collection back to its old rows.
            raise BackupError(f"collection {header.name}: {len(held)} chunks after restore, the backup holds "
                              f"{header.count}; the old data is untouched")


def _create_table(client: PgvectorClient, path: Path) -> Table:
    """No table yet (Open WebUI never started on this database): one sized for the backup's vectors, which
    is what `openwebui-env --store pgvector` gives Open WebUI when it serves the same model."""
    first, current = None, None
    for record in records(path):
        current = record.get("collection", current)
        if "embedding" in record and current not in TOOL_COLLECTIONS:
            first = record
            break
    if first is None:
        raise BackupError(f"{path}: holds no chunk, and pgvector has no empty collections: nothing to restore")
    table = client.store.create_table(len(decode_vector(first["embedding"])))
    client.refresh_table()
    return table

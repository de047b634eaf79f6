"""Back up every collection of the shared store in one portable file (format: backup_file.py).

Open WebUI may write while a backup runs. Each collection's full id list is taken first and the
chunks are then fetched by id, page by page, so the file holds one consistent set of ids; a chunk
deleted in between makes the backup fail loudly (never a file silently missing chunks). Chunks
added meanwhile wait for the next backup.

Embeddings travel as the exact float32 bytes Chroma returns. Chroma itself rounds each vector it
stores in a cosine collection (by one unit in the last place, measured: at most 6e-8 on unit-scale
values), so restored vectors match to that rounding, and every id, document and metadata exactly. A backup is
written to ``FILE.partial`` (mode 0600) and renamed when complete: a killed backup never replaces a good
file, and a restore refuses a file without its closing line.

On pgvector every vector is padded with zeros to the table's fixed length; a backup holds each collection's
vectors in the length of the model that made them (``lengths``, from move_pgvector.real_dimensions), so the
file restores into Chroma as well as into a pgvector table of any length that fits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from tqdm import tqdm

from vector_bridge.backup_file import (FORMAT, PAGE, VERSION, BackupError, Summary, encode_vector, fsync_folder, line,
                                       private_gzip)
from vector_bridge.restore import restore
from vector_bridge.store import TOOL_COLLECTIONS

__all__ = ["BackupError", "Summary", "backup", "restore"]


class CollectionChanged(BackupError):
    """Chunks disappeared from a collection while it was being backed up."""


def _chunks(collection: Collection, ids: list[str], length: int | None = None) -> Iterator[dict[str, Any]]:
    for start in range(0, len(ids), PAGE):
        wanted = ids[start:start + PAGE]
        page = collection.get(ids=wanted, include=["documents", "metadatas", "embeddings"])
        if len(page["ids"]) != len(wanted):
            missing = len(set(wanted) - set(page["ids"]))
            raise CollectionChanged(f"collection {collection.name}: {missing} chunks were deleted while it was "
                                    "being backed up; run the backup again (nothing was written)")
        for i, chunk_id in enumerate(page["ids"]):
            vector = page["embeddings"][i]
            if length is not None:
                if np.any(np.asarray(vector)[length:]):
                    raise BackupError(f"collection {collection.name}: chunk {chunk_id} has values beyond the "
                                      f"{length} dimensions of the model it records: refusing to cut it")
                vector = vector[:length]
            yield {"id": chunk_id, "document": page["documents"][i], "metadata": page["metadatas"][i],
                   "embedding": encode_vector(vector)}


def backup(client: ClientAPI, path: Path, *, collections: list[str] | None = None, progress: bool = True,
           lengths: dict[str, int] | None = None) -> Summary:
    """Write the named collections (default: all) to ``path``, vectors cut to ``lengths`` where given."""
    started = time.perf_counter()
    # The tools' own collections (a move's record, this store's id as a source) describe this very store: a
    # copy restored elsewhere must not pass for it.
    names = (sorted(c.name for c in client.list_collections() if c.name not in TOOL_COLLECTIONS)
             if collections is None else collections)
    targets = [client.get_collection(name) for name in names]
    partial = path.with_name(path.name + ".partial")
    written = 0
    try:
        with private_gzip(partial) as out, tqdm(unit="chunk", desc="backup", disable=not progress) as bar:
            out.write(line({"format": FORMAT, "version": VERSION, "chroma_version": client.get_version(),
                            "created": datetime.now(timezone.utc).isoformat()}))
            for collection in targets:
                ids = collection.get(include=[])["ids"]  # the set this backup promises, taken at once
                bar.total = (bar.total or 0) + len(ids)
                out.write(line({"collection": collection.name, "metadata": collection.metadata, "count": len(ids)}))
                seen = 0
                for chunk in _chunks(collection, ids, (lengths or {}).get(collection.name)):
                    out.write(line(chunk))
                    seen += 1
                    bar.update()
                if seen != len(ids):  # _chunks checks each page; this guards the sum
                    raise CollectionChanged(f"collection {collection.name}: wrote {seen} of {len(ids)} chunks")
                out.write(line({"end_collection": collection.name, "count": seen}))
                written += seen
            out.write(line({"end": True, "collections": len(targets), "chunks": written}))
        partial.replace(path)
        fsync_folder(path.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return Summary(len(targets), written, path.stat().st_size, time.perf_counter() - started)

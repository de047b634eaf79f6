"""Back up and restore every collection of the shared store in one portable file.

The file is gzip-compressed JSON Lines, read and written as a stream so memory stays bounded:

    {"format": "vector-bridge-backup", "version": 1, "chroma_version": ..., "created": ...}
    {"collection": NAME, "metadata": {...}, "count": N}
    {"id": ..., "document": ..., "metadata": {...}, "embedding": "<base64 little-endian float32>"}   x N
    {"end_collection": NAME, "count": N}
    ...
    {"end": true, "collections": K, "chunks": M}

Embeddings travel as the exact float32 bytes Chroma returns. Chroma itself rounds each vector it
stores in a cosine collection (by one unit in the last place, measured: at most 6e-8 on unit-scale
values), so restored vectors match to that rounding, and every id, document and metadata exactly. A backup is
written to ``FILE.partial`` and renamed when complete: a killed backup never replaces a good file,
and a restore refuses a file without its closing line.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from tqdm import tqdm

FORMAT = "vector-bridge-backup"
VERSION = 1
PAGE = 1000  # chunks read from or written to Chroma per request


class BackupError(RuntimeError):
    """A backup file that cannot be written, read or restored as asked."""


@dataclass
class Summary:
    collections: int
    chunks: int
    bytes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"collections": self.collections, "chunks": self.chunks, "bytes": self.bytes,
                "seconds": round(self.seconds, 2)}


def encode_vector(vector: Any) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


def _line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _chunks(collection: Collection) -> Iterator[dict[str, Any]]:
    offset = 0
    while True:
        page = collection.get(offset=offset, limit=PAGE, include=["documents", "metadatas", "embeddings"])
        if not page["ids"]:
            return
        for i, chunk_id in enumerate(page["ids"]):
            yield {"id": chunk_id, "document": page["documents"][i], "metadata": page["metadatas"][i],
                   "embedding": encode_vector(page["embeddings"][i])}
        offset += len(page["ids"])


def backup(client: ClientAPI, path: Path, *, collections: list[str] | None = None,
           progress: bool = True) -> Summary:
    """Write the named collections (default: all) to ``path``."""
    started = time.perf_counter()
    names = sorted(c.name for c in client.list_collections()) if collections is None else collections
    targets = [client.get_collection(name) for name in names]
    counts = {c.name: c.count() for c in targets}
    partial = path.with_name(path.name + ".partial")
    written = 0
    try:
        with gzip.open(partial, "wb") as out, tqdm(total=sum(counts.values()), unit="chunk", desc="backup",
                                                    disable=not progress) as bar:
            out.write(_line({"format": FORMAT, "version": VERSION, "chroma_version": client.get_version(),
                             "created": datetime.now(timezone.utc).isoformat()}))
            for collection in targets:
                out.write(_line({"collection": collection.name, "metadata": collection.metadata,
                                 "count": counts[collection.name]}))
                seen = 0
                for chunk in _chunks(collection):
                    out.write(_line(chunk))
                    seen += 1
                    bar.update()
                # Open WebUI may write while we read: record what was read, and say so.
                out.write(_line({"end_collection": collection.name, "count": seen}))
                written += seen
            out.write(_line({"end": True, "collections": len(targets), "chunks": written}))
            out.flush()
            os.fsync(out.fileobj.fileno())  # type: ignore[union-attr]
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return Summary(len(targets), written, path.stat().st_size, time.perf_counter() - started)


def _records(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as error:
                    raise BackupError(f"{path}: line {number} is not JSON ({error})") from None
    except (OSError, EOFError) as error:  # not gzip, or cut off mid-stream
        raise BackupError(f"{path}: unreadable or truncated ({error})") from None


@dataclass
class CollectionHeader:
    name: str
    metadata: dict[str, Any] | None
    count: int


def read_contents(path: Path) -> list[CollectionHeader]:
    """The collections a backup holds, after checking it is complete: a first pass that writes nothing."""
    records = _records(path)
    header = next(records, None)
    if not header or header.get("format") != FORMAT:
        raise BackupError(f"{path}: not a {FORMAT} file")
    if header.get("version") != VERSION:
        raise BackupError(f"{path}: format version {header.get('version')} (this tool reads {VERSION})")
    found: list[CollectionHeader] = []
    chunks = 0
    for record in records:
        if "collection" in record:
            found.append(CollectionHeader(record["collection"], record.get("metadata"), 0))
        elif "id" in record:
            found[-1].count += 1
            chunks += 1
        elif record.get("end"):
            if record.get("chunks") != chunks or record.get("collections") != len(found):
                raise BackupError(f"{path}: closing line says {record.get('chunks')} chunks, file has {chunks}")
            return found
    raise BackupError(f"{path}: truncated (no closing line); it was not written completely")


def restore(client: ClientAPI, path: Path, *, replace: bool = False, progress: bool = True) -> Summary:
    """Recreate every collection of the backup. Existing non-empty collections are kept unless ``replace``."""
    started = time.perf_counter()
    contents = read_contents(path)
    existing = {c.name: c for c in client.list_collections()}
    clashes = [h.name for h in contents if h.name in existing and existing[h.name].count() > 0]
    if clashes and not replace:
        raise BackupError(f"these collections exist and hold data: {', '.join(clashes)}; "
                          "restore into an empty store or pass --replace")
    total = sum(h.count for h in contents)
    collection: Collection | None = None
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        if batch:
            assert collection is not None
            collection.add(ids=[c["id"] for c in batch],
                           embeddings=np.stack([decode_vector(c["embedding"]) for c in batch]),
                           documents=[c["document"] for c in batch],
                           metadatas=[c["metadata"] for c in batch])  # type: ignore[arg-type]
            bar.update(len(batch))
            batch.clear()

    with tqdm(total=total, unit="chunk", desc="restore", disable=not progress) as bar:
        for record in _records(path):
            if "collection" in record:
                name = record["collection"]
                if name in existing:
                    client.delete_collection(name)
                collection = client.create_collection(name, metadata=record.get("metadata") or None)
            elif "id" in record:
                batch.append(record)
                if len(batch) >= PAGE:
                    flush()
            elif "end_collection" in record:
                flush()
                assert collection is not None
                if collection.count() != record["count"]:
                    raise BackupError(f"collection {collection.name}: {collection.count()} chunks after restore, "
                                      f"the backup holds {record['count']}")
    return Summary(len(contents), total, path.stat().st_size, time.perf_counter() - started)

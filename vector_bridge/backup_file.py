"""The backup file format: gzip-compressed JSON Lines, read and written as a stream.

    {"format": "vector-bridge-backup", "version": 1, "chroma_version": ..., "created": ...}
    {"collection": NAME, "metadata": {...}, "count": N}
    {"id": ..., "document": ..., "metadata": {...}, "embedding": "<base64 little-endian float32>"}   x N
    {"end_collection": NAME, "count": N}
    ...
    {"end": true, "collections": K, "chunks": M}

Files are created owner-only from their first byte: they hold every document of the store.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from embed_server.state_file import fsync_folder  # noqa: F401 - re-exported for backup and restore

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
    leftovers: list[str] = field(default_factory=list)  # another restore's temporary collections, untouched

    def to_dict(self) -> dict[str, Any]:
        found = {"collections": self.collections, "chunks": self.chunks, "bytes": self.bytes,
                 "seconds": round(self.seconds, 2)}
        return found | ({"leftovers": self.leftovers} if self.leftovers else {})


def encode_vector(vector: Any) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


def line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


@contextmanager
def private_gzip(path: Path) -> Iterator[IO[bytes]]:
    """A new gzip file at ``path``, mode 0600 from creation, fsynced when the block ends."""
    path.unlink(missing_ok=True)  # a killed run's leftover: O_EXCL below guarantees our own mode
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb") as out:
            yield out
        raw.flush()
        os.fsync(raw.fileno())


def records(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for number, text in enumerate(lines, 1):
                try:
                    yield json.loads(text)
                except json.JSONDecodeError as error:
                    raise BackupError(f"{path}: line {number} is not JSON ({error})") from None
    except (OSError, EOFError) as error:  # not gzip, or cut off mid-stream
        raise BackupError(f"{path}: unreadable or truncated ({error})") from None


@dataclass
class CollectionHeader:
    name: str
    metadata: dict[str, Any] | None
    ids: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.ids)


def read_contents(path: Path) -> list[CollectionHeader]:
    """The collections a backup holds with their ids, after checking it is complete: a pass that
    writes nothing, so a damaged file is refused before the store is touched."""
    stream = records(path)
    header = next(stream, None)
    if not header or header.get("format") != FORMAT:
        raise BackupError(f"{path}: not a {FORMAT} file")
    if header.get("version") != VERSION:
        raise BackupError(f"{path}: format version {header.get('version')} (this tool reads {VERSION})")
    found: list[CollectionHeader] = []
    chunks = 0
    for record in stream:
        if "collection" in record:
            found.append(CollectionHeader(record["collection"], record.get("metadata")))
        elif "id" in record:
            found[-1].ids.append(record["id"])
            chunks += 1
        elif "end_collection" in record:
            if record["count"] != found[-1].count:
                raise BackupError(f"{path}: collection {found[-1].name} closes with {record['count']} chunks, "
                                  f"holds {found[-1].count}")
        elif record.get("end"):
            if record.get("chunks") != chunks or record.get("collections") != len(found):
                raise BackupError(f"{path}: closing line says {record.get('chunks')} chunks, file has {chunks}")
            return found
    raise BackupError(f"{path}: truncated (no closing line); it was not written completely")

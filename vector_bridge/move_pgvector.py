"""pgvector's side of `migrate --to-store` (the loop is store_move.py): Open WebUI's one table as a target
(one transaction per page, the record of what was written in ``vector_bridge_moved_chunk`` committed with
it) and as a source.

As a source, vectors come out in the length of the model that made them: Open WebUI pads every vector with
zeros to the table's N, and Chroma fixes a collection's dimension at its first add, so a collection moved
with the padding would refuse Open WebUI's next (unpadded) vector. The length is the recorded model's, read
from the served models' configuration (``embedding_config`` names the model; chunks that name none were
embedded by Open WebUI with the model the rest of the store records, else the first served model, which is
what ``openwebui-env`` sets). The data alone cannot tell it: the padding is zeros, and a model's own vectors
may end in zeros too (the hybrid model's lexical slots mostly are), so the longest non-zero prefix is only a
lower bound. It is used for a model this server does not serve (then said so in the report), and checked
always: a chunk with values beyond the length is refused, never cut.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from config import Settings
from vector_bridge.pgvector_store import Chunk, PgvectorStore, Table, as_stored, without_nul
from vector_bridge.store import TOOL_COLLECTIONS, parse_embedding_config
from vector_bridge.store_move import Record, StoreMoveError


class NoTable(StoreMoveError):
    """pgvector has no document_chunk table: Open WebUI never ran on it, nothing to move."""


class TableDoesNotFit(StoreMoveError):
    """The target's table was made for another vector length than the collections'."""


class DimensionUnclear(StoreMoveError):
    """A collection's real vector length cannot be settled (several models, or vectors the model cannot give)."""


class PgvectorTarget:
    engine = "pgvector"

    def __init__(self, store: PgvectorStore, table: Table, token: str) -> None:
        self.store, self.table, self.token = store, table, token
        store.hold_writer_lock()
        store.prepare_moves()

    def open(self, name: str) -> None:
        pass  # pages and their records commit together: nothing is ever half recorded

    def ids(self, name: str) -> set[str]:
        return set(self.store.ids(name))

    def fingerprints(self, name: str) -> dict[str, str]:
        return self.store.fingerprints(name)

    def written(self, name: str) -> dict[str, Record]:
        # One transaction writes the row and its record, so what was sent is what is stored.
        return {chunk_id: Record(print_, print_, source)
                for chunk_id, (print_, source) in self.store.written(name).items()}

    def moved_collections(self) -> dict[str, set[str | None]]:
        return self.store.moved_collections()

    def take_over(self, name: str, fingerprints: dict[str, str], *, whole: bool) -> None:
        self.store.take_over(name, fingerprints, self.token)  # one transaction: nothing to resume

    def forget(self, name: str) -> None:
        self.store.forget(name)

    def retire(self, name: str) -> None:
        pass  # a collection is only its rows here

    def as_stored(self, chunk: Chunk) -> Chunk:
        vector = as_stored(chunk.vector, self.table)[:self.table.dimension]
        vector = np.pad(vector, (0, self.table.dimension - len(vector)))  # Open WebUI's padding
        return Chunk(chunk.id, without_nul(chunk.text), vector, without_nul(chunk.metadata))

    def write(self, name: str, chunks: list[Chunk]) -> None:
        self.store.write(name, [Chunk(c.id, without_nul(c.text), c.vector, without_nul(c.metadata)) for c in chunks],
                         self.table, self.token)

    def delete(self, name: str, ids: list[str]) -> None:
        self.store.delete(name, ids)

    def read(self, name: str, ids: list[str]) -> list[Chunk]:
        return list(self.store.read(name, ids))

    def finish(self) -> None:
        self.store.create_vector_index(self.table)


@dataclass
class Dimensions:
    """Each collection's real vector length, and which of them were read from the data alone."""

    table: int
    by_collection: dict[str, int] = field(default_factory=dict)
    from_data: dict[str, int] = field(default_factory=dict)  # unserved model -> longest non-zero prefix
    unclear: dict[str, str] = field(default_factory=dict)  # collection -> why its length cannot be settled


class PgvectorSource:
    engine = "pgvector"

    def __init__(self, store: PgvectorStore, dimensions: Dimensions) -> None:
        self.store, self.dimensions = store, dimensions
        self.token = store.identity()

    def migrating(self, name: str) -> bool:
        return False  # migrate on pgvector keeps every collection under its name

    def names(self) -> tuple[list[str], list[str]]:
        # Those whose length was settled; one Open WebUI created since is the next run's (left out, so the
        # move never takes it for deleted).
        # The names of the tools' own Chroma collections are never Open WebUI's: collections so named stay behind.
        names = sorted(self.store.collections())
        return ([n for n in names if n in self.dimensions.by_collection and n not in TOOL_COLLECTIONS],
                [n for n in names if n not in self.dimensions.by_collection or n in TOOL_COLLECTIONS])

    def ids(self, name: str) -> list[str]:
        return self.store.ids(name)

    def read(self, name: str, ids: list[str]) -> list[Chunk]:
        length = self.dimensions.by_collection[name]
        chunks = list(self.store.read(name, ids))
        for chunk in chunks:
            if np.any(chunk.vector[length:]):
                last = int(np.flatnonzero(chunk.vector)[-1]) + 1
                raise DimensionUnclear(f"{name}: chunk {chunk.id} has values up to dimension {last}, beyond the "
                                       f"{length} of the model it records: refusing to cut it")
            chunk.vector = chunk.vector[:length]
        return chunks


def real_dimensions(store: PgvectorStore, table: Table, settings: Settings,
                    only: Iterable[str] | None = None, *, strict: bool = True) -> Dimensions:
    """Each collection's vector length without the table's padding (see the module's docstring). A collection
    whose length cannot be settled is an error naming every such collection, or with ``strict`` off is left
    out of ``by_collection`` and named in ``unclear`` (a backup keeps its vectors at the table's length)."""
    from vector_bridge.openwebui_env import model_dimension

    served = {name: spec.id for spec in settings.models for name in spec.names}
    configs = store.recorded_configs()
    wanted = set(only) if only else set(configs)
    models: dict[str, set[str | None]] = {}
    for name, counts in configs.items():
        if name in wanted:
            models[name] = {_model(config) for config in counts}
    recorded = {model for found in models.values() for model in found if model is not None}
    result = Dimensions(table.dimension)
    lengths: dict[str | None, int] = {}
    for model in sorted(m for m in recorded if m in served):
        lengths[model] = model_dimension(settings, served[model])
    unserved = {m for m in recorded if m not in served}
    if unserved:
        result.from_data = _longest_prefixes(store, unserved)
        lengths |= result.from_data
    known = set(lengths.values())
    if any(None in found for found in models.values()):
        # Chunks that record no model: Open WebUI embedded them with the model it embeds the rest with.
        lengths[None] = known.pop() if len(known) == 1 else model_dimension(settings, settings.models[0].id)
    for name, found in sorted(models.items()):
        sizes = {lengths[m] for m in found}
        size = sizes.pop() if len(sizes) == 1 else None
        if size is None:
            described = ", ".join(sorted(str(m) for m in found))
            result.unclear[name] = (f"{name}: chunks of models of different lengths ({described}); a Chroma "
                                    "collection holds one length: remove one model's files from it first")
        elif not size:
            result.unclear[name] = f"{name}: every vector of its model is zero: its length cannot be told"
        elif size > table.dimension:
            result.unclear[name] = (f"{name}: its model gives {size}-dimension vectors but the table holds "
                                    f"{table.dimension}: Open WebUI cut them, and cut vectors cannot be moved as "
                                    "they were; re-add its files after the switch")
        else:
            result.by_collection[name] = size
    if strict and result.unclear:
        raise DimensionUnclear("; ".join(result.unclear.values()))
    return result


def _model(config: str | None) -> str | None:
    parsed = parse_embedding_config(config)
    return str(parsed["model"]) if parsed and parsed.get("model") else None


def _longest_prefixes(store: PgvectorStore, models: set[str]) -> dict[str, int]:
    longest = dict.fromkeys(models, 0)
    for metadata, vector in store.vectors():
        model = _model((metadata or {}).get("embedding_config"))
        if model in longest:
            nonzero = np.flatnonzero(vector)
            if len(nonzero):
                longest[model] = max(longest[model], int(nonzero[-1]) + 1)
    return longest


def open_source_table(store: PgvectorStore) -> Table:
    table = store.table()
    if table is None:
        raise NoTable("pgvector has no document_chunk table yet (Open WebUI has not run on it): nothing to move")
    return table

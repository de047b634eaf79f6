"""The moment a store changes model: every prepared copy takes its collection's name at once, then Open WebUI
is switched to the copies' model, then whatever Open WebUI wrote meanwhile is brought over.

Open WebUI embeds each query with one model for the whole store, so between the first rename and its switch a
query can meet a collection of the other model (or, for an instant, no collection at all). That window is
what this module keeps short and measures: the renames run in parallel, each collection's two renames back to
back, and every slow step (catching up, reading, embedding) happens before or after it, never inside.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection

from vector_bridge.embeddings import EmbeddingsClient
from vector_bridge.shadow import all_ids, copy_chunks, fingerprints, sync_copy

RENAME_THREADS = 4


@dataclass(frozen=True)
class Swap:
    name: str  # what Open WebUI reads
    standby: str  # the prepared copy that takes the name
    parked: str  # what the collection now under the name becomes (kept for a rollback)
    model: str  # the model of the standby copy's vectors


@dataclass
class Cutover:
    collections: int
    window_seconds: float  # first rename to Open WebUI switched: a query could meet a mismatched collection
    renames_seconds: float
    switch_seconds: float
    caught_up_before: int  # chunks embedded in the last catch-up, just before the renames
    settled_after: int  # chunks Open WebUI wrote during the window, brought over after it
    started_at: float  # wall-clock time (epoch seconds) of the first rename


def swap_all(client: ClientAPI, embeddings: EmbeddingsClient, swaps: list[Swap], switch: Callable[[], None], *,
             batch: int = 128) -> Cutover:
    snapshots: dict[Swap, set[str]] = {}
    pairs: list[tuple[Swap, Collection, Collection]] = []
    caught_up = 0
    for swap in swaps:  # the last catch-up: short, since the build and earlier catch-ups did the work
        live, standby = client.get_collection(swap.name), client.get_collection(swap.standby)
        caught_up += sync_copy(live, standby, embeddings, swap.model, batch=batch).embedded
        snapshots[swap] = set(all_ids(live))
        pairs.append((swap, live, standby))
    started, started_at = time.perf_counter(), time.time()
    with ThreadPoolExecutor(max_workers=RENAME_THREADS) as pool:
        list(pool.map(lambda pair: _rename_pair(*pair), pairs))
    renamed = time.perf_counter()
    switch()
    switched = time.perf_counter()
    settled = sum(_settle(client, embeddings, swap, snapshots[swap], batch) for swap in swaps)
    return Cutover(len(swaps), round(switched - started, 4), round(renamed - started, 4),
                   round(switched - renamed, 4), caught_up, settled, started_at)


def _rename_pair(swap: Swap, live: Collection, standby: Collection) -> None:
    # Both collections were fetched before the window opened: inside it, two requests per collection, back
    # to back, so its name is free only for the instant between them.
    live.modify(name=swap.parked)
    standby.modify(name=swap.name)


def _settle(client: ClientAPI, embeddings: EmbeddingsClient, swap: Swap, snapshot: set[str], batch: int) -> int:
    """Chunks Open WebUI wrote to the old collection after the last catch-up (they went with it under the
    parked name), chunks it deleted there, and chunks it wrote to the new one with its previous model before
    the switch."""
    parked, current = client.get_collection(swap.parked), client.get_collection(swap.name)
    parked_ids = set(all_ids(parked))
    deleted = sorted(snapshot - parked_ids)
    if deleted:
        current.delete(ids=deleted)
    written = copy_chunks(parked, current, sorted(parked_ids - snapshot), embeddings, swap.model, batch=batch)
    stale = [chunk_id for chunk_id, print_ in fingerprints(current, swap.model).items() if print_ == "stale"]
    written += copy_chunks(current, current, stale, embeddings, swap.model, batch=batch)
    return written + len(deleted)

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


class CutoverError(RuntimeError):
    pass


SWITCH_TRIES = 4


def swap_all(client: ClientAPI, embeddings: EmbeddingsClient, swaps: list[Swap], switch: Callable[[], None], *,
             batch: int = 128) -> Cutover:
    names = {collection.name for collection in client.list_collections()}
    taken = sorted(swap.parked for swap in swaps if swap.parked in names)
    if taken:
        raise CutoverError(f"nothing was swapped: {', '.join(taken[:5])} already exist; they would be overwritten")
    snapshots: dict[Swap, frozenset[str]] = {}
    pairs: list[tuple[Swap, Collection, Collection]] = []
    caught_up = 0
    for swap in swaps:  # the last catch-up: short, since the build and earlier catch-ups did the work
        if swap.name not in names:
            continue  # deleted meanwhile (a Knowledge base removed in Open WebUI): its shadow stays unused
        live, standby = client.get_collection(swap.name), client.get_collection(swap.standby)
        synced = sync_copy(live, standby, embeddings, swap.model, batch=batch)
        caught_up += synced.embedded
        snapshots[swap] = synced.ids  # exactly what the copy holds: settling compares against this
        pairs.append((swap, live, standby))
    started, started_at = time.perf_counter(), time.time()
    try:
        with ThreadPoolExecutor(max_workers=RENAME_THREADS) as pool:
            list(pool.map(lambda pair: _rename_pair(client, embeddings, *pair), pairs))
        renamed = time.perf_counter()
        switch_with_retries(switch)
        switched = time.perf_counter()
    finally:
        # Whatever happened in the window, what Open WebUI wrote meanwhile is brought over.
        after = {collection.name for collection in client.list_collections()}
        settled = sum(_settle(client, embeddings, swap, snapshots[swap], batch) for swap, _, _ in pairs
                      if swap.name in after and swap.parked in after and swap.standby not in after)
    return Cutover(len(pairs), round(switched - started, 4), round(renamed - started, 4),
                   round(switched - renamed, 4), caught_up, settled, started_at)


def switch_with_retries(switch: Callable[[], None]) -> None:
    for attempt in range(SWITCH_TRIES):
        try:
            switch()
            return
        except Exception:  # noqa: BLE001 - Open WebUI restarting or busy: the store is already swapped
            if attempt == SWITCH_TRIES - 1:
                raise
            time.sleep(2 ** attempt)


def _rename_pair(client: ClientAPI, embeddings: EmbeddingsClient, swap: Swap, live: Collection,
                 standby: Collection) -> None:
    # Both collections were fetched before the window opened: inside it, two requests per collection, back
    # to back, so its name is free only for the instant between them.
    live.modify(name=swap.parked)
    for _ in range(3):
        try:
            standby.modify(name=swap.name)
            return
        except Exception:  # noqa: BLE001 - chromadb raises a generic error for a name that is taken
            if swap.name not in {c.name for c in client.list_collections()}:
                raise
            # Open WebUI wrote to the name in that instant and so created it anew: its chunks join the copy.
            absorb_intruder(client, embeddings, swap.name, standby, swap.model)
    raise CutoverError(f"{swap.name}: the name keeps being recreated; run the same command again to finish")


def absorb_intruder(client: ClientAPI, embeddings: EmbeddingsClient, name: str, into: Collection, model: str) -> int:
    """A collection Open WebUI created under ``name`` while it was free (between a swap's two renames): its
    chunks are embedded with ``model`` into ``into``, then it goes, so ``into`` can take the name."""
    intruder = client.get_collection(name)
    moved = copy_chunks(intruder, into, all_ids(intruder), embeddings, model)
    client.delete_collection(name)
    return moved


def _settle(client: ClientAPI, embeddings: EmbeddingsClient, swap: Swap, snapshot: frozenset[str], batch: int) -> int:
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

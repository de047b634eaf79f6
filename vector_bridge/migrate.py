"""Move the whole store to another served model, and Open WebUI with it, in one cutover.

For target model M, every collection NAME whose chunks were embedded with another model:

1. build     M's vectors go into the shadow ``NAME.to.<M>`` while Open WebUI keeps answering from NAME with
             its old model. A killed run resumes: chunks already in the shadow are not embedded again.
2. catch up  each shadow is brought to exactly NAME's chunks (what Open WebUI added, changed or deleted
             during the build), and collections that appeared meanwhile are built too.
3. cut over  one last catch-up, then every NAME becomes ``NAME.pre.<M>`` (the old vectors, kept) and every
             shadow becomes NAME, all at once, and Open WebUI's embedding model is switched to M right after
             (cutover.py measures the window between the first rename and the switch).
4. settle    what Open WebUI wrote while the cutover ran is brought over (cutover.py).

``migrate --rollback`` runs the same steps backwards while the old vectors are kept; ``--drop-old`` deletes
them. Collections that record no model (Open WebUI's memories, the Knowledge-base index, web search) are
migrated as embedded with Open WebUI's current model. Chunk metadata keeps everything but the model named
in ``embedding_config``, which every new chunk records. Texts are embedded as Open WebUI embeds document
chunks (newlines as spaces, ``input_type: document``), so the new vectors equal what Open WebUI would have
stored with M.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal

from chromadb.api import ClientAPI

from vector_bridge.cutover import Cutover, Swap, absorb_intruder, swap_all
from vector_bridge.embeddings import EmbeddingsClient
from vector_bridge.shadow import copy_chunks, fingerprints, recorded_model, sync_copy
from vector_bridge.store import TOOL_COLLECTIONS, describe

Outcome = Literal["migrated", "already", "skipped", "rolled back"]
MIGRATION_PART = re.compile(r"(?P<name>.+)\.(?P<part>to|pre)\.(?P<model>[a-zA-Z0-9._-]+)")
# Collection metadata on a shadow: the model its source was embedded with, for --rollback.
FROM_MODEL = "vector_bridge_from_model"
CATCH_UP_PASSES = 3


class MigrationError(RuntimeError):
    pass


@dataclass
class Migration:
    collection: str
    outcome: Outcome
    chunks: int = 0
    embedded: int = 0  # chunks embedded by this run (less than chunks when resuming)
    removed: int = 0  # chunks deleted from the source during the run, so from its shadow too
    seconds: float = 0.0
    detail: str = ""


@dataclass
class StoreMigration:
    model: str
    collections: list[Migration] = field(default_factory=list)
    cutover: Cutover | None = None
    openwebui: str = "not switched"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "collections": [asdict(c) for c in self.collections],
                "cutover": asdict(self.cutover) if self.cutover else None, "openwebui": self.openwebui}


def slug(model: str) -> str:
    """A model id as Chroma allows in a collection name ([a-zA-Z0-9._-], alphanumeric at both ends)."""
    return re.sub(r"[^a-zA-Z0-9._-]+", "-", model).strip("._-") or "model"


def shadow_name(name: str, model: str) -> str:
    return f"{name}.to.{slug(model)}"


def backup_name(name: str, model: str) -> str:
    return f"{name}.pre.{slug(model)}"


def migration_part(name: str) -> tuple[Literal["shadow", "backup"], str] | None:
    """For a collection migrate made: whether it is new vectors being built or old ones kept, and for which."""
    found = MIGRATION_PART.fullmatch(name)
    if found is None:
        return None
    return ("shadow" if found["part"] == "to" else "backup"), found["name"]


def _names(client: ClientAPI) -> set[str]:
    return {collection.name for collection in client.list_collections()}


def plan(client: ClientAPI, model: str, only: list[str] | None, default_model: str) -> list[str]:
    """The collections to migrate: the named ones, or every collection whose chunks were embedded with another
    model (``default_model`` for chunks that record none), or whose swap a killed run left half done."""
    names = _names(client)
    if only:
        missing = [name for name in only if name not in names and backup_name(name, model) not in names]
        if missing:
            raise MigrationError(f"no such collection: {', '.join(missing)}")
        return only
    pending = []
    for name in sorted(names):
        if migration_part(name) or name in TOOL_COLLECTIONS:  # the tools' own collections are never migrated
            continue
        if backup_name(name, model) in names:
            continue  # migrated already, its old vectors kept; chunks that raced a cutover: settle_stale
        info = describe(client.get_collection(name))
        if info.count and set(info.models or {default_model: info.count}) != {model}:
            pending.append(name)
    return pending


def build(client: ClientAPI, embeddings: EmbeddingsClient, name: str, model: str, default_model: str, *,
          batch: int = 128, progress: bool = False) -> Migration:
    """Build (or bring up to date) the shadow of one collection; nothing Open WebUI reads changes."""
    started = time.perf_counter()
    source = client.get_collection(name)
    info = describe(source)
    if not info.count:
        return Migration(name, "skipped", detail="empty")
    models = info.models or {default_model: info.count}
    if set(models) == {model}:
        return Migration(name, "already", info.count)
    from_model = Counter(models).most_common(1)[0][0]
    shadow = client.get_or_create_collection(
        shadow_name(name, model), metadata={**(source.metadata or {"hnsw:space": "cosine"}), FROM_MODEL: from_model})
    synced = sync_copy(source, shadow, embeddings, model, batch=batch, progress=progress)
    return Migration(name, "migrated", synced.chunks, synced.embedded, synced.removed,
                     time.perf_counter() - started)


def finish_interrupted_swaps(client: ClientAPI, embeddings: EmbeddingsClient, model: str) -> list[Migration]:
    """A run killed between a collection's two renames left both of its copies beside its name, which is free,
    or held by a collection Open WebUI created there meanwhile (whose chunks then join the new copy first).
    A shadow whose collection is gone altogether (a Knowledge base deleted during the build) is dropped."""
    names = _names(client)
    finished = []
    for name in sorted(names):
        part = migration_part(name)
        if not (part and part[0] == "shadow" and name == shadow_name(part[1], model)):
            continue
        original, shadow = part[1], client.get_collection(name)
        if backup_name(original, model) not in names:
            if original not in names:
                client.delete_collection(name)
                finished.append(Migration(original, "skipped", detail="deleted during the migration"))
            continue
        if original in names:
            absorb_intruder(client, embeddings, original, shadow, model)
        shadow.modify(name=original)
        finished.append(Migration(original, "migrated", detail="finished an interrupted swap"))
    return finished


def settle_stale(client: ClientAPI, embeddings: EmbeddingsClient, model: str, batch: int) -> int:
    """Chunks that Open WebUI wrote with its previous model into collections already swapped (a cutover cut
    short before it settled them): embedded again with ``model`` in place."""
    names = _names(client)
    fixed = 0
    for name in sorted(names):
        if migration_part(name) or backup_name(name, model) not in names:
            continue
        collection = client.get_collection(name)
        stale = [chunk_id for chunk_id, print_ in fingerprints(collection, model).items() if print_ == "stale"]
        fixed += copy_chunks(collection, collection, stale, embeddings, model, batch=batch)
    return fixed


def migrate_store(client: ClientAPI, embeddings: EmbeddingsClient, model: str, *, default_model: str,
                  switch: Callable[[str], None] | None, only: list[str] | None = None, batch: int = 128,
                  drop_old: bool = False, progress: bool = False) -> StoreMigration:
    """Every collection (or ``only`` these) to ``model``, then ``switch`` Open WebUI to it at the cutover."""
    result = StoreMigration(model, finish_interrupted_swaps(client, embeddings, model))
    settle_stale(client, embeddings, model, batch)
    built = _build_until_caught_up(client, embeddings, model, only, default_model, batch, progress)
    result.collections += list(built.values())
    swaps = [Swap(name, shadow_name(name, model), backup_name(name, model), model)
             for name, done in built.items() if done.outcome == "migrated"]
    if swaps or switch is not None:
        result.cutover = swap_all(client, embeddings, swaps, lambda: switch(model) if switch else None, batch=batch)
        result.openwebui = "switched" if switch else "not switched"
        # Collections Open WebUI created during the cutover, with its previous model: moved right away.
        late = _build_until_caught_up(client, embeddings, model, only, default_model, batch, progress)
        late_swaps = [Swap(name, shadow_name(name, model), backup_name(name, model), model)
                      for name, done in late.items() if done.outcome == "migrated"]
        if late_swaps:
            swap_all(client, embeddings, late_swaps, lambda: None, batch=batch)
            result.collections += [done for done in late.values() if done.outcome == "migrated"]
    if drop_old:
        drop_backups(client, model, result, only)
    return result


def _build_until_caught_up(client: ClientAPI, embeddings: EmbeddingsClient, model: str, only: list[str] | None,
                           default_model: str, batch: int, progress: bool) -> dict[str, Migration]:
    """Build every shadow, then catch up again while Open WebUI's writes during the last pass changed any."""
    built: dict[str, Migration] = {}
    for _ in range(CATCH_UP_PASSES):
        changed = False
        for name in plan(client, model, only, default_model):
            done = build(client, embeddings, name, model, default_model, batch=batch, progress=progress)
            previous = built.setdefault(name, done)
            if previous is done:
                changed |= done.outcome == "migrated"
            elif done.outcome == "migrated":
                previous.chunks, previous.seconds = done.chunks, previous.seconds + done.seconds
                previous.embedded += done.embedded
                previous.removed += done.removed
                changed |= bool(done.embedded or done.removed)
        if not changed:
            break
    return built


def drop_backups(client: ClientAPI, model: str, result: StoreMigration, only: list[str] | None) -> None:
    names = _names(client)
    for name in sorted(names):
        part = migration_part(name)
        if part and part[0] == "backup" and name == backup_name(part[1], model) and part[1] in names \
                and (not only or part[1] in only):
            client.delete_collection(name)
            result.collections.append(Migration(part[1], "already", detail="old vectors dropped"))


def roll_back(client: ClientAPI, embeddings: EmbeddingsClient, model: str, *, switch: Callable[[str], None] | None,
              batch: int = 128, progress: bool = False) -> StoreMigration:
    """The store (and Open WebUI) back on the models it had before ``migrate --to model``, from the kept old
    vectors; chunks written since the cutover are embedded with the old model first."""
    names = _names(client)
    pairs = [(part[1], name) for name in sorted(names)
             if (part := migration_part(name)) and part[0] == "backup" and name == backup_name(part[1], model)]
    if not pairs:
        raise MigrationError(f"no old vectors are kept for a migration to {model!r}: nothing to roll back "
                             "(they are gone after --drop-old)")
    result = StoreMigration(model)
    old_models: Counter[str] = Counter()
    from_models: dict[str, str] = {}
    for original, backup in pairs:
        started = time.perf_counter()
        old = client.get_collection(backup)
        if original not in names or shadow_name(original, model) in names:
            # A swap killed between its two renames (either way): its name is free, or held by a collection
            # Open WebUI created there meanwhile, whose chunks join the old copy first.
            if original in names:
                absorb_intruder(client, embeddings, original, old, _model_of(old) or model)
            old.modify(name=original)
            result.collections.append(Migration(original, "rolled back", detail="finished an interrupted swap"))
            continue
        current = client.get_collection(original)
        from_model = (current.metadata or {}).get(FROM_MODEL) or _model_of(old)
        if not from_model:
            raise MigrationError(f"{original}: the model of its old vectors is unknown; roll back by hand")
        old_models[from_model] += 1
        from_models[original] = from_model
        synced = sync_copy(current, old, embeddings, from_model, batch=batch, progress=progress)
        result.collections.append(Migration(original, "rolled back", synced.chunks, synced.embedded, synced.removed,
                                            time.perf_counter() - started))
    swaps = [Swap(m.collection, backup_name(m.collection, model), shadow_name(m.collection, model), from_models[m.collection])
             for m in result.collections if m.collection in from_models]
    previous = old_models.most_common(1)[0][0] if old_models else None
    result.cutover = swap_all(client, embeddings, swaps, lambda: switch(previous) if switch and previous else None,
                              batch=batch)
    result.model = previous or model
    result.openwebui = f"switched back to {previous}" if switch and previous else "not switched"
    return result


def _model_of(collection: Any) -> str | None:
    sample = collection.get(limit=50, include=["metadatas"])
    models = Counter(m for m in map(recorded_model, sample["metadatas"] or []) if m)
    return models.most_common(1)[0][0] if models else None

"""The hybrid models' query IDF, shared by every replica through Redis.

Each replica adds the documents it embeds to one set of counts in Redis, and every replica answers
queries from a snapshot of those counts that it fetches every ``refresh_seconds``. A snapshot is
named by (epoch, generation): the generation goes up by one with every change of the counts, the
epoch is drawn when the shared state is created. The IDF is a pure function of the snapshot, so two
replicas holding the same snapshot return the same query vectors, bit for bit; a replica picks up a
change within one refresh interval while Redis answers.

Counting is exactly-once across replicas: a Lua script adds a document (by a hash of its text)
to a set and increments its slots' counts only if it was not in the set, atomically.

Nothing is lost to a restart: the counts live in Redis (persistence is Redis' own), a replica never
writes them on start except to create them when they are absent, and the last snapshot is kept
in the state folder, so a replica that restarts while Redis is down answers like the others did.
Documents embedded while Redis is unreachable are kept (bounded) and added when it is back.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embed_server.backends.lexical import DocumentFrequencies, bm25_idf, document_digest
from embed_server.metrics import Metrics
from embed_server.redis_link import RedisLink, RedisUnavailable
from embed_server.state_file import StateFileError, read_locked, set_aside, write_atomic

log = logging.getLogger(__name__)

# Documents waiting for an unreachable Redis: a few hundred bytes each; beyond this, the oldest go
# (they still count in this replica's own file) so a long outage cannot exhaust memory.
_PENDING_LIMIT = 50_000
_STATE_MISSING = -1

# KEYS: seen set, counts hash, meta hash. ARGV: digest, "slot,slot,...", digest, ... Refuses (-1) when
# the state does not exist: only `_CREATE` makes it, so that a lost state is re-seeded, not restarted.
_ADD = """
if redis.call('HEXISTS', KEYS[3], 'epoch') == 0 then return -1 end
local added = 0
for i = 1, #ARGV, 2 do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    for slot in string.gmatch(ARGV[i + 1], '[^,]+') do
      redis.call('HINCRBY', KEYS[2], slot, 1)
    end
    added = added + 1
  end
end
if added > 0 then
  redis.call('HINCRBY', KEYS[3], 'documents', added)
  redis.call('HINCRBY', KEYS[3], 'generation', 1)
end
return added
"""

# KEYS as above. ARGV: epoch, generation, documents, "slot:count,...". Creates the state only when it
# is absent (1), else leaves it alone (0).
_CREATE = """
if redis.call('HEXISTS', KEYS[3], 'epoch') == 1 then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
for pair in string.gmatch(ARGV[4], '[^,]+') do
  local colon = string.find(pair, ':')
  redis.call('HSET', KEYS[2], string.sub(pair, 1, colon - 1), string.sub(pair, colon + 1))
end
redis.call('HSET', KEYS[3], 'epoch', ARGV[1], 'generation', ARGV[2], 'documents', ARGV[3])
return 1
"""


class CorruptSnapshot(ValueError):
    """A saved snapshot file that does not parse or does not fit this model."""


@dataclass(frozen=True)
class Snapshot:
    epoch: str
    generation: int
    documents: int
    counts: np.ndarray  # int64 per slot
    idf: np.ndarray  # float32 per slot: computed once, read by every query

    @classmethod
    def of(cls, epoch: str, generation: int, documents: int, counts: np.ndarray) -> Snapshot:
        return cls(epoch, generation, documents, counts, bm25_idf(counts, documents))


class SharedDocumentFrequencies:
    def __init__(self, model: str, local: DocumentFrequencies, link: RedisLink, metrics: Metrics, *,
                 prefix: str, refresh_seconds: float, snapshot_path: Path | None) -> None:
        self.model = model
        self.local = local  # this replica's own counts: the seed if the shared state is ever absent
        self.dim = local.dim
        self.link = link
        self.metrics = metrics
        self.refresh_seconds = refresh_seconds
        self.snapshot_path = snapshot_path
        # One hash tag for the three keys, so the scripts also run on a Redis Cluster.
        tag = "{idf:" + model.replace("{", "(").replace("}", ")") + f":{self.dim}" + "}"
        self.keys = [f"{prefix}{tag}:seen", f"{prefix}{tag}:counts", f"{prefix}{tag}:meta"]
        snapshot, pending = self._load_snapshot()
        self.snapshot: Snapshot | None = snapshot
        self._pending: deque[tuple[bytes, str]] = deque(pending, maxlen=_PENDING_LIMIT)
        self._saved_pending = len(self._pending)
        self._loop: asyncio.Task[None] | None = None
        self._add = link.client.register_script(_ADD)
        self._create = link.client.register_script(_CREATE)
        self._show()

    # -- what queries use --------------------------------------------------------------------------

    def idf(self) -> np.ndarray:
        """The shared snapshot's IDF; this replica's own until it has ever seen a snapshot."""
        snapshot = self.snapshot  # one read: a refresh swaps the whole object
        return snapshot.idf if snapshot is not None else self.local.idf()

    # -- what documents add ------------------------------------------------------------------------

    async def record(self, texts: list[str], slots: list[dict[int, float]]) -> None:
        """Add documents to the shared counts now, or keep them for when Redis answers again."""
        batch = [(document_digest(text), ",".join(map(str, s))) for text, s in zip(texts, slots) if s]
        if not batch:
            return
        try:
            await self._push(batch)
        except RedisUnavailable:
            if len(self._pending) + len(batch) > _PENDING_LIMIT:
                log.warning("too many documents wait for Redis; the oldest count only in this replica's file",
                            extra={"event": "idf_pending_full", "model": self.model, "limit": _PENDING_LIMIT})
            self._pending.extend(batch)
            self.metrics.idf_pending.labels(self.model).set(len(self._pending))

    async def _push(self, batch: list[tuple[bytes, str]]) -> int:
        args = [part for pair in batch for part in pair]
        added = await self.link.call("idf_add", lambda client: self._add(keys=self.keys, args=args))
        if added == _STATE_MISSING:
            await self._create_state()
            added = await self.link.call("idf_add", lambda client: self._add(keys=self.keys, args=args))
        return int(added)

    async def _flush_pending(self) -> None:
        while self._pending:
            batch = [self._pending[i] for i in range(min(500, len(self._pending)))]
            await self._push(batch)  # RedisUnavailable: stay pending, try at the next refresh
            for _ in batch:
                self._pending.popleft()
            self.metrics.idf_pending.labels(self.model).set(len(self._pending))

    # -- refreshing --------------------------------------------------------------------------------

    async def start(self) -> None:
        """One refresh before serving (a restarted replica answers like the others at once), then one
        every ``refresh_seconds``."""
        try:
            await self.refresh()
        except RedisUnavailable:
            pass  # serving from the saved snapshot; the loop tries again
        self._loop = asyncio.create_task(self._refresh_forever(), name=f"idf-refresh-{self.model}")

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await self.refresh()
            except RedisUnavailable:
                # The link logs state changes; the current snapshot stays in use. Documents waiting
                # for Redis go to disk too, so that a crash does not lose them.
                if len(self._pending) != self._saved_pending:
                    await asyncio.to_thread(self._save_snapshot)
            except Exception:  # a bug here must not end the refreshing for good
                log.exception("refreshing the shared IDF failed", extra={"event": "idf_refresh_failed",
                                                                         "model": self.model})

    async def refresh(self) -> None:
        """Send what is pending, then fetch the counts if they changed. Raises RedisUnavailable."""
        await self._flush_pending()
        meta = await self.link.call("idf_version", lambda client: client.hmget(self.keys[2], "epoch", "generation"))
        if meta[0] is None:
            await self._create_state()
        elif self.snapshot is not None and (meta[0].decode(), int(meta[1])) == (self.snapshot.epoch,
                                                                               self.snapshot.generation):
            return
        snapshot = await self._fetch()
        if snapshot is not None:
            self.snapshot = snapshot
            self._show()
            await asyncio.to_thread(self._save_snapshot)

    async def _fetch(self) -> Snapshot | None:
        async def read(client):
            pipe = client.pipeline(transaction=True)  # MULTI/EXEC: counts and version from one moment
            pipe.hgetall(self.keys[2])
            pipe.hgetall(self.keys[1])
            return await pipe.execute()

        meta, stored = await self.link.call("idf_fetch", read)
        if b"epoch" not in meta:
            return None
        counts = np.zeros(self.dim, dtype=np.int64)
        if stored:
            slots = np.fromiter((int(k) for k in stored), dtype=np.int64, count=len(stored))
            values = np.fromiter((int(v) for v in stored.values()), dtype=np.int64, count=len(stored))
            inside = (slots >= 0) & (slots < self.dim)
            counts[slots[inside]] = values[inside]
        return Snapshot.of(meta[b"epoch"].decode(), int(meta[b"generation"]), int(meta[b"documents"]), counts)

    async def _create_state(self) -> None:
        """Create the absent shared state from the best this replica knows: its last snapshot of the
        shared counts (Redis lost its data), or its own counts and their document digests (the first
        start with Redis)."""
        known = self.snapshot
        counts, documents, digests = self.local.state()
        if known is not None and known.documents >= documents:
            counts, documents, digests = known.counts, known.documents, []
        generation = known.generation + 1 if known is not None else 0
        encoded = ",".join(f"{slot}:{counts[slot]}" for slot in np.flatnonzero(counts))
        created = await self.link.call("idf_create", lambda client: self._create(
            keys=self.keys, args=[secrets.token_hex(8), generation, documents, encoded]))
        if not created:
            return  # another replica was first
        log.warning("created the shared IDF state in Redis", extra={
            "event": "idf_state_created", "model": self.model, "documents": documents,
            "from": "this replica's counts" if digests or known is None else "the last shared snapshot"})
        # The digests only stop a document from counting twice: sent after, in pieces that each fit
        # in one call's time; losing some means such a document may count again.
        for start in range(0, len(digests), 10_000):
            piece = digests[start : start + 10_000]
            await self.link.call("idf_create", lambda client: client.sadd(self.keys[0], *piece))

    def _show(self) -> None:
        self.metrics.idf_generation.labels(self.model).set(self.snapshot.generation if self.snapshot else -1)
        self.metrics.idf_pending.labels(self.model).set(len(self._pending))

    # -- the saved snapshot ------------------------------------------------------------------------

    def _save_snapshot(self) -> None:
        """The last snapshot and the documents still waiting for Redis, for the next start."""
        snapshot, pending = self.snapshot, list(self._pending)
        if self.snapshot_path is None:
            return
        # generation -1: no snapshot yet, only pending documents.
        snapshot = snapshot or Snapshot.of("", -1, 0, np.zeros(self.dim, dtype=np.int64))
        self._saved_pending = len(pending)
        digests = np.frombuffer(b"".join(d for d, _ in pending), dtype=np.uint8).reshape(-1, 12)
        buffer = io.BytesIO()
        np.savez(buffer, counts=snapshot.counts, documents=snapshot.documents, generation=snapshot.generation,
                 epoch=np.array(snapshot.epoch), pending_digests=digests,
                 pending_slots=np.array([s for _, s in pending], dtype=np.str_))
        try:
            write_atomic(self.snapshot_path, buffer.getvalue())
        except StateFileError as error:
            log.error("could not save the shared IDF snapshot", extra={
                "event": "state_save_failed", "path": str(self.snapshot_path), "error": str(error)})

    def _load_snapshot(self) -> tuple[Snapshot | None, list[tuple[bytes, str]]]:
        if self.snapshot_path is None:
            return None, []
        try:
            data = read_locked(self.snapshot_path)
            return (None, []) if data is None else self._parse(data)
        except (OSError, CorruptSnapshot) as error:
            set_aside(self.snapshot_path, f"{type(error).__name__}: {error}")
            return None, []

    def _parse(self, data: bytes) -> tuple[Snapshot | None, list[tuple[bytes, str]]]:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                counts, documents = archive["counts"], int(archive["documents"])
                generation, epoch = int(archive["generation"]), str(archive["epoch"])
                digests, slots = archive["pending_digests"], archive["pending_slots"]
        except Exception as error:  # numpy and zipfile raise many types for damaged archives
            raise CorruptSnapshot(f"unreadable archive ({type(error).__name__}: {error})") from error
        if counts.shape != (self.dim,) or counts.dtype.kind not in "iu" or (counts < 0).any():
            raise CorruptSnapshot("counts have the wrong shape or type")
        if digests.ndim != 2 or digests.shape[1:] != (12,) or len(digests) != len(slots):
            raise CorruptSnapshot("pending documents are damaged")
        pending = [(bytes(row), str(s)) for row, s in zip(digests, slots)]
        if generation < 0:
            return None, pending
        return Snapshot.of(epoch, generation, documents, counts.astype(np.int64)), pending

    async def close(self) -> None:
        """Stop refreshing; one last try to hand pending documents to Redis."""
        if self._loop is not None:
            self._loop.cancel()
        try:
            await self._flush_pending()
        except RedisUnavailable:
            log.warning("documents not yet in the shared IDF are kept for the next start",
                        extra={"event": "idf_pending_kept", "model": self.model, "documents": len(self._pending)})
        await asyncio.to_thread(self._save_snapshot)

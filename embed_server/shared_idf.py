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

When Redis loses its data, the first replica to notice creates the state again, in a new epoch,
seeded from its last snapshot. Two things make that seed right:

* Every replica that sees a new epoch (the creator too) marks its own documents as seen, without
  counting them: they are in the seed, so embedding them again must not count them twice. Its
  documents not yet confirmed in the shared counts (waiting for Redis, or in flight) are left out,
  so that they are still counted once.
* The seed is recorded (epoch, generation, and its counts in a fourth key). A replica holding a
  newer snapshot of that same epoch replaces the seed by its own, atomically (counts += new -
  seed), once: so a replica that was down and held an old snapshot cannot set the counts back for
  good by being first. Documents counted since the state was created stay counted.
* A replica that holds no snapshot (a new one, or one whose snapshot file was set aside) can be the
  first to notice too. It seeds from its own counts, with seed epoch "", leaving out its documents
  not yet confirmed in the shared counts (they are added, once, right after). Such a seed gives way
  to the first snapshot that holds more documents, by the same difference, and from then on to
  newer snapshots of that snapshot's epoch. A replica whose snapshot holds fewer documents than
  such a seed leaves it alone and does not mark its documents seen, since they are not in it.

What this does not cover, honestly: a document embedded again in the new epoch through one replica
before the replica that had seen it has joined (within one refresh interval of the loss, or until a
replica that was down is back) counts twice, as do documents whose only replica is gone with its
state folder. Documents added within the last refresh interval before the loss that no surviving
snapshot holds are missing from the counts (and, marked seen by their replica, stay so), as are
those a replica without a snapshot seeded the state with when a snapshot then replaces that seed
and does not hold them (documents it embedded before it ever shared counts: it marked them seen).
Once a seed is a snapshot, only a newer snapshot of its epoch can improve it. All of these move a
few counts by a few documents; the replicas still agree with each other, which is what the queries
need.
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

from embed_server import shared_idf_scripts as scripts
from embed_server.backends.lexical import DocumentFrequencies, bm25_idf, document_digest
from embed_server.metrics import Metrics
from embed_server.redis_link import RedisLink, RedisUnavailable
from embed_server.state_file import StateFileError, read_locked, set_aside, write_atomic

log = logging.getLogger(__name__)

# Documents waiting for an unreachable Redis: a few hundred bytes each; beyond this, the oldest go
# (they still count in this replica's own file) so a long outage cannot exhaust memory.
_PENDING_LIMIT = 50_000
# Digests marked seen per call: each call stays well within the link's timeout.
_MARK_PIECE = 10_000


class StateReplaced(RedisUnavailable):
    """The shared state was created again while a change to it was under way. Handled like an
    unreachable Redis: the documents wait, and the next refresh tries again."""


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


@dataclass(frozen=True)
class Version:
    """Which state Redis holds and what it was seeded from (seed_epoch "" when from one replica's own
    counts; seed_kept when the seed's counts are stored, so that it can be replaced)."""

    epoch: str
    generation: int
    seed_epoch: str
    seed_generation: int
    seed_documents: int = 0
    seed_kept: bool = False


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
        # One hash tag for the four keys, so the scripts also run on a Redis Cluster.
        tag = "{idf:" + model.replace("{", "(").replace("}", ")") + f":{self.dim}" + "}"
        self.keys = [f"{prefix}{tag}:seen", f"{prefix}{tag}:counts", f"{prefix}{tag}:meta", f"{prefix}{tag}:seed"]
        snapshot, pending = self._load_snapshot()
        self.snapshot: Snapshot | None = snapshot
        self._pending: deque[tuple[bytes, str]] = deque(pending, maxlen=_PENDING_LIMIT)
        self._saved_pending = len(self._pending)
        # Documents new to this replica that the shared counts may not hold yet (digest -> slots): never
        # marked seen in a new epoch nor put in a seed, or they would never be counted, or be lost when
        # a better seed replaces that one. Those waiting from before a restart included.
        self._unconfirmed: dict[bytes, str] = dict(pending)
        # The epoch this replica has brought its documents to. Holding a snapshot of an epoch means
        # having joined it: a snapshot is only taken after joining.
        self._joined: str | None = snapshot.epoch if snapshot is not None else None
        self._joining = asyncio.Lock()
        self._loop: asyncio.Task[None] | None = None
        self._add = link.client.register_script(scripts.ADD)
        self._mark_seen = link.client.register_script(scripts.MARK_SEEN)
        self._create = link.client.register_script(scripts.CREATE)
        self._upgrade = link.client.register_script(scripts.UPGRADE)
        self._show()

    # -- what queries use --------------------------------------------------------------------------

    def idf(self) -> np.ndarray:
        """The shared snapshot's IDF; this replica's own until it has ever seen a snapshot."""
        snapshot = self.snapshot  # one read: a refresh swaps the whole object
        return snapshot.idf if snapshot is not None else self.local.idf()

    # -- what documents add ------------------------------------------------------------------------

    async def record(self, texts: list[str], slots: list[dict[int, float]]) -> None:
        """Count documents in this replica's own counts and in the shared ones now, or keep them for
        when Redis answers again."""
        batch = []
        # No await until the batch is marked unconfirmed: a join in between must not mark a
        # document seen that is new to the shared counts.
        for text, s in zip(texts, slots):
            digest = document_digest(text)
            encoded = ",".join(map(str, s))
            if self.local.add(text, s, digest) and s:
                self._unconfirmed[digest] = encoded
            if s:
                batch.append((digest, encoded))
        if not batch:
            return
        try:
            await self._push(batch)
        except RedisUnavailable:
            self._keep(batch)

    def _keep(self, batch: list[tuple[bytes, str]]) -> None:
        overflow = len(self._pending) + len(batch) - _PENDING_LIMIT
        if overflow > 0:
            log.warning("too many documents wait for Redis; the oldest count only in this replica's file",
                        extra={"event": "idf_pending_full", "model": self.model, "limit": _PENDING_LIMIT})
            for _ in range(min(overflow, len(self._pending))):
                self._unconfirmed.pop(self._pending.popleft()[0], None)
        self._pending.extend(batch)
        self.metrics.idf_pending.labels(self.model).set(len(self._pending))

    async def _push(self, batch: list[tuple[bytes, str]]) -> int:
        """Add documents to the shared counts, creating or joining the state first where needed."""
        args = [part for pair in batch for part in pair]
        for _ in range(3):
            epoch = self._joined or ""
            added = await self.link.call("idf_add", lambda client: self._add(keys=self.keys[:3], args=[epoch, *args]))
            if added == scripts.MISSING:
                await self._create_state()
            elif added == scripts.OTHER_EPOCH:
                version = await self._version()
                if version is not None:
                    await self._join(version)
            else:
                for digest, _ in batch:
                    self._unconfirmed.pop(digest, None)
                return int(added)
        raise StateReplaced("the shared IDF state kept changing during one update")

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
        """Send what is pending, join a new state, then fetch the counts if they changed. Raises
        RedisUnavailable."""
        await self._flush_pending()
        version = await self._version()
        if version is None:
            await self._create_state()
            version = await self._version()
            if version is None:
                return  # lost again at once: the next refresh
        if version.epoch != self._joined:
            await self._join(version)
        elif self.snapshot is not None and (version.epoch, version.generation) == (self.snapshot.epoch,
                                                                                    self.snapshot.generation):
            return
        snapshot = await self._fetch()
        # A state created again between joining and fetching is for the next refresh to join.
        if snapshot is not None and snapshot.epoch == self._joined:
            self.snapshot = snapshot
            self._show()
            await asyncio.to_thread(self._save_snapshot)

    async def _version(self) -> Version | None:
        fields = ("epoch", "generation", "seed_epoch", "seed_generation", "seed_documents", "seed_kept")
        epoch, generation, seed_epoch, seed_generation, seed_documents, seed_kept = await self.link.call(
            "idf_version", lambda client: client.hmget(self.keys[2], *fields))
        if epoch is None:
            return None
        # States made before seeds were recorded have none: no snapshot can improve them.
        return Version(epoch.decode(), int(generation), (seed_epoch or b"").decode(),
                       int(seed_generation) if seed_generation is not None else -1,
                       int(seed_documents or 0), seed_kept == b"1")

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

    # -- a state created again ---------------------------------------------------------------------

    async def _create_state(self) -> None:
        """Create the absent shared state from the best this replica knows: its last snapshot of the
        shared counts (Redis lost its data), or its own counts and their document digests (the first
        start with Redis)."""
        known = self.snapshot
        counts, documents, digests = self.local.state()
        from_snapshot = known is not None and known.documents >= documents
        if from_snapshot:
            counts, documents = known.counts, known.documents
        else:
            # Documents not yet confirmed are added after the state exists, not seeded: a snapshot
            # that replaces this seed later would otherwise drop them, marked seen, for good. Read
            # with the counts, no await between, so both describe the same documents.
            counts, documents, digests = self._without_unconfirmed(counts, documents, digests)
        seed = (known.epoch, known.generation) if from_snapshot else ("", -1)
        epoch, generation = secrets.token_hex(8), known.generation + 1 if known is not None else 0
        created = await self.link.call("idf_create", lambda client: self._create(
            keys=self.keys, args=[epoch, generation, documents, _encode(counts), *seed]))
        if not created:
            return  # another replica was first: joining it is the caller's next step
        log.warning("created the shared IDF state in Redis", extra={
            "event": "idf_state_created", "model": self.model, "documents": documents,
            "from": "the last shared snapshot" if from_snapshot else "this replica's counts",
            "seed_generation": seed[1]})
        # Seeded from this replica's own confirmed counts: exactly those documents are in the seed.
        await self._join(Version(epoch, generation, *seed, documents, True),
                         seeded_with=None if from_snapshot else digests)

    def _without_unconfirmed(self, counts: np.ndarray, documents: int,
                             digests: list[bytes]) -> tuple[np.ndarray, int, list[bytes]]:
        # Only those in the own counts: after a lost counts file, waiting documents may not be.
        known = set(digests)
        left_out = [slots for digest, slots in self._unconfirmed.items() if digest in known]
        for slots in left_out:
            counts[[int(slot) for slot in slots.split(",") if slot]] -= 1
        return counts, documents - len(left_out), [d for d in digests if d not in self._unconfirmed]

    async def _join(self, version: Version, seeded_with: list[bytes] | None = None) -> None:
        """Bring this replica's knowledge to a state it has not joined yet: mark its documents seen
        (they are in the seed, so embedding them again must not count them twice), and replace the
        seed by this replica's snapshot when that is a newer one of the same previous state, or one
        holding more documents than a seed of one replica's own counts."""
        async with self._joining:
            if self._joined == version.epoch:
                return
            known = self.snapshot
            if seeded_with is not None:
                await self._mark(version.epoch, seeded_with)
            elif known is not None and self._seed_will_hold(version, known):
                # Without a snapshot this replica never shared counts: its documents are in no seed.
                # Marked before the seed is replaced, so that another replica embedding one of them
                # in between does not count it a second time.
                _, _, digests = self.local.state()
                await self._mark(version.epoch, [d for d in digests if d not in self._unconfirmed])
                if not version.seed_epoch or (known.epoch == version.seed_epoch
                                              and known.generation > version.seed_generation):
                    await self._improve_seed(version, known)
            self._joined = version.epoch
        log.info("joined the shared IDF state", extra={"event": "idf_state_joined", "model": self.model,
                                                       "seed_generation": version.seed_generation})

    @staticmethod
    def _seed_will_hold(version: Version, known: Snapshot) -> bool:
        """Whether this replica's documents are in the state's seed once it has joined: seeded from a
        snapshot, or from one replica's own counts that this snapshot is about to replace (a seed of
        epoch "" only ever gives way to more documents, so a smaller snapshot leaves it, and its
        documents, out)."""
        if version.seed_epoch:
            return True
        return version.seed_kept and known.documents > version.seed_documents

    async def _mark(self, epoch: str, digests: list[bytes]) -> None:
        # In pieces that each fit in one call's time. A piece lost to an outage is sent again at the
        # next join (the epoch is not joined until all went).
        for start in range(0, len(digests), _MARK_PIECE):
            piece = digests[start : start + _MARK_PIECE]
            result = await self.link.call("idf_mark_seen", lambda client: self._mark_seen(
                keys=[self.keys[0], self.keys[2]], args=[epoch, *piece]))
            if result < 0:
                raise StateReplaced("the shared IDF state was created again while joining it")

    async def _improve_seed(self, version: Version, known: Snapshot) -> None:
        improved = await self.link.call("idf_upgrade", lambda client: self._upgrade(
            keys=self.keys[1:], args=[version.epoch, known.epoch, known.generation, known.documents,
                                      _encode(known.counts)]))
        if improved == 1:
            log.warning("replaced the shared IDF's seed by a newer snapshot", extra={
                "event": "idf_seed_improved", "model": self.model, "from_generation": version.seed_generation,
                "to_generation": known.generation})
        elif improved < 0:
            raise StateReplaced("the shared IDF state was created again while joining it")

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


def _encode(counts: np.ndarray) -> str:
    """Non-zero counts as the scripts take them: "slot:count,..."."""
    return ",".join(f"{slot}:{counts[slot]}" for slot in np.flatnonzero(counts))

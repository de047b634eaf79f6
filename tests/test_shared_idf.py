"""The shared query IDF against a real Redis: counted once across replicas, equal snapshots, nothing lost."""

from __future__ import annotations

import asyncio
import secrets
import shutil
from pathlib import Path

import numpy as np
import pytest
from redis.crc import key_slot

from embed_server import shared_idf
from embed_server.backends.lexical import DocumentFrequencies, HashedLexicalEncoder, bm25_idf
from embed_server.metrics import Metrics
from embed_server.redis_link import RedisLink
from embed_server.shared_idf import SharedDocumentFrequencies
from tests.redis_server import RedisServer

DIM = 512
ENCODER = HashedLexicalEncoder(DIM)


def documents(prefix: str, n: int) -> list[str]:
    return [f"{prefix} document {i} about topic {i % 5} and word{i}" for i in range(n)]


class Replica:
    """One replica's shared IDF, as the registry builds it, with its own state folder."""

    def __init__(self, redis_url: str, state: Path, prefix: str, local_texts: list[str] = ()) -> None:
        self.metrics = Metrics(shared=True)
        self.link = RedisLink(redis_url, self.metrics, timeout=0.5, retry_seconds=0.5)
        self.local = DocumentFrequencies(DIM, state / "local.npz")
        for text in local_texts:
            self.local.add(text, ENCODER.slots(text))
        self.idf = SharedDocumentFrequencies("m", self.local, self.link, self.metrics, prefix=prefix,
                                             refresh_seconds=3600, snapshot_path=state / "shared.npz")

    async def record(self, texts: list[str]) -> None:
        # As the hybrid model does: the shared counts add the documents to this replica's own too.
        await self.idf.record(texts, [ENCODER.slots(text) for text in texts])

    async def close(self) -> None:
        await self.idf.close()
        await self.link.close()


def prefix() -> str:
    return f"t{secrets.token_hex(4)}:"  # each test its own keys in the module's Redis


def shared_meta(redis_server: RedisServer, key_prefix: str) -> dict[bytes, bytes]:
    with redis_server.client() as client:
        return client.hgetall(f"{key_prefix}{{idf:m:{DIM}}}:meta")


def test_two_replicas_count_each_document_once_and_agree(redis_server: RedisServer, tmp_path: Path) -> None:
    p = prefix()

    async def run() -> None:
        a, b = Replica(redis_server.url, tmp_path / "a", p), Replica(redis_server.url, tmp_path / "b", p)
        await a.idf.start()
        await b.idf.start()
        await a.record(documents("x", 10))
        await b.record(documents("x", 10)[5:] + documents("y", 5))  # five seen by a already
        await b.record(documents("y", 5))  # Open WebUI sends a file's chunks twice
        await a.idf.refresh()
        await b.idf.refresh()
        assert a.idf.snapshot.documents == b.idf.snapshot.documents == 15
        assert (a.idf.snapshot.epoch, a.idf.snapshot.generation) == (b.idf.snapshot.epoch, b.idf.snapshot.generation)
        assert np.array_equal(a.idf.idf(), b.idf.idf())
        # Exactly what one process would have learned from the 15 distinct documents.
        alone = DocumentFrequencies(DIM, None)
        for text in documents("x", 10) + documents("y", 5):
            alone.add(text, ENCODER.slots(text))
        assert np.array_equal(a.idf.idf(), alone.idf())
        # Each replica's own view differs: without sharing, their query vectors would too.
        assert not np.array_equal(a.local.idf(), b.local.idf())
        assert a.metrics.idf_generation.labels("m")._value.get() == a.idf.snapshot.generation
        await a.close()
        await b.close()

    asyncio.run(run())


def test_a_restarted_replica_keeps_the_counts_and_answers_like_the_others(redis_server: RedisServer,
                                                                            tmp_path: Path) -> None:
    p = prefix()

    async def run() -> None:
        a = Replica(redis_server.url, tmp_path / "a", p)
        await a.idf.start()
        await a.record(documents("x", 8))
        await a.idf.refresh()
        before = a.idf.idf()
        await a.close()
        # A new replica with nothing learned must not reset the shared counts on start.
        fresh = Replica(redis_server.url, tmp_path / "fresh", p)
        await fresh.idf.start()
        assert fresh.idf.snapshot.documents == 8 and np.array_equal(fresh.idf.idf(), before)
        await fresh.close()
        # Restarted while Redis is down: the saved snapshot answers as before.
        redis_server.kill()
        try:
            again = Replica(redis_server.url, tmp_path / "a", p)
            await again.idf.start()
            assert again.idf.snapshot.documents == 8 and np.array_equal(again.idf.idf(), before)
            await again.close()
        finally:
            redis_server.start()

    asyncio.run(run())


def test_documents_embedded_while_redis_is_down_are_added_when_it_returns(redis_server: RedisServer,
                                                                          tmp_path: Path) -> None:
    p = prefix()

    async def run() -> None:
        a = Replica(redis_server.url, tmp_path / "a", p)
        await a.idf.start()
        await a.record(documents("x", 3))
        redis_server.kill()
        try:
            await a.record(documents("down", 4))
            assert a.metrics.idf_pending.labels("m")._value.get() == 4
            assert a.metrics.redis_up._value.get() == 0
            await a.close()  # a restart while Redis is still down: the pending documents go to disk
            a = Replica(redis_server.url, tmp_path / "a", p)
            await a.idf.start()
            assert a.metrics.idf_pending.labels("m")._value.get() == 4
        finally:
            redis_server.start()
        await asyncio.sleep(0.6)  # the breaker's pause
        await a.idf.refresh()
        assert a.idf.snapshot.documents == 7 and a.metrics.idf_pending.labels("m")._value.get() == 0
        assert int(shared_meta(redis_server, p)[b"documents"]) == 7
        await a.close()

    asyncio.run(run())


def test_a_lost_shared_state_is_created_again_from_what_replicas_knew(redis_server: RedisServer,
                                                                      tmp_path: Path) -> None:
    p = prefix()

    async def run() -> None:
        # First start with Redis: the state is created from this replica's own file, digests included.
        a = Replica(redis_server.url, tmp_path / "a", p, local_texts=documents("old", 6))
        await a.idf.start()
        assert a.idf.snapshot.documents == 6
        await a.record(documents("old", 6))  # known digests: not counted again
        await a.idf.refresh()
        assert a.idf.snapshot.documents == 6
        b = Replica(redis_server.url, tmp_path / "b", p)
        await b.idf.start()
        await b.record(documents("new", 4))
        await a.idf.refresh()
        await b.idf.refresh()
        known = a.idf.idf()
        # Redis loses everything: the next refresh re-creates the counts from the last snapshot, in
        # a new epoch, and the replicas still agree.
        redis_server.flush()
        await b.idf.refresh()
        await a.idf.refresh()
        assert a.idf.snapshot.documents == b.idf.snapshot.documents == 10
        assert np.array_equal(a.idf.idf(), known) and np.array_equal(b.idf.idf(), known)
        assert a.idf.snapshot.epoch == b.idf.snapshot.epoch
        await a.close()
        await b.close()

    asyncio.run(run())


def alone(texts: list[str]) -> DocumentFrequencies:
    """What one process learns from these documents: the counts the replicas must agree on."""
    frequencies = DocumentFrequencies(DIM, None)
    for text in texts:
        frequencies.add(text, ENCODER.slots(text))
    return frequencies


def test_documents_embedded_again_after_redis_lost_its_data_count_once(redis_server: RedisServer, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    p = prefix()
    monkeypatch.setattr(shared_idf, "_MARK_PIECE", 4)  # several pieces per replica, as with many documents

    async def run() -> None:
        a, b = Replica(redis_server.url, tmp_path / "a", p), Replica(redis_server.url, tmp_path / "b", p)
        await a.idf.start()
        await b.idf.start()
        await a.record(documents("x", 6))
        await b.record(documents("y", 4))
        await a.idf.refresh()
        await b.idf.refresh()
        assert a.idf.snapshot.documents == 10
        redis_server.flush()
        await a.idf.refresh()  # a re-creates the state from its snapshot
        assert a.idf.snapshot.documents == 10
        # b learns of the new state from its next write: its own documents must not count again,
        # a document new to everyone must count once.
        await b.record(documents("y", 4) + documents("fresh", 1))
        await b.record(documents("x", 6))  # only a had seen these; a joined when it created the state
        await a.record(documents("y", 2) + documents("new", 3))
        await a.idf.refresh()
        await b.idf.refresh()
        expected = alone(documents("x", 6) + documents("y", 4) + documents("fresh", 1) + documents("new", 3))
        assert a.idf.snapshot.documents == b.idf.snapshot.documents == expected.documents == 14
        assert int(shared_meta(redis_server, p)[b"documents"]) == 14
        assert np.array_equal(a.idf.idf(), expected.idf()) and np.array_equal(b.idf.idf(), expected.idf())
        await a.close()
        await b.close()

    asyncio.run(run())


def test_the_newest_snapshot_wins_over_a_stale_one(redis_server: RedisServer, tmp_path: Path) -> None:
    p = prefix()

    async def run() -> None:
        a, c = Replica(redis_server.url, tmp_path / "a", p), Replica(redis_server.url, tmp_path / "c", p)
        await a.idf.start()
        await c.idf.start()
        await a.record(documents("x", 5))
        await c.idf.refresh()
        await c.close()  # c goes down holding the counts of 5 documents
        shutil.copytree(tmp_path / "c", tmp_path / "d")  # another replica down since that moment
        await a.record(documents("y", 5))
        await a.idf.refresh()
        newest = a.idf.snapshot
        assert newest.documents == 10
        redis_server.flush()
        # c comes back first and re-creates the state from its stale snapshot.
        c = Replica(redis_server.url, tmp_path / "c", p)
        await c.idf.start()
        assert c.idf.snapshot.documents == 5
        await c.record(documents("new", 2))  # counted in the new state: must stay counted
        await a.idf.refresh()  # a holds a newer snapshot of the same state: it wins
        await c.idf.refresh()
        expected = alone(documents("x", 5) + documents("y", 5) + documents("new", 2))
        assert a.idf.snapshot.documents == c.idf.snapshot.documents == 12
        assert np.array_equal(a.idf.idf(), expected.idf()) and np.array_equal(c.idf.idf(), expected.idf())
        assert int(shared_meta(redis_server, p)[b"seed_generation"]) == newest.generation
        # Once only, and an older snapshot arriving later cannot undo it.
        d = Replica(redis_server.url, tmp_path / "d", p)
        await d.idf.start()
        await a.idf.refresh()
        assert a.idf.snapshot.documents == d.idf.snapshot.documents == 12
        assert np.array_equal(d.idf.idf(), expected.idf())
        await a.record(documents("y", 5))  # a's own, from before the loss: already counted
        await d.idf.refresh()
        assert d.idf.snapshot.documents == 12
        for replica in (a, c, d):
            await replica.close()

    asyncio.run(run())


def test_the_shared_keys_live_in_one_cluster_slot(tmp_path: Path) -> None:
    async def run() -> None:
        replica = Replica("redis://127.0.0.1:1/0", tmp_path, "p:")  # never called: nothing to reach
        assert len(replica.idf.keys) == 4
        assert len({key_slot(key.encode()) for key in replica.idf.keys}) == 1
        await replica.link.close()

    asyncio.run(run())


def test_the_idf_is_a_pure_function_of_the_counts() -> None:
    counts = np.array([0, 1, 5, 10], dtype=np.int64)
    assert np.array_equal(bm25_idf(counts, 10), bm25_idf(counts.copy(), 10))
    assert np.array_equal(bm25_idf(counts, 0), np.ones(4, dtype=np.float32))
    assert bm25_idf(counts, 10)[0] > bm25_idf(counts, 10)[3]


def test_a_seed_from_a_replica_without_a_snapshot_gives_way_to_the_shared_history(redis_server: RedisServer,
                                                                                  tmp_path: Path) -> None:
    p = prefix()

    async def run() -> None:
        a, b = Replica(redis_server.url, tmp_path / "a", p), Replica(redis_server.url, tmp_path / "b", p)
        await a.idf.start()
        await b.idf.start()
        await a.record(documents("x", 6))
        await b.record(documents("y", 4))
        await a.idf.refresh()
        await b.idf.refresh()
        history = a.idf.snapshot
        assert history.documents == 10
        redis_server.flush()  # Redis comes back without its data...
        redis_server.kill()
        try:
            # ...and a pod added meanwhile, with no snapshot, is the first to notice. Its own file
            # holds two of b's documents (as one whose snapshot file was set aside), and it embeds a
            # new one that waits for Redis.
            n = Replica(redis_server.url, tmp_path / "n", p, local_texts=documents("y", 2))
            await n.idf.start()
            await n.record(documents("fresh", 1))
        finally:
            redis_server.start()
        await asyncio.sleep(0.6)  # the breaker's pause
        await n.idf.refresh()
        meta = shared_meta(redis_server, p)
        assert meta[b"seed_epoch"] == b"" and int(meta[b"documents"]) == 3
        # a's snapshot holds more documents: it replaces that seed, and the document counted since stays.
        await a.idf.refresh()
        await b.idf.refresh()
        expected = alone(documents("x", 6) + documents("y", 4) + documents("fresh", 1))
        assert a.idf.snapshot.documents == b.idf.snapshot.documents == 11
        assert shared_meta(redis_server, p)[b"seed_epoch"] == history.epoch.encode()
        # Every replica marked its documents seen: embedding them again counts nothing.
        await a.record(documents("x", 6))
        await b.record(documents("y", 4))
        await n.record(documents("y", 2) + documents("fresh", 1))
        for replica in (a, b, n):
            await replica.idf.refresh()
        for replica in (a, b, n):
            assert replica.idf.snapshot.documents == 11
            assert np.array_equal(replica.idf.idf(), expected.idf())
        for replica in (a, b, n):
            await replica.close()

    asyncio.run(run())


def test_a_smaller_snapshot_leaves_a_replicas_own_seed_and_its_documents_count_once(
        redis_server: RedisServer, tmp_path: Path) -> None:
    p = prefix()

    async def run() -> None:
        a = Replica(redis_server.url, tmp_path / "a", p)
        await a.idf.start()
        await a.record(documents("x", 3))
        await a.idf.refresh()
        redis_server.flush()
        # A replica without a snapshot but with more documents of its own is first: its seed stays,
        # and a's documents, which are not in it, are not marked seen.
        n = Replica(redis_server.url, tmp_path / "n", p, local_texts=documents("own", 5))
        await n.idf.start()
        await a.idf.refresh()
        assert a.idf.snapshot.documents == 5
        assert shared_meta(redis_server, p)[b"seed_epoch"] == b""
        await a.record(documents("x", 3))
        await a.idf.refresh()
        assert a.idf.snapshot.documents == 8
        assert np.array_equal(a.idf.idf(), alone(documents("own", 5) + documents("x", 3)).idf())
        await a.close()
        await n.close()

    asyncio.run(run())


def test_a_seed_stored_by_an_earlier_release_without_its_counts_is_never_replaced(redis_server: RedisServer,
                                                                                  tmp_path: Path) -> None:
    p = prefix()

    async def run() -> None:
        a = Replica(redis_server.url, tmp_path / "a", p)
        await a.idf.start()
        await a.record(documents("x", 6))
        await a.idf.refresh()
        redis_server.flush()
        # What an earlier release created from one replica's own two documents: no stored seed.
        own = alone(documents("own", 2))
        tag = f"{p}{{idf:m:{DIM}}}"
        with redis_server.client() as client:
            client.hset(f"{tag}:counts", mapping={int(s): int(c) for s, c in enumerate(own.counts) if c})
            client.hset(f"{tag}:meta", mapping={"epoch": "earlier", "generation": 0, "documents": 2,
                                                "seed_epoch": "", "seed_generation": -1, "seed_documents": 2})
        # Replacing it would subtract nothing and count its documents twice: it stays.
        await a.idf.refresh()
        assert a.idf.snapshot.epoch == "earlier" and a.idf.snapshot.documents == 2
        assert np.array_equal(a.idf.idf(), own.idf())
        await a.close()

    asyncio.run(run())

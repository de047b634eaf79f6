"""The shared query IDF against a real Redis: counted once across replicas, equal snapshots, nothing lost."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import numpy as np

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
        slots = [ENCODER.slots(text) for text in texts]
        for text, s in zip(texts, slots):
            self.local.add(text, s)
        await self.idf.record(texts, slots)

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


def test_the_idf_is_a_pure_function_of_the_counts() -> None:
    counts = np.array([0, 1, 5, 10], dtype=np.int64)
    assert np.array_equal(bm25_idf(counts, 10), bm25_idf(counts.copy(), 10))
    assert np.array_equal(bm25_idf(counts, 0), np.ones(4, dtype=np.float32))
    assert bm25_idf(counts, 10)[0] > bm25_idf(counts, 10)[3]

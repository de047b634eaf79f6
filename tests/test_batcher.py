"""How the batcher groups texts: by length, under the token budget, oldest first, bounded."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from embed_server.batcher import BatchStats, LengthSortedBatcher
from embed_server.errors import QueueFull, RequestTooLarge


class RecordingBackend:
    """A backend whose vector for a text is its token ids' sum: checkable, and records batches."""

    dimension = 1
    max_tokens = 512

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def encode(self, batch: list[list[int]]) -> np.ndarray:
        self.batches.append([len(ids) for ids in batch])
        return np.array([[float(sum(ids))] for ids in batch], dtype=np.float32)


def run(coro):
    return asyncio.run(coro)


async def _with_batcher(backend, body, **limits):
    options = {"max_batch_tokens": 64, "max_batch_size": 4, "max_queued_texts": 100} | limits
    stats: list[BatchStats] = []
    with ThreadPoolExecutor(1) as executor:
        batcher = LengthSortedBatcher(backend, executor, on_batch=stats.append, **options)
        batcher.start()
        try:
            return await body(batcher), stats
        finally:
            await batcher.stop()


def test_results_come_back_in_request_order() -> None:
    backend = RecordingBackend()
    texts = [[i] * (1 + i % 7) for i in range(20)]

    async def body(batcher):
        return await batcher.embed(texts)

    vectors, _ = run(_with_batcher(backend, body, max_batch_tokens=10_000, max_batch_size=32))
    assert vectors[:, 0].tolist() == [float(sum(ids)) for ids in texts]


def test_concurrent_requests_are_merged_into_length_sorted_batches_under_the_budget() -> None:
    backend = RecordingBackend()
    lengths = [3, 15, 4, 16, 5, 14, 3, 15]

    async def body(batcher):
        return await asyncio.gather(*(batcher.embed([[1] * n]) for n in lengths))

    _, stats = run(_with_batcher(backend, body))
    # Eight one-text requests, two forward passes of similar lengths, each within 64 padded tokens.
    assert backend.batches == [[3, 3, 4, 5], [14, 15, 15, 16]]
    assert sum(s.real_tokens for s in stats) == sum(lengths)


def test_the_oldest_text_is_never_starved() -> None:
    backend = RecordingBackend()

    async def body(batcher):
        blocker = asyncio.create_task(batcher.embed([[1] * 8]))
        await asyncio.sleep(0)
        long_one = asyncio.create_task(batcher.embed([[1] * 60]))
        shorts = [asyncio.create_task(batcher.embed([[1] * 2])) for _ in range(20)]
        await asyncio.gather(blocker, long_one, *shorts)

    run(_with_batcher(backend, body))
    # After the first batch, the long text (oldest waiting) runs before the short ones.
    assert backend.batches[1] == [60]


def test_full_queue_raises_with_retry_after() -> None:
    backend = RecordingBackend()

    async def body(batcher):
        first = asyncio.create_task(batcher.embed([[1]] * 6))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull) as full:
            await batcher.embed([[1]] * 6)
        await first
        return full.value

    error, _ = run(_with_batcher(backend, body, max_queued_texts=10, retry_after_seconds=7))
    assert error.headers == {"Retry-After": "7"}


def test_a_request_bigger_than_the_queue_is_refused_outright() -> None:
    async def body(batcher):
        with pytest.raises(RequestTooLarge):
            await batcher.embed([[1]] * 11)

    run(_with_batcher(RecordingBackend(), body, max_queued_texts=10))


def test_cancelled_requests_leave_the_queue() -> None:
    backend = RecordingBackend()

    async def body(batcher):
        blocker = asyncio.create_task(batcher.embed([[1] * 8]))
        await asyncio.sleep(0)
        doomed = asyncio.create_task(batcher.embed([[9] * 5] * 3))
        await asyncio.sleep(0)
        doomed.cancel()
        await blocker
        await asyncio.sleep(0.05)
        return batcher.depth

    depth, _ = run(_with_batcher(backend, body))
    assert depth == 0
    assert [5, 5, 5] not in backend.batches


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on() -> None:
    class FailsOnLongTexts(RecordingBackend):
        def encode(self, batch):
            if max(len(ids) for ids in batch) > 10:
                raise RuntimeError("boom")
            return super().encode(batch)

    async def body(batcher):
        with pytest.raises(RuntimeError):
            await batcher.embed([[1] * 20])
        return await batcher.embed([[2] * 3])

    vectors, _ = run(_with_batcher(FailsOnLongTexts(), body))
    assert vectors.tolist() == [[6.0]]

"""Merges texts from concurrent requests into length-sorted batches under a token budget.

Requests put token-id lists into one bounded pool per model. A single worker picks the
oldest waiting text and the texts closest to it in length, up to ``max_batch_tokens``
padded tokens, runs that batch on the inference thread, and repeats. Sorting by length
keeps padding small (on this CPU, sorted batches run twice as fast as mixed ones);
starting from the oldest text keeps waiting times fair.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from embed_server.backends import EmbeddingBackend
from embed_server.errors import QueueFull, RequestTooLarge

log = logging.getLogger(__name__)


@dataclass(order=True)
class _Job:
    length: int
    order: int
    ids: list[int] = field(compare=False)
    future: asyncio.Future = field(compare=False)


@dataclass
class BatchStats:
    """What one forward pass looked like, for metrics."""

    size: int
    padded_tokens: int
    real_tokens: int
    seconds: float


class LengthSortedBatcher:
    def __init__(
        self,
        backend: EmbeddingBackend,
        executor: Executor,
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        max_queued_texts: int,
        retry_after_seconds: int = 2,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self._backend = backend
        self._executor = executor
        self._max_batch_tokens = max_batch_tokens
        self._max_batch_size = max_batch_size
        self._max_queued_texts = max_queued_texts
        self._retry_after = retry_after_seconds
        self._on_batch = on_batch
        self._pool: list[_Job] = []  # sorted by (length, order)
        self._arrivals = itertools.count()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Texts waiting for a forward pass."""
        return len(self._pool)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        for job in self._pool:
            job.future.cancel()
        self._pool.clear()

    async def embed(self, batch: list[list[int]]) -> np.ndarray:
        """Vectors for token-id lists, in order. Raises QueueFull when the pool cannot take them all."""
        if len(batch) > self._max_queued_texts:
            raise RequestTooLarge(
                f"This request has {len(batch)} distinct texts; the server queues at most {self._max_queued_texts}. "
                "Split it into smaller requests."
            )
        if self.depth + len(batch) > self._max_queued_texts:
            raise QueueFull(
                f"The server is busy: {self.depth} texts are waiting (limit {self._max_queued_texts}). "
                f"Retry after {self._retry_after} s.",
                headers={"Retry-After": str(self._retry_after)},
            )
        loop = asyncio.get_running_loop()
        jobs = [_Job(len(ids), next(self._arrivals), ids, loop.create_future()) for ids in batch]
        for job in jobs:
            bisect.insort(self._pool, job)
        self._wakeup.set()
        try:
            vectors = await asyncio.gather(*(job.future for job in jobs))
        except asyncio.CancelledError:
            # The client went away: drop its texts that have not run yet.
            for job in jobs:
                job.future.cancel()
            self._pool = [job for job in self._pool if not job.future.cancelled()]
            raise
        return np.stack(vectors)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pool:
                jobs = self._take_batch()
                if not jobs:
                    continue
                started = loop.time()
                try:
                    vectors = await loop.run_in_executor(self._executor, self._backend.encode, [j.ids for j in jobs])
                except Exception as error:  # a bad batch fails its requests, not the worker
                    log.exception("batch failed", extra={"batch_size": len(jobs)})
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(error)
                    continue
                for job, vector in zip(jobs, vectors):
                    if not job.future.done():
                        job.future.set_result(vector)
                if self._on_batch:
                    width = max(j.length for j in jobs)
                    self._on_batch(BatchStats(len(jobs), width * len(jobs), sum(j.length for j in jobs), loop.time() - started))

    def _take_batch(self) -> list[_Job]:
        """Remove and return the oldest job with its nearest neighbours in length."""
        self._pool = [job for job in self._pool if not job.future.cancelled()]
        if not self._pool:
            return []
        pool = self._pool
        oldest = min(range(len(pool)), key=lambda i: pool[i].order)
        anchor = pool[oldest].length
        low, high = oldest, oldest + 1
        while high - low < self._max_batch_size:
            sides = []
            if low > 0:
                sides.append((anchor - pool[low - 1].length, "left"))
            if high < len(pool):
                sides.append((pool[high].length - anchor, "right"))
            for _, side in sorted(sides):
                # The pool is sorted, so the widest text is the rightmost one.
                width = pool[high].length if side == "right" else pool[high - 1].length
                if width * (high - low + 1) <= self._max_batch_tokens:
                    low, high = (low - 1, high) if side == "left" else (low, high + 1)
                    break
            else:
                break
        jobs = self._pool[low:high]
        del self._pool[low:high]
        return jobs

"""The one connection to the shared Redis: short timeouts and a circuit breaker.

Redis only ever makes the server faster or lets replicas agree; it is never needed to answer. So
every call is bounded by ``timeout`` and, after a failure, Redis is not called at all for
``retry_seconds`` (requests go straight to the model instead of each waiting for a timeout); then
one probe decides whether it is back. The state is logged once per change and shown in /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from embed_server.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")


class RedisUnavailable(RuntimeError):
    """Redis did not answer in time, refused, or is being left alone after a recent failure."""


def redact_url(url: str) -> str:
    """Only where ``url`` points (scheme, host, port, database), safe for logs, errors and /metrics: redis-py
    also takes a password as the user part alone (``redis://secret@host``) or in the query (``?password=``)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        credentials = "***@" if "@" in parts.netloc else ""
        return urlunsplit((parts.scheme, f"{credentials}{host}{port}", parts.path, "", ""))
    except ValueError:
        return "<unparseable redis url>"


class RedisLink:
    def __init__(self, url: str, metrics: Metrics, *, timeout: float, retry_seconds: float) -> None:
        self.address = redact_url(url)
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self.metrics = metrics
        # One reconnect on a dropped connection (a Redis that restarted leaves dead pooled
        # connections behind); anything longer is the breaker's job, not a retry loop's.
        self.client = aioredis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0,
            retry=Retry(NoBackoff(), 1),
        )
        self.up: bool | None = None  # unknown until the first call
        self._closed_until = 0.0
        self._probe: asyncio.Task[None] | None = None
        metrics.redis_up.set(0)

    async def call(self, operation: str, action: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run ``action`` on the client within the timeout. Raises RedisUnavailable instead of waiting
        on a Redis that failed within the last ``retry_seconds``."""
        if time.monotonic() < self._closed_until:
            raise RedisUnavailable(f"Redis at {self.address} is down; retrying after a pause")
        try:
            # The socket timeouts bound each read; this bounds the whole call (reconnect included).
            result = await asyncio.wait_for(action(self.client), self.timeout * 3)
        except (RedisError, OSError, asyncio.TimeoutError) as error:
            self.metrics.redis_errors.labels(operation).inc()
            self._mark_down(operation, error)
            raise RedisUnavailable(f"Redis at {self.address}: {type(error).__name__}") from error
        self._mark_up()
        return result

    def start(self) -> None:
        """Probe Redis in the background while it is down, so /metrics and the breaker learn that it
        is back even when no request happens to try it."""
        self._probe = asyncio.create_task(self._probe_while_down(), name="redis-probe")

    async def _probe_while_down(self) -> None:
        while True:
            await asyncio.sleep(self.retry_seconds / 2)
            if self.up is not True and time.monotonic() >= self._closed_until:
                try:
                    await self.call("ping", lambda client: client.ping())
                except RedisUnavailable:
                    pass

    def _mark_down(self, operation: str, error: BaseException) -> None:
        self._closed_until = time.monotonic() + self.retry_seconds
        self.metrics.redis_up.set(0)
        if self.up is not False:
            self.up = False
            log.warning("Redis is unreachable; serving without it", extra={
                "event": "redis_down", "redis": self.address, "operation": operation,
                "error": f"{type(error).__name__}: {error}" if not isinstance(error, asyncio.TimeoutError)
                else "timed out", "retry_seconds": self.retry_seconds})

    def _mark_up(self) -> None:
        self._closed_until = 0.0
        self.metrics.redis_up.set(1)
        if self.up is not True:
            log.info("Redis is reachable", extra={"event": "redis_up", "redis": self.address,
                                                  "was": "down" if self.up is False else "unknown"})
            self.up = True

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        try:
            await self.client.aclose()
        except (RedisError, OSError):
            pass  # closing a dead connection: nothing left to release

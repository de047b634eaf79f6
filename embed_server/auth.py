"""Optional Bearer API keys, compared in constant time, with optional per-key rate limits."""

from __future__ import annotations

import hashlib
import hmac
import math
import time

from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from embed_server.errors import AuthenticationFailed, RateLimited


class KeyGuard:
    def __init__(self, api_keys: list[str], rate_limit: str | None) -> None:
        self._keys = [key.encode() for key in api_keys]
        self._limit = parse(rate_limit) if rate_limit else None
        self._limiter = MovingWindowRateLimiter(MemoryStorage()) if self._limit else None

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def admit(self, authorization: str | None, client_host: str | None) -> None:
        """Raise AuthenticationFailed or RateLimited unless the request may go on."""
        identity = self._authenticate(authorization) if self._keys else f"host:{client_host}"
        if self._limiter and not self._limiter.hit(self._limit, identity):
            reset_at, _ = self._limiter.get_window_stats(self._limit, identity)
            wait = max(1, math.ceil(reset_at - time.time()))
            raise RateLimited(
                f"Rate limit reached: {self._limit}. Retry after {wait} s.", headers={"Retry-After": str(wait)}
            )

    def _authenticate(self, authorization: str | None) -> str:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationFailed(
                "Missing API key. Send it as 'Authorization: Bearer <key>'.", headers={"WWW-Authenticate": "Bearer"}
            )
        presented = token.strip().encode()
        # Compare against every key so the time taken does not tell which one was close.
        matches = [hmac.compare_digest(presented, key) for key in self._keys]
        if not any(matches):
            raise AuthenticationFailed("Incorrect API key provided.", headers={"WWW-Authenticate": "Bearer"})
        return "key:" + hashlib.sha256(presented).hexdigest()[:16]

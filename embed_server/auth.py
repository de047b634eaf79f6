"""Who may call what, decided from the request's headers before its body is read.

Three kinds of route:
- keyed (`/v1/embeddings`, `/v1/rerank`, `/v1/models`): the server's own API keys, when configured;
- user (`/v1/search`): a Bearer credential that is either an admin key or the caller's own Open WebUI
  key or token, checked against Open WebUI by the route itself (routes that return stored text);
- open: health, readiness, metrics and the API docs.

Failed checks are counted per client address; once an address has too many, its further failures get 429
until the window passes, so keys cannot be guessed at the speed of the network. A valid credential is
still served from that address (Open WebUI may share it with a guesser).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from enum import Enum

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from embed_server.errors import APIError, AuthenticationFailed, RateLimited

KEYED_ROUTES = ("/v1/embeddings", "/v1/rerank", "/v1/models")
USER_ROUTES = ("/v1/search",)


class Access(Enum):
    OPEN = "open"
    KEY = "key"
    USER = "user"


def under(path: str, routes: tuple[str, ...]) -> bool:
    """Whether ``path`` is one of ``routes`` or below one of them."""
    return any(path == route or path.startswith(route + "/") for route in routes)


def access_for(path: str, keyed: tuple[str, ...] = KEYED_ROUTES, user: tuple[str, ...] = USER_ROUTES) -> Access:
    if under(path, keyed):
        return Access.KEY
    if under(path, user):
        return Access.USER
    return Access.OPEN


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; AuthenticationFailed when there is none."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("Missing API key. Send it as 'Authorization: Bearer <key>'.",
                                   headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


def _wait_seconds(limiter: MovingWindowRateLimiter, limit: RateLimitItem, identity: str) -> int:
    reset_at, _ = limiter.get_window_stats(limit, identity)
    return max(1, math.ceil(reset_at - time.time()))


class KeySet:
    """A set of secret keys, compared in constant time."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def holds(self, token: str) -> bool:
        presented = token.encode()
        # Compare against every key so the time taken does not tell which one was close.
        matches = [hmac.compare_digest(presented, key) for key in self._keys]
        return any(matches)


class KeyGuard:
    """The server's own API keys, with optional per-key rate limits."""

    def __init__(self, api_keys: list[str], rate_limit: str | None) -> None:
        self._keys = KeySet(api_keys)
        self._limit = parse(rate_limit) if rate_limit else None
        self._limiter = MovingWindowRateLimiter(MemoryStorage()) if self._limit else None

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def admit(self, authorization: str | None, client_host: str | None) -> None:
        """Raise AuthenticationFailed or RateLimited unless the request may go on."""
        identity = self.authenticate(authorization) if self._keys else f"host:{client_host}"
        self.count(identity)

    def count(self, identity: str) -> None:
        """One request against ``identity``'s rate limit; RateLimited when it is spent."""
        if self._limiter and self._limit and not self._limiter.hit(self._limit, identity):
            wait = _wait_seconds(self._limiter, self._limit, identity)
            raise RateLimited(f"Rate limit reached: {self._limit}. Retry after {wait} s.",
                              headers={"Retry-After": str(wait)})

    def authenticate(self, authorization: str | None) -> str:
        token = bearer_token(authorization)
        if not self._keys.holds(token):
            raise AuthenticationFailed("Incorrect API key provided.", headers={"WWW-Authenticate": "Bearer"})
        return key_identity(token)


def key_identity(token: str) -> str:
    """A stable label for a credential that does not reveal it (rate limits, caches)."""
    return "key:" + hashlib.sha256(token.encode()).hexdigest()[:16]


class FailedAttempts:
    """Failed credential checks per client address, and the 429 for addresses with too many."""

    def __init__(self, limit: str) -> None:
        self._limit = parse(limit)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def record(self, client_host: str | None) -> None:
        self._limiter.hit(self._limit, f"host:{client_host}")

    def refuse(self, client_host: str | None, error: APIError) -> APIError:
        """The answer to a failed credential check: counted, or 429 once this address has used up its failures.
        Only failures are judged here, so a valid credential from a busy shared address is never locked out."""
        try:
            self.check(client_host)
        except RateLimited as limited:
            return limited
        self.record(client_host)
        return error

    def check(self, client_host: str | None) -> None:
        """RateLimited when this address has used up its failed attempts."""
        identity = f"host:{client_host}"
        if not self._limiter.test(self._limit, identity):
            wait = _wait_seconds(self._limiter, self._limit, identity)
            raise RateLimited(f"Too many failed authentication attempts from this address. Retry after {wait} s.",
                              headers={"Retry-After": str(wait)})


class AccessGate:
    """Admits or refuses a request from its path and headers alone, before its body is read."""

    def __init__(self, keys: KeyGuard, failures: FailedAttempts, *, keyed: tuple[str, ...] = KEYED_ROUTES,
                 user: tuple[str, ...] = USER_ROUTES) -> None:
        self.keys = keys
        self.failures = failures
        self.keyed, self.user = keyed, user

    def refusal(self, path: str, authorization: str | None, client_host: str | None) -> APIError | None:
        access = access_for(path, self.keyed, self.user)
        if access is Access.OPEN:
            return None
        try:
            if access is Access.KEY:
                self.keys.admit(authorization, client_host)
            else:
                # Checked against Open WebUI or the admin keys by the route; rate-limited like a key here.
                self.keys.count(key_identity(bearer_token(authorization)))
        except AuthenticationFailed as error:
            return self.failures.refuse(client_host, error)
        except RateLimited as error:
            return error
        return None

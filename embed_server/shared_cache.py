"""The embedding cache every replica shares, in Redis, behind each replica's in-process cache.

A key is an HMAC, with a secret that never goes to Redis (embed_server.cache_secret), of everything
that decides the vector: the model's settings, its weights and where and how it runs (runtime,
device kind, precision, library version), the input type and the exact text or token ids. Never a
text, nor a plain hash of one: keys are listed by anyone with access to Redis, and a plain hash
would let them confirm a guess of what was embedded.
A value is the token count and the float32 vector. Any Redis trouble is a miss: the model answers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import struct
from collections.abc import Sequence

import numpy as np

from config import ModelSpec
from embed_server.cache import CachedEmbedding
from embed_server.metrics import Metrics
from embed_server.redis_link import RedisLink, RedisUnavailable

log = logging.getLogger(__name__)

_KEY_VERSION = b"embedding-v2"  # v1: a plain hash
_TOKENS = struct.Struct("<I")


class CorruptEntry(ValueError):
    """A cached value that is not a token count and a vector of the model's size."""


def model_fingerprint(spec: ModelSpec, identity: dict[str, str], **vector_settings: object) -> bytes:
    """A digest of a model's settings, of its backend's identity (weights, runtime, device kind,
    precision) and of the server settings that change its vectors (truncation, the backend's dimension
    and length limit): a model that computes differently never reads another's entries."""
    described = json.dumps({"spec": spec.model_dump(mode="json"), "backend": identity, **vector_settings},
                           sort_keys=True, default=str)
    return hashlib.blake2b(described.encode("utf-8"), digest_size=16).digest()


def _field(tag: bytes, value: bytes) -> bytes:
    # Tagged and length-prefixed, so no two different field lists hash the same bytes.
    return tag + len(value).to_bytes(8, "little") + value


def cache_key(prefix: str, secret: bytes, fingerprint: bytes, input_type: str | None,
              item: str | Sequence[int]) -> str:
    """The Redis key of one input's vector: ``<prefix>vec:<hex HMAC-SHA256, 160 bits>``."""
    kind = b"none" if input_type is None else input_type.encode("utf-8")
    if isinstance(item, str):
        payload = _field(b"T", item.encode("utf-8"))
    else:
        payload = _field(b"I", np.asarray(item, dtype="<i8").tobytes())
    message = _KEY_VERSION + _field(b"M", fingerprint) + _field(b"Y", kind) + payload
    return f"{prefix}vec:{hmac.new(secret, message, hashlib.sha256).hexdigest()[:40]}"


def encode_entry(entry: CachedEmbedding) -> bytes:
    return _TOKENS.pack(entry.tokens) + np.ascontiguousarray(entry.vector, dtype="<f4").tobytes()


def decode_entry(data: bytes, dimension: int) -> CachedEmbedding:
    if len(data) != _TOKENS.size + 4 * dimension:
        raise CorruptEntry(f"{len(data)} bytes, expected {_TOKENS.size + 4 * dimension}")
    (tokens,) = _TOKENS.unpack_from(data)
    vector = np.frombuffer(data, dtype="<f4", offset=_TOKENS.size).astype(np.float32)
    return CachedEmbedding(vector, tokens)


class SharedEmbeddingCache:
    def __init__(self, link: RedisLink, metrics: Metrics, prefix: str, ttl_seconds: int, secret: bytes) -> None:
        self.link = link
        self.metrics = metrics
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self._secret = secret

    def __repr__(self) -> str:  # never the secret
        return f"SharedEmbeddingCache(redis={self.link.address!r}, prefix={self.prefix!r})"

    def key(self, fingerprint: bytes, input_type: str | None, item: str | Sequence[int]) -> str:
        return cache_key(self.prefix, self._secret, fingerprint, input_type, item)

    async def get_many(self, model: str, keys: list[str], dimension: int) -> list[CachedEmbedding | None]:
        """The entries found, None for the others (and for all of them when Redis is unavailable)."""
        if not keys:
            return []
        try:
            values = await self.link.call("cache_get", lambda client: client.mget(keys))
        except RedisUnavailable:
            self.metrics.cache_lookups.labels(model, "redis", "error").inc(len(keys))
            return [None] * len(keys)
        found: list[CachedEmbedding | None] = []
        for value in values:
            entry = None
            if value is not None:
                try:
                    entry = decode_entry(value, dimension)
                except CorruptEntry as error:
                    log.warning("ignoring a damaged shared cache entry", extra={"event": "redis_cache_corrupt",
                                                                              "model": model, "error": str(error)})
            found.append(entry)
        hits = sum(entry is not None for entry in found)
        self.metrics.cache_lookups.labels(model, "redis", "hit").inc(hits)
        self.metrics.cache_lookups.labels(model, "redis", "miss").inc(len(keys) - hits)
        return found

    async def put_many(self, entries: dict[str, CachedEmbedding]) -> None:
        """Store entries for the other replicas; a failure only means they embed the text themselves."""
        if not entries:
            return

        async def write(client) -> None:
            pipe = client.pipeline(transaction=False)
            for key, entry in entries.items():
                pipe.set(key, encode_entry(entry), ex=self.ttl_seconds)
            await pipe.execute()

        try:
            await self.link.call("cache_put", write)
        except RedisUnavailable:
            pass  # counted and logged by the link

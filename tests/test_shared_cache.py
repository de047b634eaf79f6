"""The shared cache's keys and values, and what the Redis link lets out (no secret)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from config import ModelSpec
from embed_server.cache import CachedEmbedding
from embed_server.redis_link import redact_url
from embed_server.shared_cache import CorruptEntry, cache_key, decode_entry, encode_entry, model_fingerprint

MINILM = ModelSpec(id="minilm", source="package:x/model")
PREFIXED = ModelSpec(id="minilm", source="package:x/model", query_prefix="query: ")
OTHER = ModelSpec(id="other", source="package:x/model")
TORCH = {"runtime": "torch", "version": "2", "device": "cpu", "precision": "fp32", "weights": "w1"}
SECRET = b"a-test-secret-of-32-characters!!"


def fingerprint(spec: ModelSpec = MINILM, truncate: bool = True, max_tokens: int = 256, **identity: str) -> bytes:
    return model_fingerprint(spec, TORCH | identity, truncate=truncate, dimension=384, max_tokens=max_tokens)


def test_keys_differ_by_model_settings_weights_placement_input_type_and_input() -> None:
    fingerprints = [fingerprint(), fingerprint(truncate=False), fingerprint(max_tokens=128),
                    fingerprint(PREFIXED), fingerprint(OTHER), fingerprint(weights="w2"),
                    fingerprint(precision="fp16"), fingerprint(device="cuda"), fingerprint(version="3"),
                    fingerprint(runtime="onnx", quantize="int8")]
    assert len(set(fingerprints)) == len(fingerprints)
    items: list[str | list[int]] = ["", "123", "a", "a ", "hello", [123], [1, 2, 3], []]
    keys = [cache_key("embed:", SECRET, f, t, item)
            for f, t, item in itertools.product(fingerprints, (None, "query", "document"), items)]
    assert len(set(keys)) == len(keys)
    # Field boundaries are encoded: moving bytes between fields never gives the same key.
    assert cache_key("p:", SECRET, b"ab", "query", "c") != cache_key("p:", SECRET, b"a", "query", "bc")


def test_keys_are_stable_need_the_secret_and_never_hold_the_text() -> None:
    key = cache_key("embed:", SECRET, fingerprint(), "query", "secret patient record 42")
    assert key == cache_key("embed:", SECRET, fingerprint(), "query", "secret patient record 42")
    assert key.startswith("embed:vec:") and len(key) == len("embed:vec:") + 40
    assert "secret" not in key and "patient" not in key
    # Without the secret, a guess cannot be confirmed: another secret gives another key.
    assert key != cache_key("embed:", b"another-secret-of-32-characters!", fingerprint(), "query",
                            "secret patient record 42")
    # A pinned key: a change of derivation would silently orphan every replica's entries.
    assert cache_key("p:", SECRET, b"\x00" * 16, None, "x") == PINNED_KEY


PINNED_KEY = "p:vec:64d23ce58f42bdd9b29384954df513f32d7f4fc8"


def test_values_round_trip_and_damaged_ones_are_refused() -> None:
    entry = CachedEmbedding(np.linspace(-1, 1, 384, dtype=np.float32), 17)
    back = decode_entry(encode_entry(entry), 384)
    assert back.tokens == 17 and np.array_equal(back.vector, entry.vector) and back.vector.dtype == np.float32
    with pytest.raises(CorruptEntry):
        decode_entry(encode_entry(entry)[:-1], 384)
    with pytest.raises(CorruptEntry):
        decode_entry(encode_entry(entry), 768)  # another model's size


def test_redis_urls_are_redacted() -> None:
    assert redact_url("redis://:hunter2@redis:6379/0") == "redis://***@redis:6379/0"
    assert redact_url("rediss://app:hunter2@10.0.0.5:6380/1") == "rediss://***@10.0.0.5:6380/1"
    # redis-py also takes a password as the user part alone, or in the query
    assert redact_url("redis://hunter2@redis:6379/0") == "redis://***@redis:6379/0"
    assert redact_url("redis://redis:6379/0?password=hunter2") == "redis://redis:6379/0"
    assert redact_url("redis://redis:6379/0") == "redis://redis:6379/0"
    assert "hunter2" not in redact_url("redis://app:hunter2@[::1]:6379")
    assert "s3cret" not in redact_url("redis://:s3cret@host:notaport/0")

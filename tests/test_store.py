"""The shared store as `vector-bridge up` runs it: Chroma from the wheel, tuned on every start."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from config import load_settings
from tests.servers import free_port
from vector_bridge.stack import chroma_service
from vector_bridge.store import connect, describe, parse_embedding_config

pytestmark = pytest.mark.slow


def test_chroma_start_raises_ef_search_of_collections_open_webui_made(tmp_path: Path) -> None:
    settings = load_settings(chroma_port=free_port(), chroma_path=tmp_path / "chroma", log_dir=tmp_path / "logs")
    chroma = chroma_service(settings)
    try:
        chroma.spawn()
        chroma.wait_ready()
        # As Open WebUI creates them: only the space, Chroma's default ef_search of 100.
        collection = connect(settings).create_collection("file-1234", metadata={"hnsw:space": "cosine"})
        vectors = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
        collection.add(ids=[str(i) for i in range(20)], embeddings=vectors, documents=[f"d{i}" for i in range(20)],
                       metadatas=[{"embedding_config": "{'engine': 'openai', 'model': 'm'}"}] * 20)
        assert connect(settings).get_collection("file-1234").configuration_json["hnsw"]["ef_search"] == 100

        chroma.stop()
        chroma.spawn()
        chroma.wait_ready()

        reopened = connect(settings).get_collection("file-1234")
        assert reopened.configuration_json["hnsw"]["ef_search"] == settings.chroma_ef_search == 500
        info = describe(reopened)
        assert (info.count, info.dimension, info.model) == (20, 8, "m")
        found = reopened.query(query_embeddings=vectors[:1], n_results=1)
        assert found["ids"][0] == ["0"]  # nothing lost, still searchable
    finally:
        chroma.stop()


def test_embedding_config_reads_open_webui_reprs() -> None:
    assert parse_embedding_config("{'engine': 'openai', 'model': 'all-MiniLM-L6-v2'}") == {
        "engine": "openai", "model": "all-MiniLM-L6-v2"}
    assert parse_embedding_config('{"engine": "", "model": "x"}') == {"engine": "", "model": "x"}
    assert parse_embedding_config("not a dict") is None and parse_embedding_config(None) is None


def test_describe_finds_a_model_mix_anywhere_in_the_collection(tmp_path: Path) -> None:
    """Open WebUI's chunks of a file re-added after a model switch land after thousands of older ones."""
    settings = load_settings(chroma_port=free_port(), chroma_path=tmp_path / "chroma", log_dir=tmp_path / "logs")
    chroma = chroma_service(settings)
    try:
        chroma.spawn()
        chroma.wait_ready()
        collection = connect(settings).create_collection("mixed-late", metadata={"hnsw:space": "cosine"})
        vectors = np.random.default_rng(0).standard_normal((2500, 8)).astype(np.float32)
        models = ["old"] * 2300 + ["new"] * 200
        for start in range(0, 2500, 500):
            collection.add(ids=[f"{i:05d}" for i in range(start, start + 500)], embeddings=vectors[start:start + 500],
                           metadatas=[{"embedding_config": f"{{'engine': 'openai', 'model': '{m}'}}"}
                                      for m in models[start:start + 500]])
        info = describe(collection)
        assert (info.count, info.dimension, info.models, info.model) == (2500, 8, {"old": 2300, "new": 200}, None)
    finally:
        chroma.stop()

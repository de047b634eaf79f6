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

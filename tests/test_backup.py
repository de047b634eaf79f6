"""`vector-bridge backup` / `restore` against a real Chroma server: the store comes back as it was."""

from __future__ import annotations

import gzip
import json
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from config import Settings, load_settings
from tests.servers import free_port
from vector_bridge.cli import main
from vector_bridge.stack import Service, chroma_service
from vector_bridge.store import connect

pytestmark = pytest.mark.slow
CONFIG = "{'engine': 'openai', 'model': 'all-MiniLM-L6-v2'}"


@pytest.fixture
def chroma(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Settings, Service]]:
    port = free_port()
    settings = load_settings(chroma_port=port, chroma_path=tmp_path / "chroma", log_dir=tmp_path / "logs")
    monkeypatch.setenv("EMBED_CHROMA_PORT", str(port))  # what the CLI reads
    service = chroma_service(settings)
    service.spawn()
    service.wait_ready()
    try:
        yield settings, service
    finally:
        service.stop()


def fill_like_open_webui(settings: Settings) -> None:
    """Two collections shaped as Open WebUI writes them; one spans more than a page of 1,000 chunks."""
    client = connect(settings)
    rng = np.random.default_rng(7)
    for name, count in ((str(uuid.uuid4()), 1500), (f"file-{uuid.uuid4()}", 3)):
        collection = client.create_collection(name, metadata={"hnsw:space": "cosine"})
        vectors = rng.standard_normal((count, 384)).astype(np.float32)
        metadatas = [{"embedding_config": CONFIG, "name": "리포트.pdf", "source": "리포트.pdf", "page": i % 7,
                      "start_index": i * 900, "score": 0.5 + i, "private": bool(i % 2)} for i in range(count)]
        for start in range(0, count, 500):
            end = min(start + 500, count)
            collection.add(ids=[str(uuid.uuid4()) for _ in range(start, end)], embeddings=vectors[start:end],
                           documents=[f"청크 {i}: text with\nnewlines" for i in range(start, end)],
                           metadatas=metadatas[start:end])


def snapshot(settings: Settings) -> dict:
    client = connect(settings)
    out = {}
    for collection in client.list_collections():
        got = collection.get(include=["documents", "metadatas", "embeddings"])
        order = np.argsort(got["ids"])
        out[collection.name] = {
            "metadata": collection.metadata,
            "ids": [got["ids"][i] for i in order],
            "documents": [got["documents"][i] for i in order],
            "metadatas": [got["metadatas"][i] for i in order],
            "embeddings": np.asarray(got["embeddings"], dtype=np.float32)[order],
        }
    return out


def assert_identical(before: dict, after: dict) -> None:
    assert sorted(before) == sorted(after)
    for name in before:
        a, b = before[name], after[name]
        assert (a["metadata"], a["ids"], a["documents"], a["metadatas"]) == \
               (b["metadata"], b["ids"], b["documents"], b["metadatas"])
        # Chroma rounds every vector it stores in a cosine collection by about one unit in the last place
        # (also when Open WebUI writes): a restore can match to that, not to the bit.
        np.testing.assert_allclose(b["embeddings"], a["embeddings"], rtol=1e-6, atol=1e-7)


def test_backup_wipe_restore_gives_the_same_store(chroma, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    settings, _ = chroma
    fill_like_open_webui(settings)
    before = snapshot(settings)
    file = tmp_path / "store.vbak"

    assert main(["backup", str(file), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["collections"], report["chunks"]) == (2, 1503)

    client = connect(settings)
    for collection in client.list_collections():
        client.delete_collection(collection.name)
    assert main(["restore", str(file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["chunks"] == 1503
    assert_identical(before, snapshot(settings))

    # Restored collections still search as cosine collections.
    name = next(n for n in before if not n.startswith("file-"))
    collection = connect(settings).get_collection(name)
    found = collection.query(query_embeddings=before[name]["embeddings"][:1], n_results=1, include=["distances"])
    assert found["ids"][0] == before[name]["ids"][:1] and found["distances"][0][0] == pytest.approx(0, abs=1e-5)


def test_restore_never_overwrites_data_unless_asked(chroma, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    settings, _ = chroma
    fill_like_open_webui(settings)
    file = tmp_path / "store.vbak"
    assert main(["backup", str(file)]) == 0
    before = snapshot(settings)

    assert main(["restore", str(file)]) == 1
    assert "exist and hold data" in capsys.readouterr().err
    assert main(["restore", str(file), "--replace"]) == 0
    assert_identical(before, snapshot(settings))


def test_a_cut_or_failed_backup_never_passes_for_a_good_one(chroma, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    settings, service = chroma
    fill_like_open_webui(settings)
    good = tmp_path / "store.vbak"
    assert main(["backup", str(good)]) == 0
    content = good.read_bytes()

    # A truncated copy (a backup killed mid-write, then copied by hand) is refused before anything is written.
    lines = gzip.decompress(content).splitlines(keepends=True)
    cut = tmp_path / "cut.vbak"
    cut.write_bytes(gzip.compress(b"".join(lines[: len(lines) // 2])))
    assert main(["restore", str(cut), "--replace"]) == 1
    assert "truncated" in capsys.readouterr().err

    # A backup that fails (Chroma gone) leaves the previous file as it was, and no partial file.
    service.stop()
    assert main(["backup", str(good)]) == 1
    assert "cannot reach Chroma" in capsys.readouterr().err
    assert good.read_bytes() == content and not list(tmp_path.glob("*.partial"))

"""`vector-bridge migrate` on a real Chroma server with our real server: MiniLM -> its hybrid, no downtime."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Iterator

import numpy as np
import pytest

from config import Settings, load_settings
from tests.conftest import HYBRID, MODEL
from tests.servers import free_port
from tests.test_bridge import scifact_sample
from vector_bridge.cli import main
from vector_bridge.embeddings import EmbeddingsClient
from vector_bridge.migrate import backup_name, shadow_name
from vector_bridge.search import embedding_model, nearest_chunks
from vector_bridge.stack import chroma_service, embed_service
from vector_bridge.store import connect

pytestmark = pytest.mark.slow
NAME = str(uuid.uuid4())  # a Knowledge base's collection, as Open WebUI names it


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("migrate")
    settings = load_settings(port=free_port(), chroma_port=free_port(), chroma_path=root / "chroma",
                             log_dir=root / "logs", state_dir=root / "state")
    running = [chroma_service(settings), embed_service(settings, None)]
    env = {"EMBED_PORT": str(settings.port), "EMBED_CHROMA_PORT": str(settings.chroma_port)}
    try:
        for service in running:
            service.spawn()
            service.wait_ready()
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            yield env
    finally:
        for service in reversed(running):
            service.stop()


@pytest.fixture(scope="module")
def settings(services: dict[str, str]) -> Settings:
    return load_settings()


@pytest.fixture(scope="module")
def questions(settings: Settings) -> dict[str, tuple[str, set[str]]]:
    """A collection as Open WebUI writes it with MiniLM: SciFact abstracts, one chunk each."""
    chosen, docs, qrels = scifact_sample()
    embeddings = EmbeddingsClient(settings)
    collection = connect(settings).create_collection(NAME, metadata={"hnsw:space": "cosine"})
    items = list(docs.values())
    for start in range(0, len(items), 64):
        page = items[start:start + 64]
        texts = [f"{d['title']}\n{d['text']}" for d in page]
        collection.add(ids=[str(uuid.uuid4()) for _ in page], documents=texts,
                       embeddings=embeddings.embed(MODEL, [t.replace("\n", " ") for t in texts], "document"),
                       metadatas=[{"name": f"{d['_id']}.txt", "source": f"{d['_id']}.txt",
                                   "embedding_config": f"{{'engine': 'openai', 'model': '{MODEL}'}}"} for d in page])
    return {qid: (text, qrels[qid]) for qid, text in chosen.items()}


def recall_at_5(settings: Settings, name: str, questions: dict[str, tuple[str, set[str]]]) -> float:
    """Search as `vector-bridge search` does: with the model the collection itself records."""
    collection = connect(settings).get_collection(name)
    model = embedding_model(collection)
    vectors = EmbeddingsClient(settings).embed(model, [q for q, _ in questions.values()], "query")
    hits = 0
    for vector, (_, relevant) in zip(vectors, questions.values()):
        names = {hit.metadata["name"].removesuffix(".txt") for hit in nearest_chunks(collection, vector, 5)}
        hits += bool(names & relevant)
    return hits / len(questions)


def snapshot(settings: Settings, name: str) -> dict:
    got = connect(settings).get_collection(name).get(include=["documents", "metadatas", "embeddings"])
    return {chunk_id: (doc, meta, np.asarray(vec)) for chunk_id, doc, meta, vec in
            zip(got["ids"], got["documents"], got["metadatas"], got["embeddings"])}


def test_migrate_keeps_answering_then_swaps_to_the_new_model(services, settings, questions,
                                                             capsys: pytest.CaptureFixture) -> None:
    before = snapshot(settings, NAME)
    baseline = recall_at_5(settings, NAME, questions)
    assert baseline >= 0.7

    # Killed part-way through building the new vectors: the collection still answers with MiniLM.
    worker = subprocess.Popen([sys.executable, "-m", "vector_bridge.cli", "migrate", "--to", HYBRID, "--store-only",
                               "--batch", "8", "--json"], env={**os.environ, **services},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shadow = shadow_name(NAME, HYBRID)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and worker.poll() is None:
        names = {c.name for c in connect(settings).list_collections()}
        if shadow in names and connect(settings).get_collection(shadow).count() >= 24:
            break
        time.sleep(0.1)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    partial = connect(settings).get_collection(shadow).count()
    assert 0 < partial < len(before)
    assert embedding_model(connect(settings).get_collection(NAME)) == MODEL
    assert recall_at_5(settings, NAME, questions) == baseline

    # The second run resumes: it embeds only what is missing, then swaps.
    assert main(["migrate", "--to", HYBRID, "--store-only", "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)["collections"]
    assert (result["collection"], result["outcome"], result["chunks"]) == (NAME, "migrated", len(before))
    assert result["embedded"] == len(before) - partial

    after = snapshot(settings, NAME)
    assert after.keys() == before.keys()
    assert all(after[i][0] == before[i][0] for i in before)  # documents
    assert all(after[i][1] == {**before[i][1], "embedding_config": f"{{'engine': 'openai', 'model': '{HYBRID}'}}"}
               for i in before)
    ids = list(before)[:20]
    fresh = EmbeddingsClient(settings).embed(HYBRID, [before[i][0].replace("\n", " ") for i in ids], "document")
    for chunk_id, vector in zip(ids, fresh):
        stored = after[chunk_id][2]
        assert stored.shape == (4480,)
        assert float(stored @ vector / np.linalg.norm(stored) / np.linalg.norm(vector)) >= 0.999
    assert recall_at_5(settings, NAME, questions) >= baseline  # the hybrid is no worse on SciFact

    old = backup_name(NAME, HYBRID)
    assert snapshot(settings, old).keys() == before.keys()  # the old vectors, kept
    assert main(["migrate", "--to", HYBRID, "--store-only", "--drop-old"]) == 0  # nothing to move; the backup goes
    names = {c.name for c in connect(settings).list_collections()}
    assert NAME in names and old not in names and shadow not in names


def test_a_swap_cut_between_its_two_renames_is_finished_by_the_next_run(services, settings, questions,
                                                                         capsys: pytest.CaptureFixture) -> None:
    client = connect(settings)
    name = f"file-{uuid.uuid4()}"
    source = client.create_collection(name, metadata={"hnsw:space": "cosine"})
    config = f"{{'engine': 'openai', 'model': '{HYBRID}'}}"
    source.add(ids=["x"], documents=["a chunk"], embeddings=np.ones((1, 4480), dtype=np.float32),
               metadatas=[{"embedding_config": config}])
    # As a run killed right after its first rename leaves it: the name free, old and new beside it.
    source.modify(name=backup_name(name, MODEL))
    client.create_collection(shadow_name(name, MODEL), metadata={"hnsw:space": "cosine"}).add(
        ids=["x"], documents=["a chunk"], embeddings=np.ones((1, 384), dtype=np.float32),
        metadatas=[{"embedding_config": config.replace(HYBRID, MODEL)}])

    assert main(["migrate", "--to", MODEL, "--collection", name, "--json"]) == 0
    outcomes = [r["outcome"] for r in json.loads(capsys.readouterr().out)["collections"] if r["collection"] == name]
    assert "migrated" in outcomes
    assert embedding_model(connect(settings).get_collection(name)) == MODEL


def test_migrate_without_an_open_webui_token_refuses_unless_store_only(services, capsys: pytest.CaptureFixture,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENWEBUI_API_KEY", raising=False)
    assert main(["migrate", "--to", MODEL]) == 2
    assert "needs an Open WebUI admin API key" in capsys.readouterr().err


def test_migrate_refuses_a_model_the_server_does_not_serve(services, capsys: pytest.CaptureFixture) -> None:
    assert main(["migrate", "--to", "no-such-model", "--store-only"]) == 1
    assert "does not serve 'no-such-model'" in capsys.readouterr().err


def test_a_name_recreated_by_open_webui_between_the_renames_loses_nothing(services, settings,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """Open WebUI creates a collection when it writes to a name that does not exist: a run killed between a
    swap's two renames can find its name taken by a new collection holding a fresh chunk."""
    client = connect(settings)
    name = f"file-{uuid.uuid4()}"
    old_config, new_config = (f"{{'engine': 'openai', 'model': '{m}'}}" for m in (HYBRID, MODEL))
    vectors = EmbeddingsClient(settings)
    client.create_collection(backup_name(name, MODEL), metadata={"hnsw:space": "cosine"}).add(
        ids=["x"], documents=["a chunk"], embeddings=vectors.embed(HYBRID, ["a chunk"], "document"),
        metadatas=[{"embedding_config": old_config}])
    client.create_collection(shadow_name(name, MODEL), metadata={"hnsw:space": "cosine"}).add(
        ids=["x"], documents=["a chunk"], embeddings=vectors.embed(MODEL, ["a chunk"], "document"),
        metadatas=[{"embedding_config": new_config}])
    client.create_collection(name, metadata={"hnsw:space": "cosine"}).add(  # the intruder, old model
        ids=["y"], documents=["written in the gap"], embeddings=vectors.embed(HYBRID, ["written in the gap"], "document"),
        metadatas=[{"embedding_config": old_config}])

    assert main(["migrate", "--to", MODEL, "--collection", name, "--json"]) == 0
    capsys.readouterr()
    now = snapshot(settings, name)
    assert set(now) == {"x", "y"} and all(meta["embedding_config"] == new_config for _, meta, _ in now.values())
    assert all(vector.shape == (384,) for _, _, vector in now.values())
    names = {c.name for c in connect(settings).list_collections()}
    assert backup_name(name, MODEL) in names and shadow_name(name, MODEL) not in names

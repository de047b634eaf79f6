"""`vector-bridge migrate` on pgvector, against a real PostgreSQL and our real embeddings server: MiniLM ->
its pgvector hybrid in one transaction, with what Open WebUI writes during the build and between the commit
and its switch brought over, a killed build resumed, a rollback to the exact old vectors, and a model whose
vectors do not fit the table refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from config import Settings, load_settings
from tests.conftest import MODEL
from tests.servers import REPO, free_port
from tests.test_bridge import scifact_sample
from vector_bridge.cli import main
from vector_bridge.embeddings import EmbeddingsClient
from vector_bridge.pgvector_migrate import SIDE, migrate_pgvector
from vector_bridge.pgvector_store import Chunk, PgvectorClient, PgvectorStore
from vector_bridge.postgres import pgvector_url, postgres_service
from vector_bridge.search import embedding_model, nearest_chunks
from vector_bridge.shadow import recorded_model
from vector_bridge.stack import embed_service

pytestmark = pytest.mark.slow
TARGET = "all-MiniLM-L6-v2-hybrid-pg"  # 3,456 dimensions: the table is sized for it, MiniLM's 384 padded
WIDE = 3456
KNOWLEDGE = str(uuid.uuid4())


@pytest.fixture(scope="module")
def settings() -> Iterator[Settings]:
    root = Path(tempfile.mkdtemp(prefix="pgvector-migrate-"))
    os.chmod(root, 0o711)  # run as root, PostgreSQL's unprivileged user passes through here
    yield load_settings(store="pgvector", port=free_port(), postgres_port=free_port(), postgres_path=root / "postgres",
                        state_dir=root / "state", log_dir=root / "logs")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def services(settings: Settings) -> Iterator[dict[str, str]]:
    running = [postgres_service(settings), embed_service(settings, None)]
    env = {"EMBED_STORE": "pgvector", "EMBED_PORT": str(settings.port), "EMBED_STATE_DIR": str(settings.state_dir),
           "EMBED_POSTGRES_PORT": str(settings.postgres_port)}
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


@pytest.fixture
def store(settings: Settings, services: dict[str, str]) -> Iterator[PgvectorStore]:
    with PgvectorStore(pgvector_url(settings)) as opened:
        opened._db.execute(f"DROP TABLE IF EXISTS document_chunk, {SIDE}")
        opened._db.commit()
        yield opened


def config(model: str) -> str:
    return repr({"engine": "openai", "model": model})


def written_by_open_webui(settings: Settings, store: PgvectorStore, name: str, docs: list[dict], model: str = MODEL,
                          dimension: int = WIDE) -> list[str]:
    """Chunks as Open WebUI stores them with ``model``: newlines as spaces for the vector, the model recorded."""
    table = store.table() or store.create_table(dimension)
    texts = [f"{doc['title']}\n{doc['text']}" for doc in docs]
    vectors = EmbeddingsClient(settings).embed(model, [t.replace("\n", " ") for t in texts], "document")
    ids = [str(uuid.uuid4()) for _ in docs]
    store.upsert(name, [Chunk(i, t, v, {"name": f"{d['_id']}.txt", "file_id": name, "embedding_config": config(model)})
                        for i, t, v, d in zip(ids, texts, vectors, docs)], table)
    return ids


def recall_at_5(settings: Settings, name: str, questions: dict[str, tuple[str, set[str]]]) -> float:
    collection = PgvectorClient(pgvector_url(settings)).get_collection(name)
    model = embedding_model(collection)
    vectors = EmbeddingsClient(settings).embed(model, [q for q, _ in questions.values()], "query")
    found = [{hit.metadata["name"].removesuffix(".txt") for hit in nearest_chunks(collection, v, 5)} & relevant
             for v, (_, relevant) in zip(vectors, questions.values())]
    return sum(map(bool, found)) / len(found)


def rows(store: PgvectorStore, name: str) -> dict[str, Chunk]:
    return {chunk.id: chunk for chunk in store.read(name)}


def migrate(*args: str, capsys: pytest.CaptureFixture) -> dict:
    assert main(["migrate", *args, "--store-only", "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_migrate_moves_every_chunk_in_one_transaction_and_rolls_back_exactly(
        settings: Settings, store: PgvectorStore, capsys: pytest.CaptureFixture) -> None:
    chosen, docs, qrels = scifact_sample()
    abstracts = list(docs.values())
    questions = {qid: (text, qrels[qid]) for qid, text in chosen.items()}
    written_by_open_webui(settings, store, KNOWLEDGE, abstracts)
    written_by_open_webui(settings, store, "file-1", abstracts[:20])
    before = rows(store, KNOWLEDGE)
    baseline = recall_at_5(settings, KNOWLEDGE, questions)

    report = migrate("--to", TARGET, capsys=capsys)
    assert {c["collection"]: (c["outcome"], c["chunks"]) for c in report["collections"]} == {
        KNOWLEDGE: ("migrated", len(abstracts)), "file-1": ("migrated", 20)}
    assert report["cutover"]["collections"] == 2
    after = rows(store, KNOWLEDGE)
    assert set(after) == set(before)
    expected = EmbeddingsClient(settings).embed(TARGET, [after[i].text.replace("\n", " ") for i in sorted(after)],
                                                "document")
    for chunk_id, vector in zip(sorted(after), expected):
        chunk = after[chunk_id]
        assert recorded_model(chunk.metadata) == TARGET and chunk.text == before[chunk_id].text
        assert {k: v for k, v in chunk.metadata.items() if k != "embedding_config"} == \
               {k: v for k, v in before[chunk_id].metadata.items() if k != "embedding_config"}
        assert np.abs(chunk.vector - vector).max() < 2e-3  # halfvec: float16 of the server's vector
    assert recall_at_5(settings, KNOWLEDGE, questions) >= baseline - 0.04

    again = migrate("--to", TARGET, capsys=capsys)  # nothing left to do
    assert {c["outcome"] for c in again["collections"]} == {"already"}

    added = written_by_open_webui(settings, store, KNOWLEDGE, abstracts[:1], model=TARGET)  # written since
    back = migrate("--rollback", TARGET, capsys=capsys)
    assert {c["collection"]: c["embedded"] for c in back["collections"]} == {KNOWLEDGE: 1, "file-1": 0}
    restored = rows(store, KNOWLEDGE)
    assert set(restored) == set(before) | set(added)
    for chunk_id, chunk in before.items():  # the kept vectors, exactly
        assert restored[chunk_id].metadata == chunk.metadata
        assert np.array_equal(restored[chunk_id].vector, chunk.vector)
    assert recorded_model(restored[added[0]].metadata) == MODEL
    assert recall_at_5(settings, KNOWLEDGE, questions) == baseline

    migrate("--to", TARGET, "--drop-old", capsys=capsys)
    kept = store._db.execute(f"SELECT count(*) FROM {SIDE}").fetchone()[0]
    store._db.commit()
    assert kept == 0


class OpenWebUIWritesDuringTheBuild(EmbeddingsClient):
    """Our embeddings client; the first embedding of the build lets Open WebUI add a chunk and change one."""

    def __init__(self, settings: Settings, store: PgvectorStore, docs: list[dict], changed: str) -> None:
        super().__init__(settings)
        self.settings, self.store, self.docs, self.changed, self.done = settings, store, docs, changed, False

    def embed(self, model, texts, input_type):  # type: ignore[no-untyped-def]
        if not self.done and texts != ["model check"]:
            self.done = True
            written_by_open_webui(self.settings, self.store, KNOWLEDGE, self.docs)
            self.store._db.execute("UPDATE document_chunk SET text = 'edited during the build' WHERE id = %s",
                                   (self.changed,))
            self.store._db.commit()
        return super().embed(model, texts, input_type)


def test_writes_during_the_build_and_before_the_switch_are_brought_over(settings: Settings,
                                                                        store: PgvectorStore) -> None:
    _, docs, _ = scifact_sample()
    abstracts = list(docs.values())
    ids = written_by_open_webui(settings, store, KNOWLEDGE, abstracts[:40])
    late: list[str] = []

    def switch(model: str) -> None:  # Open WebUI, still on MiniLM, stores one more file before it switches
        late.extend(written_by_open_webui(settings, store, KNOWLEDGE, abstracts[60:61]))

    client = PgvectorClient(pgvector_url(settings))
    embeddings = OpenWebUIWritesDuringTheBuild(settings, store, abstracts[50:52], changed=ids[0])
    result = migrate_pgvector(client, embeddings, TARGET, default_model=MODEL, switch=switch, batch=16)
    assert result.cutover is not None and result.cutover.settled_after == 1
    stored = rows(store, KNOWLEDGE)
    assert len(stored) == 43 and late[0] in stored
    assert {recorded_model(chunk.metadata) for chunk in stored.values()} == {TARGET}
    texts = sorted(stored)
    vectors = EmbeddingsClient(settings).embed(TARGET, [stored[i].text.replace("\n", " ") for i in texts], "document")
    for chunk_id, vector in zip(texts, vectors):  # the edited and the late chunks too: M's vector of their text
        assert np.abs(stored[chunk_id].vector - vector).max() < 2e-3, chunk_id
    assert stored[ids[0]].text == "edited during the build"


def test_a_build_killed_midway_resumes_and_the_store_is_untouched_until_the_cutover(
        settings: Settings, store: PgvectorStore, services: dict[str, str], capsys: pytest.CaptureFixture) -> None:
    _, docs, _ = scifact_sample()
    written_by_open_webui(settings, store, KNOWLEDGE, list(docs.values()))
    before = rows(store, KNOWLEDGE)
    env = {**os.environ, **services}
    process = subprocess.Popen([sys.executable, "-m", "vector_bridge.cli", "migrate", "--to", TARGET, "--store-only",
                                "--batch", "8"], env=env, cwd=REPO, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while True:
        built = store._db.execute(f"SELECT count(*) FROM {SIDE}" if store._db.execute(
            f"SELECT to_regclass('{SIDE}')").fetchone()[0] else "SELECT 0").fetchone()[0]
        store._db.commit()
        if built >= 16:
            break
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    untouched = rows(store, KNOWLEDGE)
    assert all(np.array_equal(untouched[i].vector, before[i].vector) and untouched[i].metadata == before[i].metadata
               for i in before)
    built = store._db.execute(f"SELECT count(*) FROM {SIDE}").fetchone()[0]
    store._db.commit()
    report = migrate("--to", TARGET, capsys=capsys)
    [done] = report["collections"]
    assert done["embedded"] == len(before) - built and done["outcome"] == "migrated"
    assert {recorded_model(chunk.metadata) for chunk in rows(store, KNOWLEDGE).values()} == {TARGET}


def test_a_model_whose_vectors_do_not_fit_the_table_is_refused(settings: Settings, store: PgvectorStore,
                                                               capsys: pytest.CaptureFixture) -> None:
    _, docs, _ = scifact_sample()
    written_by_open_webui(settings, store, KNOWLEDGE, list(docs.values())[:5], dimension=384)
    assert main(["migrate", "--to", TARGET, "--store-only"]) == 1
    error = capsys.readouterr().err
    assert "3456-dimension" in error and "holds 384" in error and "PGVECTOR_INITIALIZE_MAX_VECTOR_LENGTH" in error
    assert {recorded_model(chunk.metadata) for chunk in rows(store, KNOWLEDGE).values()} == {MODEL}

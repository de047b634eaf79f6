"""`vector-bridge migrate` on pgvector, against a real PostgreSQL and our real embeddings server: MiniLM ->
its pgvector hybrid in one transaction, with what Open WebUI writes during the build, between the commit and
its switch and while the cutover settles brought over (never a deleted chunk back, never an edit reverted),
a killed build resumed, two migrations in a row and a rollback to the exact old vectors, a second writer and
a model whose vectors do not fit the table refused."""

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
from tests.conftest import MODEL, PREFIXED, TEST_MODELS
from tests.servers import REPO, free_port
from tests.test_bridge import scifact_sample
from vector_bridge.cli import main
from vector_bridge.embeddings import EmbeddingsClient
from vector_bridge.pgvector_migrate import MOVES, SIDE, migrate_pgvector
from vector_bridge.pgvector_store import Chunk, PgvectorClient, PgvectorStore, vector_literal
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
    models = root / "models.toml"  # MiniLM, the same with prefixes (another 384-dimension model), the hybrid
    models.write_text(TEST_MODELS + f'\n[[models]]\nid = "{TARGET}"\nkind = "hybrid"\ndense = "{MODEL}"\n'
                      'lexical_dim = 3072\nquery_dense_weight = 0.45\nquery_dense_weight_cjk = 0.075\n')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMBED_MODELS_FILE", str(models))
        yield load_settings(store="pgvector", port=free_port(), postgres_port=free_port(),
                            postgres_path=root / "postgres", state_dir=root / "state", log_dir=root / "logs")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def services(settings: Settings) -> Iterator[dict[str, str]]:
    running = [postgres_service(settings), embed_service(settings, None)]
    env = {"EMBED_STORE": "pgvector", "EMBED_PORT": str(settings.port), "EMBED_STATE_DIR": str(settings.state_dir),
           "EMBED_POSTGRES_PORT": str(settings.postgres_port), "EMBED_MODELS_FILE": str(settings.models_file)}
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
        opened._db.execute(f"DROP TABLE IF EXISTS document_chunk, {SIDE}, {MOVES}")
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

    # Two migrations in a row (MiniLM -> hybrid -> prefixed MiniLM): a rollback returns to the hybrid's vectors.
    migrate("--to", TARGET, capsys=capsys)
    on_target = rows(store, KNOWLEDGE)
    report = migrate("--to", PREFIXED, capsys=capsys)
    assert {c["collection"]: c["embedded"] for c in report["collections"]} == {KNOWLEDGE: len(on_target), "file-1": 20}
    assert {recorded_model(chunk.metadata) for chunk in rows(store, KNOWLEDGE).values()} == {PREFIXED}
    back = migrate("--rollback", PREFIXED, capsys=capsys)
    assert back["model"] == TARGET and {c["embedded"] for c in back["collections"]} == {0}
    restored = rows(store, KNOWLEDGE)
    assert all(np.array_equal(restored[i].vector, chunk.vector) and restored[i].metadata == chunk.metadata
               for i, chunk in on_target.items())

    migrate("--to", TARGET, "--drop-old", capsys=capsys)
    kept = store._db.execute(f"SELECT count(*) FROM {SIDE}").fetchone()[0]
    store._db.commit()
    assert kept == 0


class OpenWebUIMeanwhile(EmbeddingsClient):
    """Our embeddings client; Open WebUI writes as the migration embeds: during the build it adds two chunks
    and edits one; while the cutover settles it deletes one chunk being settled and edits another."""

    def __init__(self, settings: Settings, store: PgvectorStore, docs: list[dict], changed: str) -> None:
        super().__init__(settings)
        self.settings, self.store, self.docs, self.changed = settings, store, docs, changed
        self.building, self.settling = True, False

    def embed(self, model, texts, input_type):  # type: ignore[no-untyped-def]
        if self.building and texts != ["model check"]:
            self.building = False
            written_by_open_webui(self.settings, self.store, KNOWLEDGE, self.docs)
            self.store._db.execute("UPDATE document_chunk SET text = 'edited during the build' WHERE id = %s",
                                   (self.changed,))
            self.store._db.commit()
        if self.settling:
            self.settling = False
            self.store._db.execute("DELETE FROM document_chunk WHERE id = 'doomed'")
            self.store._db.execute("UPDATE document_chunk SET text = 'a memory edited while it settles' "
                                   "WHERE id = 'memory-1'")
            self.store._db.commit()
        return super().embed(model, texts, input_type)


def test_writes_during_the_build_the_switch_and_the_settling_are_brought_over(settings: Settings,
                                                                            store: PgvectorStore) -> None:
    _, docs, _ = scifact_sample()
    abstracts = list(docs.values())
    ids = written_by_open_webui(settings, store, KNOWLEDGE, abstracts[:40])
    embeddings = OpenWebUIMeanwhile(settings, store, abstracts[50:52], changed=ids[0])
    minilm = EmbeddingsClient(settings)

    def switch(model: str) -> None:  # after the commit, before Open WebUI switches, it still embeds with MiniLM
        late = written_by_open_webui(settings, store, KNOWLEDGE, abstracts[60:62])
        store._db.execute("UPDATE document_chunk SET id = 'doomed' WHERE id = %s", (late[1],))
        [memory] = minilm.embed(MODEL, ["a memory"], "document")  # Open WebUI's memories record no model
        store._db.execute("INSERT INTO document_chunk (id, vector, collection_name, text, vmetadata) VALUES "
                          "('memory-1', %s, %s, 'a memory', '{\"created_at\": 1}')",
                          (vector_literal(memory, WIDE), KNOWLEDGE))
        # An edit that keeps the metadata (now naming the new model) but brings a MiniLM vector.
        [edited] = minilm.embed(MODEL, ["edited after the commit"], "document")
        store._db.execute("UPDATE document_chunk SET text = 'edited after the commit', vector = %s WHERE id = %s",
                          (vector_literal(edited, WIDE), ids[1]))
        store._db.commit()
        embeddings.settling = True

    client = PgvectorClient(pgvector_url(settings))
    result = migrate_pgvector(client, embeddings, TARGET, default_model=MODEL, switch=switch, batch=16)
    # late, the MiniLM-vector edit, the memory (its second pass: edited while it settled); not the deleted one
    assert result.cutover is not None and result.cutover.settled_after == 3
    stored = rows(store, KNOWLEDGE)
    assert "doomed" not in stored and len(stored) == 40 + 2 + 1 + 1  # the deleted chunk stays deleted
    assert stored[ids[0]].text == "edited during the build" and stored[ids[1]].text == "edited after the commit"
    assert stored["memory-1"].text == "a memory edited while it settles"
    assert {recorded_model(chunk.metadata) for chunk in stored.values()} == {TARGET}
    texts = sorted(stored)
    vectors = EmbeddingsClient(settings).embed(TARGET, [stored[i].text.replace("\n", " ") for i in texts], "document")
    for chunk_id, vector in zip(texts, vectors):  # every chunk: the new model's vector of its text as it is now
        assert np.abs(stored[chunk_id].vector - vector).max() < 2e-3, chunk_id
    settled = store._db.execute(f"SELECT settled FROM {MOVES} WHERE collection_name = %s", (KNOWLEDGE,)).fetchone()
    store._db.commit()
    assert settled == (True,)


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

    with PgvectorStore(pgvector_url(settings)) as other:  # another migrate or restore is writing the store
        other.hold_writer_lock()
        assert main(["migrate", "--to", PREFIXED, "--store-only"]) == 1
        assert "another vector-bridge command" in capsys.readouterr().err

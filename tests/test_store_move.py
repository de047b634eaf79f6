"""`vector-bridge migrate --to-store`: every collection of a real Chroma server into a real PostgreSQL with
pgvector, ids, texts, metadata and vectors unchanged; later runs catch up (adds, changes, deletes); a run
killed at any moment is finished by the next one, and no page is ever half written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import chromadb
import numpy as np
import psycopg
import pytest

from config import Settings, load_settings
from tests.servers import REPO, free_port
from vector_bridge.pgvector_store import Chunk, PgvectorStore, vector_literal
from vector_bridge.postgres import pgvector_url, postgres_service
from vector_bridge.stack import chroma_service
from vector_bridge.store import TOOL_COLLECTIONS

pytestmark = pytest.mark.slow
DIM = 384
BIG = 3000  # chunks in the collection a kill cuts: a dozen pages, so the kill lands midway
CONFIG = repr({"engine": "openai", "model": "all-MiniLM-L6-v2"})


@pytest.fixture(scope="module")
def settings() -> Iterator[Settings]:
    root = Path(tempfile.mkdtemp(prefix="store-move-"))
    os.chmod(root, 0o711)  # run as root, PostgreSQL's unprivileged user passes through here
    yield load_settings(chroma_port=free_port(), chroma_path=root / "chroma", postgres_port=free_port(),
                        postgres_path=root / "postgres", state_dir=root / "state", log_dir=root / "logs")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def stores(settings: Settings) -> Iterator[chromadb.ClientAPI]:
    services = [chroma_service(settings), postgres_service(settings)]
    try:
        for service in services:
            service.spawn()
            service.wait_ready()
        yield chromadb.HttpClient(host="127.0.0.1", port=settings.chroma_port)
    finally:
        for service in reversed(services):
            service.stop()


def fill(client: chromadb.ClientAPI, name: str, count: int, seed: int, *, start: int = 0) -> None:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    collection = client.get_or_create_collection(name, metadata={"hnsw:space": "cosine"})
    ids = [f"{name}-{i}" for i in range(start, start + count)]
    texts = [f"Chunk {i} of {name}: 한국어 text, quotes \" and newlines\n here" for i in range(start, start + count)]
    metadatas = [{"name": f"{name}.md", "source": f"{name}.md", "file_id": name, "start_index": i * 100,
                  "embedding_config": CONFIG, "score": 0.5 + i / 1e4} for i in range(start, start + count)]
    for page in range(0, count, 500):
        collection.add(ids=ids[page:page + 500], documents=texts[page:page + 500],
                       metadatas=metadatas[page:page + 500], embeddings=vectors[page:page + 500])


def cli(settings: Settings, *args: str, **popen: object) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBED_")} | {
        "EMBED_CHROMA_PORT": str(settings.chroma_port), "EMBED_STATE_DIR": str(settings.state_dir),
        "EMBED_POSTGRES_PORT": str(settings.postgres_port)}
    return subprocess.Popen([sys.executable, "-m", "vector_bridge.cli", "migrate", "--to-store", "pgvector", *args],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def move(settings: Settings) -> dict:
    process = cli(settings, "--json")
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    return json.loads(out)


def assert_identical(client: chromadb.ClientAPI, settings: Settings, names: list[str]) -> None:
    with PgvectorStore(pgvector_url(settings)) as target:
        assert set(names) <= set(target.collections())
        for name in names:
            source = client.get_collection(name).get(include=["documents", "metadatas", "embeddings"])
            expected = {i: (d, m, np.asarray(v, dtype=np.float32)) for i, d, m, v in
                        zip(source["ids"], source["documents"], source["metadatas"], source["embeddings"])}
            stored = {chunk.id: chunk for chunk in target.read(name)}
            assert set(stored) == set(expected), name
            for chunk_id, (text, metadata, vector) in expected.items():
                chunk = stored[chunk_id]
                assert (chunk.text, chunk.metadata) == (text, metadata)
                assert np.abs(chunk.vector - vector).max() <= 1e-6


def test_every_collection_arrives_unchanged_and_later_runs_catch_up(stores: chromadb.ClientAPI,
                                                                    settings: Settings) -> None:
    names = ["knowledge-a", "file-1", "file-2", "user-memory-u1"]
    for seed, name in enumerate(names):
        fill(stores, name, 300 + 50 * seed, seed)
    fill(stores, "knowledge-a.pre.other-model", 20, 9)  # what `migrate --to` keeps: not the live store

    report = move(settings)
    assert report["dimension"] == DIM and report["skipped"] == ["knowledge-a.pre.other-model"]
    with PgvectorStore(pgvector_url(settings)) as target:
        assert "knowledge-a.pre.other-model" not in target.collections()
    assert {c["collection"]: c["written"] for c in report["collections"]} == {"file-1": 350, "file-2": 400,
                                                                           "knowledge-a": 300, "user-memory-u1": 450}
    assert_identical(stores, settings, names)

    # Open WebUI kept writing to Chroma meanwhile: an upload, an edit, a deletion.
    fill(stores, "knowledge-a", 10, 42, start=300)
    edited = np.eye(DIM, dtype=np.float32)[:1]  # the client would embed a text given without its vector
    stores.get_collection("file-1").update(ids=["file-1-3"], documents=["edited"], embeddings=edited)
    stores.get_collection("file-2").delete(ids=["file-2-0", "file-2-1"])
    fill(stores, "file-3", 5, 7)
    again = {c["collection"]: c for c in move(settings)["collections"]}
    assert (again["knowledge-a"]["written"], again["file-1"]["written"], again["file-2"]["removed"]) == (10, 1, 2)
    assert again["file-3"]["written"] == 5 and again["user-memory-u1"]["written"] == 0
    assert_identical(stores, settings, [*names, "file-3"])
    with psycopg.connect(pgvector_url(settings)) as connection:
        indexes = [row[0] for row in connection.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'document_chunk'").fetchall()]
    assert any("hnsw" in index and "vector_cosine_ops" in index for index in indexes)


def test_after_the_switch_what_open_webui_wrote_in_pgvector_is_never_undone(stores: chromadb.ClientAPI,
                                                                            settings: Settings) -> None:
    fill(stores, "kb-switch", 50, 21)
    metadata = {"name": "nul\x00.md", "embedding_config": CONFIG}  # PostgreSQL holds no NUL: dropped, as Open WebUI does
    stores.get_collection("kb-switch").add(ids=["with-nul"], documents=["a\x00b"], metadatas=[metadata],
                                           embeddings=np.eye(DIM, dtype=np.float32)[1:2])
    move(settings)
    # A vector changed alone (re-embedded with the same model and metadata) still counts as a change.
    stores.get_collection("kb-switch").update(ids=["kb-switch-1"], embeddings=np.eye(DIM, dtype=np.float32)[2:3])
    assert {c["collection"]: c["written"] for c in move(settings)["collections"]}["kb-switch"] == 1
    # Open WebUI now runs on pgvector: a new upload there, and an owner removing a file there.
    with PgvectorStore(pgvector_url(settings)) as target, psycopg.connect(pgvector_url(settings)) as connection:
        table = target.table()
        connection.execute("INSERT INTO document_chunk (id, vector, collection_name, text, vmetadata) "
                           "VALUES ('after-switch', %s, 'kb-switch', 'new upload', '{}')",
                           (vector_literal(np.eye(DIM, dtype=np.float32)[3], table.dimension),))
        connection.execute("DELETE FROM document_chunk WHERE id = 'kb-switch-2'")
        connection.execute("UPDATE document_chunk SET text = 'edited in pgvector' WHERE id = 'kb-switch-3'")
    report = {c["collection"]: c for c in move(settings)["collections"]}["kb-switch"]
    assert (report["written"], report["removed"], report["kept"], report["missing"]) == (0, 0, 2, 1)
    with PgvectorStore(pgvector_url(settings)) as target:
        rows = {chunk.id: chunk for chunk in target.read("kb-switch")}
    assert "after-switch" in rows and "kb-switch-2" not in rows and rows["kb-switch-3"].text == "edited in pgvector"
    assert rows["with-nul"].text == "ab" and rows["with-nul"].metadata["name"] == "nul.md"


def test_a_run_killed_midway_is_finished_by_the_next(stores: chromadb.ClientAPI, settings: Settings) -> None:
    fill(stores, "big", BIG, 11)
    with PgvectorStore(pgvector_url(settings)) as target:
        assert "big" not in target.collections()
    process = cli(settings, "--collection", "big", start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with PgvectorStore(pgvector_url(settings)) as target:
            written = target.collections().get("big", 0)
        if written:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    with PgvectorStore(pgvector_url(settings)) as target:
        written = target.collections().get("big", 0)
    assert 0 < written < BIG and written % 256 == 0, written  # whole pages only
    report = move(settings)
    assert {c["collection"]: c["written"] for c in report["collections"]}["big"] == BIG - written
    assert_identical(stores, settings, ["big"])


def test_bad_targets_are_clear_errors(settings: Settings) -> None:
    for target, expected in (("mysql://x", "postgresql:// URL"),
                             (f"postgresql://postgres:wrong-secret@127.0.0.1:{settings.postgres_port}/postgres",
                              "cannot connect")):
        process = subprocess.run([sys.executable, "-m", "vector_bridge.cli", "migrate", "--to-store", target],
                                 capture_output=True, text=True, cwd=REPO, timeout=120,
                                 env={**os.environ, "EMBED_CHROMA_PORT": str(settings.chroma_port)})
        assert process.returncode != 0 and expected in process.stderr and "wrong-secret" not in process.stderr


def test_replace_takes_a_collection_over_once_and_a_killed_take_over_goes_on(stores: chromadb.ClientAPI,
                                                                               settings: Settings) -> None:
    fill(stores, "kb-old", 4000, 70)
    url = pgvector_url(settings)
    with PgvectorStore(url) as target:  # rows no move wrote: half the ids with other texts, and one more
        old = [Chunk(f"kb-old-{i}", "old text", np.eye(DIM, dtype=np.float32)[0], {}) for i in range(0, 4000, 2)]
        target.upsert("kb-old", [*old, Chunk("left-over", "old text", np.eye(DIM, dtype=np.float32)[1], {})],
                      target.table())
    process = cli(settings, "--collection", "kb-old")
    out, err = process.communicate(timeout=600)
    assert process.returncode == 1 and "no move from this store wrote" in err and "--replace" in err

    def rewritten() -> int:
        with psycopg.connect(url) as connection:
            return connection.execute("SELECT count(*) FROM document_chunk WHERE collection_name = 'kb-old' "
                                      "AND text <> 'old text'").fetchone()[0]

    process = cli(settings, "--collection", "kb-old", "--replace", start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not rewritten():
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    with psycopg.connect(url) as connection:
        left = connection.execute("SELECT count(*) FROM document_chunk WHERE collection_name = 'kb-old' "
                                  "AND text = 'old text'").fetchone()[0]
    assert left > 0 and rewritten() > 0, "the kill came after the run had finished"
    # The take-over was recorded before the first write: the next run goes on without --replace.
    report = {c["collection"]: c for c in move(settings)["collections"]}["kb-old"]
    assert report["kept"] == 0
    assert_identical(stores, settings, ["kb-old"])

    # Open WebUI now runs on pgvector and edits a chunk: a later --replace leaves it as Open WebUI wrote it.
    with psycopg.connect(url) as connection:
        connection.execute("UPDATE document_chunk SET text = 'edited in pgvector' WHERE id = 'kb-old-1'")
    process = cli(settings, "--collection", "kb-old", "--replace", "--json")
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    report = json.loads(out)["collections"][0]
    assert (report["written"], report["kept"]) == (0, 1)
    with PgvectorStore(url) as target:
        assert next(target.read("kb-old", ["kb-old-1"])).text == "edited in pgvector"


def test_a_collection_deleted_in_chroma_goes_from_pgvector_but_not_what_open_webui_wrote(
        stores: chromadb.ClientAPI, settings: Settings) -> None:
    fill(stores, "kb-deleted", 20, 50)
    fill(stores, "kb-deleted-edited", 20, 51)
    move(settings)
    with psycopg.connect(pgvector_url(settings)) as connection:  # Open WebUI, on pgvector, edits a chunk
        connection.execute("UPDATE document_chunk SET text = 'edited in pgvector' WHERE id = 'kb-deleted-edited-0'")
    stores.delete_collection("kb-deleted")
    stores.delete_collection("kb-deleted-edited")
    report = {c["collection"]: c for c in move(settings)["collections"]}
    assert (report["kb-deleted"]["removed"], report["kb-deleted"]["kept"]) == (20, 0)
    assert (report["kb-deleted-edited"]["removed"], report["kb-deleted-edited"]["kept"]) == (19, 1)
    with PgvectorStore(pgvector_url(settings)) as target:
        collections = target.collections()
    assert "kb-deleted" not in collections and collections["kb-deleted-edited"] == 1
    assert {"kb-deleted", "kb-deleted-edited"}.isdisjoint(c["collection"] for c in move(settings)["collections"])


def test_another_chroma_store_moved_into_the_same_pgvector_removes_nothing(stores: chromadb.ClientAPI,
                                                                           settings: Settings) -> None:
    """A Chroma store made again (or another one) has the same database id as every Chroma: what it lacks is no
    proof that anything was deleted, in a collection of the same name either."""
    fill(stores, "kb-first", 10, 95)
    move(settings)
    other = settings.model_copy(update={"chroma_port": free_port(), "chroma_path": settings.chroma_path.with_name("c2"),
                                        "log_dir": settings.log_dir.with_name("logs-c2")})
    service = chroma_service(other)
    service.spawn()
    try:
        service.wait_ready()
        second = chromadb.HttpClient(host="127.0.0.1", port=other.chroma_port)
        fill(second, "kb-second", 5, 96)
        fill(second, "kb-first", 1, 97, start=100)  # Open WebUI writing into the same knowledge base there
        process = cli(other)
        out, err = process.communicate(timeout=600)
        assert process.returncode == 1 and "kb-first" in err and "another store" in err and "--replace" in err
        process = cli(other, "--json", "--collection", "kb-second")
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
        assert {c["collection"]: c["written"] for c in json.loads(out)["collections"]} == {"kb-second": 5}
        with PgvectorStore(pgvector_url(settings)) as target:
            assert target.collections()["kb-first"] == 10  # the first store's chunks, untouched
        # Asked for: --replace makes kb-first the second store's copy; then the first store is the other one.
        process = cli(other, "--json", "--collection", "kb-first", "--replace")
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
        assert {c["collection"]: (c["written"], c["removed"]) for c in json.loads(out)["collections"]} == {
            "kb-first": (1, 10)}
        process = cli(settings, "--collection", "kb-first")
        out, err = process.communicate(timeout=600)
        assert process.returncode == 1 and "another store" in err
        process = cli(settings, "--json", "--collection", "kb-first", "--replace")  # and back
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    finally:
        service.stop()
    with PgvectorStore(pgvector_url(settings)) as target:
        collections = target.collections()
    assert collections["kb-first"] == 10 and collections["kb-second"] == 5
    assert_identical(stores, settings, ["kb-first"])
    report = move(settings)  # the first store does not remove what the second wrote, and says so
    assert "kb-second" not in {c["collection"] for c in report["collections"]} and report["left"] == ["kb-second"]


def test_a_migrate_swap_cut_between_its_renames_removes_nothing(stores: chromadb.ClientAPI,
                                                                 settings: Settings) -> None:
    fill(stores, "kb-swap", 8, 98)
    move(settings)
    # What a migrate killed between its two renames leaves: the old vectors aside, the new not yet in place.
    stores.get_collection("kb-swap").modify(name="kb-swap.pre.other-model")
    fill(stores, "kb-swap.to.other-model", 8, 99)
    process = cli(settings, "--json")
    out, err = process.communicate(timeout=600)
    report = json.loads(out)
    assert process.returncode == 1 and report["away"] == ["kb-swap"]  # not a run to switch after
    assert "kb-swap" not in {c["collection"] for c in report["collections"]}
    with PgvectorStore(pgvector_url(settings)) as target:
        assert target.collections()["kb-swap"] == 8
    stores.get_collection("kb-swap.pre.other-model").modify(name="kb-swap")  # as the next migrate run does
    stores.delete_collection("kb-swap.to.other-model")


def test_an_emptied_collection_is_refused_until_replaced_and_a_table_made_again_starts_afresh(
        stores: chromadb.ClientAPI, settings: Settings) -> None:
    fill(stores, "kb-emptied", 30, 60)
    move(settings)
    with psycopg.connect(pgvector_url(settings)) as connection:
        connection.execute("DELETE FROM document_chunk WHERE collection_name = 'kb-emptied'")
    process = cli(settings)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 1 and "kb-emptied" in err and "holds none" in err and "--copy-again" in err
    process = cli(settings, "--replace", "--json")  # --replace only takes over collections no move wrote
    out, err = process.communicate(timeout=600)
    assert process.returncode == 1 and "holds none" in err
    process = cli(settings, "--copy-again", "kb-emptied", "--json")
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    assert {c["collection"]: c["written"] for c in json.loads(out)["collections"]}["kb-emptied"] == 30
    assert_identical(stores, settings, ["kb-emptied"])

    # The table dropped and made again: what moves wrote into the old one is no record of the new.
    with psycopg.connect(pgvector_url(settings)) as connection:
        connection.execute("DROP TABLE document_chunk")
    live = sorted(c.name for c in stores.list_collections() if "." not in c.name and c.name not in TOOL_COLLECTIONS)
    report = {c["collection"]: c["written"] for c in move(settings)["collections"]}
    assert report == {name: stores.get_collection(name).count() for name in live}
    assert_identical(stores, settings, [name for name in live if name != "kb-switch"])  # its NUL: dropped

"""`vector-bridge migrate --to-store chroma`: every collection of a real PostgreSQL with pgvector back into a real
Chroma server, ids, texts and metadata unchanged and vectors in their model's length (the table's zero padding
removed); a round trip Chroma -> pgvector -> Chroma gives the first store back; later runs catch up but never
undo what Open WebUI wrote in Chroma after the switch; a run killed at any moment is finished by the next."""

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
from urllib.parse import quote

import chromadb
import numpy as np
import psycopg
import pytest

from config import Settings, load_settings
from tests.servers import REPO, free_port
from tests.test_store_move import CONFIG, DIM, fill
from vector_bridge.backup import backup
from vector_bridge.backup_file import read_contents
from vector_bridge.move_chroma import ChromaTarget
from vector_bridge.pgvector_store import PgvectorStore, vector_literal
from vector_bridge.postgres import pgvector_url, postgres_service
from vector_bridge.stack import chroma_service
from vector_bridge.store import MOVES_COLLECTION, STORE_COLLECTION

pytestmark = pytest.mark.slow
HYBRID_PG = "all-MiniLM-L6-v2-hybrid-pg"  # 3,456 dimensions, kept as halfvec by pgvector
BIG = 3000  # chunks in the collection a kill cuts: a dozen pages, so the kill lands midway


@pytest.fixture(scope="module")
def settings() -> Iterator[Settings]:
    root = Path(tempfile.mkdtemp(prefix="store-back-"))
    os.chmod(root, 0o711)  # run as root, PostgreSQL's unprivileged user passes through here
    yield load_settings(chroma_port=free_port(), chroma_path=root / "chroma", postgres_port=free_port(),
                        postgres_path=root / "postgres", state_dir=root / "state", log_dir=root / "logs")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def back_port(settings: Settings) -> int:
    return free_port()


@pytest.fixture(scope="module")
def stores(settings: Settings, back_port: int) -> Iterator[tuple[chromadb.ClientAPI, chromadb.ClientAPI]]:
    """The Chroma store Open WebUI left (A), PostgreSQL, and the Chroma server moves go back into (B)."""
    other = settings.model_copy(update={"chroma_port": back_port, "chroma_path": settings.chroma_path.with_name("back"),
                                        "log_dir": settings.log_dir.with_name("logs-back")})
    services = [chroma_service(settings), chroma_service(other), postgres_service(settings)]
    try:
        for service in services:
            service.spawn()
            service.wait_ready()
        yield (chromadb.HttpClient(host="127.0.0.1", port=settings.chroma_port),
               chromadb.HttpClient(host="127.0.0.1", port=back_port))
    finally:
        for service in reversed(services):
            service.stop()


def schema_url(settings: Settings, schema: str, *, public: bool = True) -> str:
    """One more document_chunk in the same database: a schema first on the search path (then public, which
    holds pgvector's types, and the default document_chunk)."""
    with psycopg.connect(pgvector_url(settings), autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    path = f"{schema},public" if public else schema
    return f"{pgvector_url(settings)}?options={quote(f'-csearch_path={path}', safe='')}"


def source_schema(settings: Settings, schema: str) -> str:
    """A pgvector store of its own (a schema with Open WebUI's table for DIM-length vectors): its URL."""
    url = schema_url(settings, schema)
    with PgvectorStore(url) as store:
        store.create_table(DIM)
    return url


def cli(settings: Settings, chroma_port: int, to_store: str, *args: str, url: str | None = None,
        **popen: object) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBED_")} | {
        "EMBED_CHROMA_PORT": str(chroma_port), "EMBED_STATE_DIR": str(settings.state_dir),
        "EMBED_POSTGRES_PORT": str(settings.postgres_port), "EMBED_STORE": "pgvector", "HF_HUB_OFFLINE": "1"}
    if url:
        env["EMBED_PGVECTOR_URL"] = url
    return subprocess.Popen([sys.executable, "-m", "vector_bridge.cli", "migrate", "--to-store", to_store, *args],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def run(settings: Settings, chroma_port: int, to_store: str, *args: str, url: str | None = None) -> dict:
    process = cli(settings, chroma_port, to_store, "--json", *args, url=url)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    return json.loads(out)


def by_name(report: dict) -> dict[str, dict]:
    return {c["collection"]: c for c in report["collections"]}


def only(*names: str) -> list[str]:
    return [arg for name in names for arg in ("--collection", name)]


def contents(client: chromadb.ClientAPI, name: str) -> dict[str, tuple]:
    got = client.get_collection(name).get(include=["documents", "metadatas", "embeddings"])
    return {i: (d, m, np.asarray(v, dtype=np.float32)) for i, d, m, v in
            zip(got["ids"], got["documents"], got["metadatas"], got["embeddings"])}


def assert_same(first: dict[str, tuple], second: dict[str, tuple]) -> None:
    assert set(first) == set(second)
    for chunk_id, (text, metadata, vector) in first.items():
        other = second[chunk_id]
        assert (other[0], other[1]) == (text, metadata), chunk_id
        assert other[2].shape == vector.shape and np.abs(other[2] - vector).max() <= 1e-6, chunk_id


def insert(url: str, name: str, rows: list[tuple[str, str, dict, np.ndarray]]) -> None:
    """Rows as Open WebUI writes them: its own ids, its vector padded to the table's length."""
    with PgvectorStore(url) as store, psycopg.connect(url, autocommit=True) as connection:
        table = store.table()
        kind = "halfvec" if table.halfvec else "vector"
        with connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO document_chunk (id, vector, collection_name, text, vmetadata) "
                f"VALUES (%s, %s::{kind}, %s, %s, %s)",
                [(i, vector_literal(v, table.dimension), name, t, json.dumps(m)) for i, t, m, v in rows])


def unit_rows(name: str, count: int, dim: int, seed: int, metadata: dict | None = None) -> list:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    base = {"name": f"{name}.md", "embedding_config": CONFIG} if metadata is None else metadata
    return [(f"{name}-{i}", f"chunk {i} of {name}: 한국어", base | {"start_index": i}, vectors[i])
            for i in range(count)]


def test_round_trip_chroma_pgvector_chroma(stores: tuple, settings: Settings, back_port: int) -> None:
    first, back = stores
    names = ["knowledge-rt", "file-rt-1", "user-memory-rt"]
    for seed, name in enumerate(names):
        fill(first, name, 300 + 100 * seed, 100 + seed)
    index = first.get_or_create_collection("knowledge-bases", metadata={"hnsw:space": "cosine"})
    rows = unit_rows("kb-index", 3, DIM, 7, metadata={"name": "Lab notes"})  # records no model, as Open WebUI's
    index.add(ids=[r[0] for r in rows], documents=[r[1] for r in rows], metadatas=[r[2] for r in rows],
              embeddings=np.stack([r[3] for r in rows]))
    names.append("knowledge-bases")

    there = run(settings, settings.chroma_port, "pgvector", *only(*names))
    assert there["dimension"] == DIM
    report = run(settings, back_port, "chroma", *only(*names))
    assert report["target"] == "chroma" and report["dimension"] == DIM
    assert {n: c["written"] for n, c in by_name(report).items()} == {
        "knowledge-rt": 300, "file-rt-1": 400, "user-memory-rt": 500, "knowledge-bases": 3}
    assert report["openwebui_env"] == {"VECTOR_DB": "chroma", "CHROMA_HTTP_HOST": "127.0.0.1",
                                       "CHROMA_HTTP_PORT": str(back_port), "CHROMA_HTTP_SSL": "false"}
    for name in names:
        assert_same(contents(first, name), contents(back, name))
        collection = back.get_collection(name)
        # as Open WebUI creates its collections, with the ef_search `vector-bridge up` gives every collection
        assert collection.metadata == {"hnsw:space": "cosine"}
        assert collection.configuration_json["hnsw"]["space"] == "cosine"
        assert collection.configuration_json["hnsw"]["ef_search"] == settings.chroma_ef_search
    assert MOVES_COLLECTION in {c.name for c in back.list_collections()}
    again = run(settings, back_port, "chroma", *only(*names))
    assert {c["written"] + c["removed"] for c in again["collections"]} == {0}

    # The plain report says what to switch, and never the database's password.
    process = cli(settings, back_port, "chroma", *only("knowledge-bases"))
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    assert f"CHROMA_HTTP_PORT={back_port}" in out and "VECTOR_DB=chroma" in out and "PGVECTOR_*" in out
    password = (settings.state_dir / "postgres-openwebui.password").read_text().strip()
    assert password not in out + err


def test_catch_up_and_what_open_webui_wrote_in_chroma_is_never_undone(stores: tuple, settings: Settings,
                                                                    back_port: int) -> None:
    _, back = stores
    url = pgvector_url(settings)
    with PgvectorStore(url) as store:
        if store.table() is None:
            store.create_table(DIM)
    insert(url, "kb-live", unit_rows("kb-live", 40, DIM, 30))
    run(settings, back_port, "chroma", *only("kb-live"))
    # Open WebUI, still on pgvector, writes meanwhile: an upload, an edit, a deletion.
    insert(url, "kb-live", unit_rows("kb-new", 5, DIM, 31))
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("UPDATE document_chunk SET text = 'edited in pgvector', vmetadata = vmetadata - 'name' "
                           "WHERE id = 'kb-live-1'")
        connection.execute("DELETE FROM document_chunk WHERE id = 'kb-live-2'")
    report = by_name(run(settings, back_port, "chroma", *only("kb-live")))["kb-live"]
    assert (report["written"], report["removed"], report["kept"]) == (6, 1, 0)
    moved = contents(back, "kb-live")
    assert len(moved) == 44 and moved["kb-live-1"][0] == "edited in pgvector" and "kb-live-2" not in moved
    assert moved["kb-live-1"][1] == {"embedding_config": CONFIG, "start_index": 1}  # a key gone is gone

    # Open WebUI now runs on Chroma: a new upload there, an owner removing a chunk, an edit there.
    collection = back.get_collection("kb-live")
    collection.add(ids=["after-switch"], documents=["new upload"], metadatas=[{"name": "new.md"}],
                   embeddings=np.eye(DIM, dtype=np.float32)[:1])
    collection.delete(ids=["kb-live-3"])
    # (with its vector: the client would otherwise embed the text itself)
    collection.update(ids=["kb-live-4"], documents=["edited in Chroma"], embeddings=moved["kb-live-4"][2][None])
    with psycopg.connect(url, autocommit=True) as connection:  # and a last change still left in pgvector
        connection.execute("DELETE FROM document_chunk WHERE id = 'kb-live-4'")
    report = by_name(run(settings, back_port, "chroma", *only("kb-live")))["kb-live"]
    assert (report["written"], report["removed"], report["kept"], report["missing"]) == (0, 0, 2, 1)
    moved = contents(back, "kb-live")
    assert "after-switch" in moved and "kb-live-3" not in moved and moved["kb-live-4"][0] == "edited in Chroma"


def test_padding_is_removed_to_each_models_length_and_halfvec_compares_as_stored(stores: tuple, settings: Settings,
                                                                              back_port: int) -> None:
    _, back = stores
    padded = schema_url(settings, "padded")
    with PgvectorStore(padded) as store:
        store.create_table(1536)  # Open WebUI's default length, for a 384-d model
    minilm = unit_rows("kb-pad", 40, DIM, 40)
    index = unit_rows("kb-pad-index", 4, DIM, 41, metadata={"name": "Lab notes"})  # no model recorded
    other = unit_rows("kb-other", 12, 256, 42, metadata={"embedding_config": repr({"engine": "openai",
                                                                                   "model": "not-served-here"})})
    for name, rows in (("kb-pad", minilm), ("kb-pad-index", index), ("kb-other", other)):
        insert(padded, name, rows)
    report = run(settings, back_port, "chroma", url=padded)
    assert {n: c["dimension"] for n, c in by_name(report).items()} == {"kb-pad": DIM, "kb-pad-index": DIM,
                                                                        "kb-other": 256}
    assert report["dimensions_from_data"] == {"not-served-here": 256} and report["dimension"] is None
    for name, rows in (("kb-pad", minilm), ("kb-pad-index", index), ("kb-other", other)):
        assert_same({i: (t, m, v) for i, t, m, v in rows}, contents(back, name))

    # The pgvector-sized hybrid: 3,456 dimensions as halfvec; a short text's lexical part ends in zeros, so the
    # longest non-zero prefix would cut it: the model's length keeps it whole.
    half = schema_url(settings, "half")
    with PgvectorStore(half) as store:
        assert store.create_table(3456).halfvec
    rows = unit_rows("kb-hybrid", 20, 3456, 43, metadata={"embedding_config": repr({"engine": "openai",
                                                                                    "model": HYBRID_PG})})
    for _, _, _, vector in rows:
        vector[2000:] = 0
    insert(half, "kb-hybrid", rows)
    report = run(settings, back_port, "chroma", url=half)
    assert by_name(report)["kb-hybrid"]["dimension"] == 3456
    stored = {i: (t, m, v.astype(np.float16).astype(np.float32)) for i, t, m, v in rows}
    assert_same(stored, contents(back, "kb-hybrid"))
    assert run(settings, back_port, "chroma", url=half)["collections"][0]["written"] == 0


def test_a_run_killed_midway_is_finished_by_the_next(stores: tuple, settings: Settings, back_port: int) -> None:
    _, back = stores
    url = source_schema(settings, "big")
    rows = unit_rows("big", BIG, DIM, 50)
    insert(url, "big", rows)
    process = cli(settings, back_port, "chroma", url=url, start_new_session=True)
    deadline = time.monotonic() + 300
    written = 0
    while time.monotonic() < deadline and not written:
        try:
            written = back.get_collection("big").count()
        except Exception:  # not created yet
            pass
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    written = back.get_collection("big").count()
    assert 0 < written < BIG, written
    report = by_name(run(settings, back_port, "chroma", url=url))["big"]
    # the page the kill cut may be written again, never more
    assert BIG - written <= report["written"] <= BIG - written + 256, (written, report)
    assert_same({i: (t, m, v) for i, t, m, v in rows}, contents(back, "big"))
    assert run(settings, back_port, "chroma", url=url)["collections"][0]["written"] == 0


def test_a_page_cut_between_its_steps_is_taken_over_by_the_next_run(stores: tuple, settings: Settings,
                                                                     back_port: int) -> None:
    """What a kill leaves between the three steps of a page, made on purpose: its record entries pending, one
    chunk deleted and not yet added again, another still old while the source changed."""
    _, back = stores
    url = source_schema(settings, "cut")
    rows = unit_rows("kb-cut", 20, DIM, 70)
    insert(url, "kb-cut", rows)
    assert by_name(run(settings, back_port, "chroma", url=url))["kb-cut"]["written"] == 20
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("UPDATE document_chunk SET text = 'changed meanwhile' WHERE id = 'kb-cut-0'")
    page = ["kb-cut-0", "kb-cut-1", "kb-cut-2"]
    back.get_collection(MOVES_COLLECTION).update(ids=[f"kb-cut:{chunk_id}" for chunk_id in page],
                                                 metadatas=[{"pending": True}] * len(page))
    back.get_collection("kb-cut").delete(ids=["kb-cut-1"])
    report = by_name(run(settings, back_port, "chroma", url=url))["kb-cut"]
    assert (report["written"], report["removed"], report["kept"]) == (3, 0, 0)  # the cut page, whole, again
    expected = {i: (t, m, v) for i, t, m, v in rows} | {"kb-cut-0": ("changed meanwhile", *rows[0][2:])}
    assert_same(expected, contents(back, "kb-cut"))
    assert by_name(run(settings, back_port, "chroma", url=url))["kb-cut"]["written"] == 0


def test_a_collection_no_move_wrote_is_refused_unless_replaced(stores: tuple, settings: Settings,
                                                              back_port: int) -> None:
    _, back = stores
    url = source_schema(settings, "stale")
    rows = unit_rows("kb-stale", 10, DIM, 60)
    insert(url, "kb-stale", rows)
    old = back.get_or_create_collection("kb-stale", metadata={"hnsw:space": "cosine"})
    old.add(ids=["kb-stale-0", "left-from-before"], documents=["old text", "old chunk"],
            embeddings=np.eye(DIM, dtype=np.float32)[:2])
    process = cli(settings, back_port, "chroma", url=url)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 1 and "--replace" in err and "kb-stale" in err
    assert back.get_collection("kb-stale").count() == 2
    run(settings, back_port, "chroma", "--replace", url=url)
    assert_same({i: (t, m, v) for i, t, m, v in rows}, contents(back, "kb-stale"))
    # Open WebUI now runs on Chroma and edits a chunk: a later --replace leaves it as Open WebUI wrote it.
    back.get_collection("kb-stale").update(ids=["kb-stale-1"], documents=["edited in Chroma"],
                                           embeddings=rows[1][3][None])
    report = by_name(run(settings, back_port, "chroma", "--replace", url=url))["kb-stale"]
    assert (report["written"], report["kept"]) == (0, 1)
    assert contents(back, "kb-stale")["kb-stale-1"][0] == "edited in Chroma"

    # Open WebUI deleted the collection in Chroma (or it was emptied): refused, until --replace copies it anew.
    back.delete_collection("kb-stale")
    process = cli(settings, back_port, "chroma", url=url)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 1 and "holds none" in err and "--copy-again kb-stale" in err
    assert "kb-stale" not in {c.name for c in back.list_collections()}  # not made again unasked
    assert by_name(run(settings, back_port, "chroma", "--copy-again", "kb-stale", url=url))["kb-stale"]["written"] == 10
    assert_same({i: (t, m, v) for i, t, m, v in rows}, contents(back, "kb-stale"))


def test_a_take_over_cut_between_its_pages_is_finished_by_the_next_run(stores: tuple, settings: Settings,
                                                                        back_port: int) -> None:
    """What a kill leaves in a --replace run on Chroma, whose take-over records pages of 1,000 rows: its marker,
    and the entries of the first page only. The next run, without --replace, finishes it."""
    _, back = stores
    url = source_schema(settings, "taken")
    rows = unit_rows("kb-taken", 1200, DIM, 75)
    insert(url, "kb-taken", rows)
    old = back.get_or_create_collection("kb-taken", metadata={"hnsw:space": "cosine"})
    for start in range(0, 1200, 400):
        old.add(ids=[r[0] for r in rows[start:start + 400]], documents=["old text"] * 400,
                embeddings=np.stack([r[3] for r in rows[start:start + 400]]))
    prints = ChromaTarget(back, "").fingerprints("kb-taken")  # the rows as Chroma holds them
    with PgvectorStore(url) as store:
        source = store.identity()  # what the killed run wrote in each entry
    record = back.get_collection(MOVES_COLLECTION)
    record.upsert(ids=["kb-taken:"], embeddings=[[1.0]], metadatas=[{"collection": "kb-taken", "chunk": "",
                                                                     "take_over": True, "source": source,
                                                                     "whole": True}])
    first = rows[:1000]
    record.upsert(ids=[f"kb-taken:{r[0]}" for r in first], embeddings=[[1.0]] * len(first),
                  metadatas=[{"collection": "kb-taken", "chunk": r[0], "sent": "", "stored": prints[r[0]],
                              "pending": False, "source": source} for r in first])
    report = by_name(run(settings, back_port, "chroma", url=url))["kb-taken"]
    assert report["written"] == 1200 and report["kept"] == 0
    assert_same({i: (t, m, v) for i, t, m, v in rows}, contents(back, "kb-taken"))
    assert not record.get(ids=["kb-taken:"])["ids"]


def test_a_cut_take_over_of_another_stores_chunks_never_takes_open_webuis(stores: tuple, settings: Settings,
                                                                           back_port: int) -> None:
    """What a kill leaves in a --replace run that was to take over only another store's chunks: its marker says
    so, and the next run takes over no row that no move wrote (Open WebUI's)."""
    _, back = stores
    url = source_schema(settings, "mixed")
    insert(url, "kb-mixed", unit_rows("kb-mixed", 5, DIM, 79))
    run(settings, back_port, "chroma", url=url)
    back.get_collection("kb-mixed").add(ids=["foreign", "open-webui"], embeddings=np.eye(DIM, dtype=np.float32)[:2],
                                        documents=["from another store", "written by Open WebUI"])
    prints = ChromaTarget(back, "").fingerprints("kb-mixed")
    with PgvectorStore(url) as store:
        source = store.identity()
    record = back.get_collection(MOVES_COLLECTION)
    record.upsert(ids=["kb-mixed:foreign", "kb-mixed:"], embeddings=[[1.0]] * 2, metadatas=[
        {"collection": "kb-mixed", "chunk": "foreign", "sent": "", "stored": prints["foreign"], "pending": False,
         "source": "pgvector:another-store/1"},
        {"collection": "kb-mixed", "chunk": "", "take_over": True, "source": source, "whole": False}])
    report = by_name(run(settings, back_port, "chroma", url=url))["kb-mixed"]
    assert (report["removed"], report["kept"]) == (1, 1)  # the other store's chunk taken over, then gone
    left = contents(back, "kb-mixed")
    assert "foreign" not in left and left["open-webui"][0] == "written by Open WebUI"
    assert not record.get(ids=["kb-mixed:"])["ids"]


def test_a_collection_deleted_from_pgvector_goes_from_chroma_and_only_a_move_from_there_deletes_it(
        stores: tuple, settings: Settings, back_port: int) -> None:
    _, back = stores
    url = source_schema(settings, "gone")
    for seed, name in enumerate(["kb-gone", "kb-gone-edited", "kb-stays"]):
        insert(url, name, unit_rows(name, 5, DIM, 80 + seed))
    run(settings, back_port, "chroma", url=url)
    other = source_schema(settings, "other")  # another pgvector store moved into the same Chroma
    insert(other, "kb-elsewhere", unit_rows("kb-elsewhere", 3, DIM, 90))
    assert set(by_name(run(settings, back_port, "chroma", url=other))) == {"kb-elsewhere"}

    moved = contents(back, "kb-gone-edited")  # Open WebUI, on Chroma, edits a chunk
    back.get_collection("kb-gone-edited").update(ids=["kb-gone-edited-0"], documents=["edited in Chroma"],
                                                 embeddings=moved["kb-gone-edited-0"][2][None])
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("DELETE FROM document_chunk WHERE collection_name <> 'kb-stays'")
    report = by_name(run(settings, back_port, "chroma", url=url))
    assert (report["kb-gone"]["removed"], report["kb-gone"]["kept"]) == (5, 0)
    assert (report["kb-gone-edited"]["removed"], report["kb-gone-edited"]["kept"]) == (4, 1)
    names = {c.name for c in back.list_collections()}
    assert "kb-gone" not in names and {"kb-stays", "kb-elsewhere"} <= names
    assert list(contents(back, "kb-gone-edited")) == ["kb-gone-edited-0"]
    assert set(by_name(run(settings, back_port, "chroma", url=url))) == {"kb-stays"}

    # Backups leave the tools' own collections out: they describe the store they are in, not Open WebUI's data
    # (a copy restored elsewhere must not pass for this store as a source of moves).
    first = stores[0]
    assert {MOVES_COLLECTION, STORE_COLLECTION} <= {c.name for c in [*back.list_collections(),
                                                                    *first.list_collections()]}
    for client, name in ((back, "back"), (first, "first")):
        path = settings.state_dir.with_name(f"{name}.jsonl.gz")
        backup(client, path, progress=False)
        assert not {MOVES_COLLECTION, STORE_COLLECTION} & {header.name for header in read_contents(path)}


def test_clear_errors(stores: tuple, settings: Settings, back_port: int) -> None:
    empty = schema_url(settings, "nothing", public=False)
    wrong = f"postgresql://openwebui:wrong-secret@127.0.0.1:{settings.postgres_port}/openwebui"
    for url, expected in ((empty, "no document_chunk table"), (wrong, "cannot connect")):
        process = cli(settings, back_port, "chroma", url=url)
        out, err = process.communicate(timeout=600)
        assert process.returncode == 1 and expected in err and "wrong-secret" not in err, err


def test_a_page_of_another_length_is_refused_before_anything_is_deleted(stores: tuple, settings: Settings,
                                                                         back_port: int) -> None:
    _, back = stores
    url = source_schema(settings, "lengths")
    insert(url, "kb-len", unit_rows("kb-len", 4, DIM, 77))
    old = back.get_or_create_collection("kb-len", metadata={"hnsw:space": "cosine"})
    old.add(ids=["kb-len-0", "kb-len-1"], documents=["old", "old"], embeddings=np.eye(256, dtype=np.float32)[:2])
    process = cli(settings, back_port, "chroma", "--replace", url=url)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 1 and "256-dimension" in err
    assert back.get_collection("kb-len").count() == 2  # Chroma would refuse the add only after the delete


def test_a_move_out_of_pgvector_waits_for_no_other_writer(stores: tuple, settings: Settings, back_port: int) -> None:
    url = source_schema(settings, "locked")
    insert(url, "kb-locked", unit_rows("kb-locked", 2, DIM, 78))
    with PgvectorStore(url) as other:
        other.hold_writer_lock()  # a migrate or restore at work on the same database
        process = cli(settings, back_port, "chroma", url=url)
        out, err = process.communicate(timeout=600)
    assert process.returncode == 1 and "another vector-bridge command" in err
    assert by_name(run(settings, back_port, "chroma", url=url))["kb-locked"]["written"] == 2

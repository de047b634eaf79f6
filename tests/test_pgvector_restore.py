"""`vector-bridge restore` and `repair` on pgvector, against a real PostgreSQL: each collection is restored in
one transaction, so a restore killed at any moment leaves every collection whole (old rows or all of the
backup's), and the next run finishes it; clashes, ids taken by other collections and vectors longer than the
table are refused with nothing written."""

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

import numpy as np
import psycopg
import pytest

from config import Settings, load_settings
from tests.servers import REPO, free_port
from vector_bridge.backup_file import FORMAT, VERSION, encode_vector, line, private_gzip
from vector_bridge.pgvector_store import Chunk, PgvectorStore
from vector_bridge.postgres import pgvector_url, postgres_service

pytestmark = pytest.mark.slow
DIM = 384


@pytest.fixture(scope="module")
def settings() -> Iterator[Settings]:
    root = Path(tempfile.mkdtemp(prefix="pgvector-restore-"))
    os.chmod(root, 0o711)  # run as root, PostgreSQL's unprivileged user passes through here
    yield load_settings(store="pgvector", postgres_port=free_port(), postgres_path=root / "postgres",
                        state_dir=root / "state", log_dir=root / "logs")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres(settings: Settings) -> Iterator[str]:
    service = postgres_service(settings)
    service.spawn()
    try:
        service.wait_ready()
        yield pgvector_url(settings)
    finally:
        service.stop()


@pytest.fixture
def store(postgres: str) -> Iterator[PgvectorStore]:
    with PgvectorStore(postgres) as opened:
        opened._db.execute("DROP TABLE IF EXISTS document_chunk")
        opened._db.commit()
        yield opened


def chunks(name: str, count: int, seed: int, dim: int = DIM) -> list[Chunk]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    return [Chunk(f"{name}-{i}", f"Chunk {i} of {name} (seed {seed}): 한국어 \"quoted\"\nline",
                  vectors[i] / np.linalg.norm(vectors[i]),
                  {"file_id": f"{name}-file-{i % 3}", "name": f"{name}.md", "start_index": i}) for i in range(count)]


def write_backup(path: Path, collections: dict[str, list[Chunk]]) -> Path:
    with private_gzip(path) as out:
        out.write(line({"format": FORMAT, "version": VERSION, "chroma_version": "test", "created": 0}))
        for name, found in collections.items():
            out.write(line({"collection": name, "metadata": None, "count": len(found)}))
            for chunk in found:
                out.write(line({"id": chunk.id, "document": chunk.text, "metadata": chunk.metadata,
                                "embedding": encode_vector(chunk.vector)}))
            out.write(line({"end_collection": name, "count": len(found)}))
        out.write(line({"end": True, "collections": len(collections),
                        "chunks": sum(len(found) for found in collections.values())}))
    return path


def cli(settings: Settings, *args: str, **popen: object) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBED_")} | {
        "EMBED_STORE": "pgvector", "EMBED_STATE_DIR": str(settings.state_dir),
        "EMBED_POSTGRES_PORT": str(settings.postgres_port)}
    return subprocess.Popen([sys.executable, "-m", "vector_bridge.cli", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def run(settings: Settings, *args: str) -> tuple[int, str, str]:
    process = cli(settings, *args)
    out, err = process.communicate(timeout=600)
    return process.returncode, out, err


def assert_holds(store: PgvectorStore, name: str, expected: list[Chunk]) -> None:
    stored = {chunk.id: chunk for chunk in store.read(name)}
    assert set(stored) == {chunk.id for chunk in expected}, name
    for chunk in expected:
        found = stored[chunk.id]
        assert (found.text, found.metadata) == (chunk.text, chunk.metadata)
        assert np.abs(found.vector - chunk.vector).max() <= 1e-6


def test_restore_fills_a_new_database_and_keeps_what_is_there_unless_replaced(
        settings: Settings, store: PgvectorStore, tmp_path: Path) -> None:
    wanted = {"knowledge-a": chunks("knowledge-a", 300, 1), "file-1": chunks("file-1", 40, 2)}
    backup = write_backup(tmp_path / "store.jsonl.gz", wanted)
    code, out, err = run(settings, "restore", str(backup), "--json")
    assert code == 0, err
    assert json.loads(out)["chunks"] == 340
    assert store.table().dimension == DIM  # created for the backup's vectors, as openwebui-env sizes it
    for name, expected in wanted.items():
        assert_holds(store, name, expected)
    indexes = store._db.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'document_chunk'").fetchall()
    store._db.commit()
    assert any("hnsw" in row[0] for row in indexes)

    # Open WebUI wrote meanwhile: without --replace nothing is touched.
    store.upsert("knowledge-a", chunks("knowledge-a", 5, 9)[:1], store.table())
    code, _, err = run(settings, "restore", str(backup))
    assert code == 1 and "exist and hold data" in err and "--replace" in err
    assert len(list(store.read("knowledge-a"))) == 300
    code, _, err = run(settings, "restore", str(backup), "--replace")
    assert code == 0, err
    assert_holds(store, "knowledge-a", wanted["knowledge-a"])


def test_a_restore_killed_midway_leaves_each_collection_whole_and_the_next_run_finishes(
        settings: Settings, store: PgvectorStore, tmp_path: Path) -> None:
    old = {"small": chunks("small", 50, 3), "large": chunks("large", 4000, 4)}
    table = store.create_table(DIM)
    for name, found in old.items():
        store.upsert(name, found, table)
    new = {"small": chunks("small", 80, 5), "large": chunks("large", 12_000, 6)}
    backup = write_backup(tmp_path / "new.jsonl.gz", new)
    size = store._db.execute("SELECT pg_relation_size('document_chunk')").fetchone()[0]
    store._db.commit()

    process = cli(settings, "restore", str(backup), "--replace", start_new_session=True)
    deadline = time.monotonic() + 300
    # Rows a transaction has not committed are invisible, but they already take space in the table's file.
    while store._db.execute("SELECT pg_relation_size('document_chunk')").fetchone()[0] < size + 8_000_000:
        store._db.commit()
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)
    store._db.commit()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    assert_holds(store, "small", new["small"])  # restored and committed before the kill
    assert_holds(store, "large", old["large"])  # its transaction never committed: the old rows, all of them
    code, _, err = run(settings, "restore", str(backup), "--replace")
    assert code == 0, err
    for name, expected in new.items():
        assert_holds(store, name, expected)


def test_refusals_write_nothing(settings: Settings, store: PgvectorStore, tmp_path: Path) -> None:
    table = store.create_table(DIM)
    store.upsert("other", chunks("shared", 3, 7), table)  # ids shared-0.. belong to another collection
    taken = write_backup(tmp_path / "taken.jsonl.gz", {"mine": chunks("mine", 10, 8) + chunks("shared", 1, 8)})
    code, _, err = run(settings, "restore", str(taken))
    assert code == 1 and "shared-0" in err and "already used by other" in err
    assert "mine" not in store.collections()

    longer = write_backup(tmp_path / "longer.jsonl.gz", {"wide": chunks("wide", 5, 9, dim=DIM + 8)})
    code, _, err = run(settings, "restore", str(longer))
    assert code == 1 and f"{DIM + 8}-dimension" in err and "Open WebUI would cut it" in err
    assert "wide" not in store.collections()

    damaged = tmp_path / "damaged.jsonl.gz"
    damaged.write_bytes((tmp_path / "taken.jsonl.gz").read_bytes()[:-40])
    code, _, err = run(settings, "restore", str(damaged))
    assert code == 1 and "truncated" in err
    assert store.collections() == {"other": 3}


def test_repair_removes_chunks_of_files_the_knowledge_base_does_not_list(store: PgvectorStore, postgres: str) -> None:
    from vector_bridge.pgvector_store import PgvectorClient
    from vector_bridge.repair import remove_unlinked_chunks

    table = store.create_table(DIM)
    store.upsert("kb", chunks("kb", 30, 10), table)  # files kb-file-0, -1, -2; -2 was never linked
    client = PgvectorClient(postgres)
    try:
        removed = remove_unlinked_chunks(client.get_collection("kb"), {"kb-file-0", "kb-file-1"})
    finally:
        client.store.close()
    assert removed == 10
    assert {chunk.metadata["file_id"] for chunk in store.read("kb")} == {"kb-file-0", "kb-file-1"}


def test_a_backup_holds_each_vector_without_the_tables_padding(settings: Settings, store: PgvectorStore,
                                                               tmp_path: Path) -> None:
    from vector_bridge.backup_file import decode_vector, records

    table = store.create_table(1536)  # Open WebUI's default length, holding a 384-dimension model's vectors
    found = chunks("kb", 20, 11)  # they record no model: Open WebUI's, the first served (MiniLM, 384)
    store.upsert("kb", found, table)
    backup = tmp_path / "padded.jsonl.gz"
    code, _, err = run(settings, "backup", str(backup))
    assert code == 0, err
    assert {len(decode_vector(record["embedding"])) for record in records(backup) if "embedding" in record} == {DIM}

    store._db.execute("DROP TABLE document_chunk")
    store._db.commit()
    code, _, err = run(settings, "restore", str(backup))
    assert code == 0, err
    assert store.table().dimension == DIM
    assert_holds(store, "kb", found)

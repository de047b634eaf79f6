"""Real Open WebUI on VECTOR_DB=pgvector against the built-in PostgreSQL (pgvector), with our embeddings:
a Knowledge upload (PDF, DOCX, Markdown, Korean) lands in Open WebUI's `document_chunk` table with our
vectors, retrieval through Open WebUI finds the right file, and a restart of everything keeps it all."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import psycopg
import pytest

from config import Settings, load_settings
from tests.conftest import ARTIFACTS, MODEL
from tests.servers import EVAL, free_port
from vector_bridge.cli import main
from vector_bridge.openwebui import OpenWebUIClient
from vector_bridge.openwebui_env import openwebui_environment
from vector_bridge.postgres import pgvector_url, postgres_service
from vector_bridge.stack import Service, embed_service, openwebui_service

pytestmark = [pytest.mark.openwebui, pytest.mark.slow]

DOCUMENTS = EVAL / "documents"
FILES = {
    "markitdown_test.pdf": DOCUMENTS / "pdf" / "markitdown_test.pdf",
    "markitdown_equations.docx": DOCUMENTS / "docx" / "markitdown_equations.docx",
    "markitdown_README.md": DOCUMENTS / "markdown" / "markitdown_README.md",
    "ko_react_thinking-in-react.md": DOCUMENTS / "markdown" / "ko_react_thinking-in-react.md",
}
QUESTIONS = {
    "MarkItDown converts files such as PDF, PowerPoint and Word to Markdown for LLMs": "markitdown_README.md",
    "Can multiple LLM agents that cooperate improve factuality and reasoning?": "markitdown_test.pdf",
}


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    # Run as root, PostgreSQL runs as an unprivileged user, who must pass through every parent folder:
    # pytest's own temporary folders are owner-only.
    folder = Path(tempfile.mkdtemp(prefix="pgvector-e2e-"))
    os.chmod(folder, 0o711)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def settings(root: Path) -> Settings:
    return load_settings(store="pgvector", port=free_port(), postgres_port=free_port(), postgres_path=root / "postgres",
                         state_dir=root / "state", log_dir=root / "logs", openwebui_data=root / "open-webui",
                         openwebui_url=f"http://127.0.0.1:{free_port()}")


@pytest.fixture(scope="module")
def services(settings: Settings, root: Path) -> Iterator[list[Service]]:
    started = [postgres_service(settings), embed_service(settings, None), openwebui_service(settings)]
    try:
        for service in started:
            service.spawn()
            service.wait_ready()
        yield started
    finally:
        for service in reversed(started):
            service.stop()
        logs = ARTIFACTS / "logs" / "pgvector-e2e"
        logs.mkdir(parents=True, exist_ok=True)
        for log in (root / "logs").glob("*.log"):
            shutil.copy(log, logs / log.name)


@pytest.fixture(scope="module")
def uploaded(settings: Settings, services: list[Service]) -> dict:
    webui = OpenWebUIClient(settings.openwebui_url)
    webui.sign_up("Admin", "admin@example.com", "a-long-test-password")
    knowledge = webui.create_knowledge("Team documents", "pgvector end to end")
    file_ids = {name: webui.upload_file(path)["id"] for name, path in FILES.items()}
    for file_id in file_ids.values():
        webui.wait_for_processing(file_id)
        webui.add_file_to_knowledge(knowledge["id"], file_id)
    return {"webui": webui, "knowledge": knowledge["id"], "files": file_ids}


def chunks(settings: Settings, collection: str) -> list[tuple[str, str, np.ndarray, dict]]:
    with psycopg.connect(pgvector_url(settings)) as connection:
        rows = connection.execute("SELECT id, text, vector::text, vmetadata FROM document_chunk "
                                  "WHERE collection_name = %s ORDER BY id", (collection,)).fetchall()
    return [(id_, text, np.array(vector.strip("[]").split(","), dtype=np.float32), meta)
            for id_, text, vector, meta in rows]


def ask(uploaded: dict, question: str) -> list[str]:
    result = uploaded["webui"].query_collection(uploaded["knowledge"], question, k=3)
    return [metadata["name"] for metadata in result["metadatas"][0]]


def test_the_environment_sizes_the_table_for_the_served_model(settings: Settings, services: list[Service]) -> None:
    env = openwebui_environment(settings)
    assert env["VECTOR_DB"] == "pgvector" and env["PGVECTOR_INITIALIZE_MAX_VECTOR_LENGTH"] == "384"
    assert env["PGVECTOR_DB_URL"].startswith("postgresql://") and "CHROMA_HTTP_HOST" not in env
    assert (settings.state_dir / "postgres.password").stat().st_mode & 0o777 == 0o600
    with psycopg.connect(env["PGVECTOR_DB_URL"]) as connection:  # Open WebUI's role: its database, no more
        assert connection.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
                                  "WHERE rolname = current_user").fetchone() == (False, False, False)


def test_uploads_land_in_document_chunk_with_our_vectors(settings: Settings, uploaded: dict) -> None:
    stored = chunks(settings, uploaded["knowledge"])
    assert {meta["name"] for _, _, _, meta in stored} == set(FILES)
    assert all(MODEL in meta["embedding_config"] for _, _, _, meta in stored)
    for file_id in uploaded["files"].values():
        assert chunks(settings, f"file-{file_id}")
    theirs = np.stack([vector for _, _, vector, _ in stored])
    assert theirs.shape[1] == 384
    texts = [text.replace("\n", " ") for _, text, _, _ in stored]  # Open WebUI embeds with newlines as spaces
    answer = httpx.post(f"{settings.embeddings_url}/embeddings", json={"input": texts, "model": MODEL}, timeout=300)
    ours = np.array([item["embedding"] for item in answer.json()["data"]], dtype=np.float32)
    cosines = np.sum(ours * theirs, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    assert cosines.min() >= 0.999, cosines.min()
    with psycopg.connect(pgvector_url(settings)) as connection:
        indexes = " ".join(row[0] for row in connection.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'document_chunk'").fetchall())
    assert "hnsw" in indexes


@pytest.mark.parametrize("question", list(QUESTIONS))
def test_retrieval_through_open_webui_finds_the_right_file(uploaded: dict, question: str) -> None:
    assert ask(uploaded, question)[0] == QUESTIONS[question]


def test_search_backup_and_doctor_read_the_pgvector_store(settings: Settings, uploaded: dict, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    token = uploaded["webui"].http.headers["Authorization"].removeprefix("Bearer ")
    for name, value in {"EMBED_STORE": "pgvector", "EMBED_STATE_DIR": str(settings.state_dir),
                        "EMBED_POSTGRES_PORT": str(settings.postgres_port), "EMBED_PORT": str(settings.port),
                        "OPENWEBUI_URL": settings.openwebui_url, "OPENWEBUI_API_KEY": token}.items():
        monkeypatch.setenv(name, value)
    for question, name in QUESTIONS.items():
        assert main(["search", question, "--knowledge", "Team documents", "-k", "3", "--json"]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert answer["model"] == MODEL and answer["hits"][0]["metadata"]["name"] == name
    backup = tmp_path / "store.jsonl.gz"
    assert main(["backup", str(backup), "--json"]) == 0
    saved = json.loads(capsys.readouterr().out)
    with psycopg.connect(pgvector_url(settings)) as connection:
        stored = connection.execute("SELECT count(DISTINCT collection_name), count(*) FROM document_chunk").fetchone()
    assert (saved["collections"], saved["chunks"]) == stored

    # A lost file and an edited chunk, then the backup put back: Open WebUI finds everything again.
    knowledge = uploaded["knowledge"]
    with psycopg.connect(pgvector_url(settings)) as connection:
        connection.execute("DELETE FROM document_chunk WHERE collection_name = %s AND vmetadata->>'name' = %s",
                           (knowledge, "markitdown_README.md"))
        connection.execute("UPDATE document_chunk SET text = 'damaged' WHERE collection_name = %s", (knowledge,))
    assert ask(uploaded, next(iter(QUESTIONS)))[0] != "markitdown_README.md"
    assert main(["restore", str(backup), "--json"]) == 1  # the collections hold data: nothing is replaced
    assert "--replace" in capsys.readouterr().err
    assert main(["restore", str(backup), "--replace", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["chunks"] == saved["chunks"]
    for question, name in QUESTIONS.items():
        assert ask(uploaded, question)[0] == name

    # A chunk of a file the Knowledge base does not list (an upload that died half way): repair removes it.
    with psycopg.connect(pgvector_url(settings)) as connection:
        connection.execute("INSERT INTO document_chunk (id, vector, collection_name, text, vmetadata) "
                           "SELECT 'stray-chunk', vector, collection_name, 'stray', vmetadata || '{\"file_id\": \"gone\"}' "
                           "FROM document_chunk WHERE collection_name = %s LIMIT 1", (knowledge,))
    assert main(["repair", "--knowledge", "Team documents", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed_chunks"] == 1
    assert "stray-chunk" not in [row[0] for row in chunks(settings, knowledge)]


def test_a_restart_of_everything_keeps_every_chunk(settings: Settings, services: list[Service], uploaded: dict) -> None:
    before = chunks(settings, uploaded["knowledge"])
    for service in reversed(services):
        service.stop()
    for service in services:
        service.spawn()
        service.wait_ready()
    after = chunks(settings, uploaded["knowledge"])
    assert [(i, t, m) for i, t, _, m in after] == [(i, t, m) for i, t, _, m in before]
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(after, before))
    for question, name in QUESTIONS.items():
        assert ask(uploaded, question)[0] == name

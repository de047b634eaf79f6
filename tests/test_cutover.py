"""`vector-bridge migrate` moves the whole store and real Open WebUI to another model in one cutover, while
Open WebUI answers questions in a loop and takes uploads; `--rollback` puts everything back exactly.

MiniLM (384 dimensions) -> its hybrid (4,480): a query that met a collection of the other model would fail
or find nothing, so every answer outside the measured window proves the cutover kept the store consistent.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest

from tests.conftest import ARTIFACTS, HYBRID, MODEL
from tests.servers import EVAL
from tests.stack import Stack, build_stack
from tests.test_bridge import write_abstracts
from vector_bridge.cli import main
from vector_bridge.embeddings import EmbeddingsClient
from vector_bridge.ingest import ingest
from vector_bridge.migrate import backup_name, migration_part
from vector_bridge.openwebui import OpenWebUIClient
from vector_bridge.shadow import recorded_model
from vector_bridge.store import connect

pytestmark = [pytest.mark.openwebui, pytest.mark.slow]

DOCS = 60  # SciFact abstracts in the Knowledge base at the start
LATE = 6  # uploaded while the migration builds
QUESTIONS = 8
MEMORY = "My favourite research topic is the thermal stability of perovskite solar cells."


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    built = build_stack(tmp_path_factory.mktemp("cutover"), with_openwebui=True)
    # Read from the environment only: queries and documents told apart, as the hybrid model needs.
    built.openwebui.env |= {"RAG_EMBEDDING_PREFIX_FIELD_NAME": "input_type",
                            "RAG_EMBEDDING_QUERY_PREFIX": "query", "RAG_EMBEDDING_CONTENT_PREFIX": "document"}
    with built.running(ARTIFACTS / "logs" / "cutover"):
        yield built


def scifact(limit: int) -> list[dict]:
    docs = []
    with (EVAL / "scifact" / "corpus.jsonl").open() as corpus:
        for line in corpus:
            doc = json.loads(line)
            if len(doc["text"]) > 400:
                docs.append(doc)
            if len(docs) == limit:
                return docs
    return docs


@pytest.fixture(scope="module")
def store(stack: Stack, tmp_path_factory: pytest.TempPathFactory, monkeypatch_module) -> dict:
    """A Knowledge base of abstracts and a memory, as a user makes them in Open WebUI."""
    webui = OpenWebUIClient(stack.settings.openwebui_url)
    token = webui.sign_up("Admin", "admin@example.com", "a-long-test-password")["token"]
    docs = scifact(DOCS + LATE)
    folder, late = tmp_path_factory.mktemp("abstracts"), tmp_path_factory.mktemp("late")
    write_abstracts(folder, docs[:DOCS])
    write_abstracts(late, docs[DOCS:])
    report = ingest(webui, "Cutover", [folder], create=True, concurrency=4, progress=False)
    assert report.ok
    webui._call("POST", "/api/v1/memories/add", json={"content": MEMORY})
    for name, value in {"EMBED_PORT": str(stack.settings.port), "EMBED_CHROMA_PORT": str(stack.settings.chroma_port),
                        "EMBED_CHROMA_TOKEN": stack.settings.chroma_token.get_secret_value(),
                        "OPENWEBUI_URL": stack.settings.openwebui_url, "OPENWEBUI_API_KEY": token}.items():
        monkeypatch_module.setenv(name, value)
    # Questions: each abstract's title, asked of Open WebUI, must find that abstract first.
    questions = {doc["title"]: f"{doc['_id']}.txt" for doc in docs[:QUESTIONS]}
    return {"webui": webui, "knowledge": report.knowledge_id, "questions": questions, "late": late,
            "late_names": {f"{doc['_id']}.txt" for doc in docs[DOCS:]}}


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def top_file(webui: OpenWebUIClient, knowledge: str, question: str) -> str | None:
    found = webui.query_collection(knowledge, question, k=1)
    metadatas = found.get("metadatas") or [[]]
    return metadatas[0][0].get("name") if metadatas[0] else None


class AskingLoop(threading.Thread):
    """Asks Open WebUI every question over and over, recording when each answer came and whether it was right."""

    def __init__(self, url: str, token: str, knowledge: str, questions: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.webui = OpenWebUIClient(url, token, timeout=60)
        self.knowledge, self.questions = knowledge, questions
        self.answers: list[tuple[float, float, bool, str]] = []  # started, ended, right, what came back
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            for question, expected in self.questions.items():
                started = time.time()
                try:
                    got = top_file(self.webui, self.knowledge, question)
                except Exception as error:  # noqa: BLE001 - an error is an answer too: a wrong one
                    got = f"error: {error}"[:200]
                self.answers.append((started, time.time(), got == expected, str(got)))


def upload_late_files(webui: OpenWebUIClient, knowledge: str, folder: Path, failed: list[Path]) -> None:
    for path in sorted(folder.iterdir()):
        try:
            file_id = webui.upload_file(path)["id"]
            webui.wait_for_processing(file_id)
            webui.add_file_to_knowledge(knowledge, file_id)
        except Exception:  # noqa: BLE001 - a user would try again; the test does, after the migration
            failed.append(path)
        time.sleep(0.3)


def every_chunk(stack: Stack) -> dict[str, dict]:
    client = connect(stack.settings)
    found = {}
    for collection in client.list_collections():
        got = collection.get(include=["documents", "metadatas", "embeddings"])
        found[collection.name] = {i: (d, m, np.asarray(v)) for i, d, m, v in
                                  zip(got["ids"], got["documents"], got["metadatas"], got["embeddings"])}
    return found


def test_one_cutover_moves_store_and_open_webui_while_it_keeps_answering(stack: Stack, store: dict,
                                                                         capsys: pytest.CaptureFixture) -> None:
    webui, knowledge = store["webui"], store["knowledge"]
    assert all(top_file(webui, knowledge, q) == name for q, name in store["questions"].items())
    token = webui.http.headers["Authorization"].split()[1]
    asking = AskingLoop(stack.settings.openwebui_url, token, knowledge, store["questions"])
    failed: list[Path] = []
    uploader = threading.Thread(target=upload_late_files, args=(OpenWebUIClient(webui.url, token), knowledge,
                                                                store["late"], failed), daemon=True)
    asking.start()
    time.sleep(2)
    uploader.start()
    code = main(["migrate", "--to", HYBRID, "--batch", "8", "--json"])
    result = json.loads(capsys.readouterr().out)
    uploader.join(300)
    time.sleep(2)
    asking.stopping.set()
    asking.join(120)
    assert code == 0 and result["openwebui"] == "switched"

    cutover = result["cutover"]
    window = (cutover["started_at"], cutover["started_at"] + cutover["window_seconds"])
    outside = [a for a in asking.answers if a[1] < window[0] or a[0] > window[1]]
    wrong = [a for a in outside if not a[2]]
    before = [a for a in outside if a[1] < window[0]]
    after = [a for a in outside if a[0] > window[1]]
    print(f"\ncutover of {cutover['collections']} collections: mismatch window {cutover['window_seconds'] * 1000:.0f} ms "
          f"(renames {cutover['renames_seconds'] * 1000:.0f} ms, Open WebUI switch {cutover['switch_seconds'] * 1000:.0f} ms); "
          f"{len(asking.answers)} questions asked, {len(before)} before and {len(after)} after it, "
          f"{len(asking.answers) - len(outside)} during it; {cutover['settled_after']} chunks settled after")
    assert before and after and not wrong, wrong[:5]

    # Uploads that failed because they raced the cutover, the user sends again.
    if failed:
        upload_late_files(webui, knowledge, store["late"], [])
    # Every chunk of every collection is on the new model now: memories, the Knowledge-base index, files.
    chunks = every_chunk(stack)
    live = {name: items for name, items in chunks.items() if not migration_part(name) and items}
    assert any(name.startswith("user-memory-") for name in live) and "knowledge-bases" in live
    for name, items in live.items():
        assert {recorded_model(meta) for _, meta, _ in items.values()} == {HYBRID}, name
        assert {vector.shape for _, _, vector in items.values()} == {(4480,)}, name
    # The files uploaded during the build are in the Knowledge base once each, with the new model's vectors.
    names = [meta.get("name") for _, meta, _ in live[knowledge].values()]
    assert store["late_names"] <= set(names)
    sample = [(doc, vector) for doc, meta, vector in live[knowledge].values() if meta.get("name") in store["late_names"]]
    fresh = EmbeddingsClient(stack.settings).embed(HYBRID, [doc.replace("\n", " ") for doc, _ in sample], "document")
    for (_, stored), vector in zip(sample, fresh):
        assert float(stored @ vector / np.linalg.norm(stored) / np.linalg.norm(vector)) >= 0.999
    assert webui.embedding_config()["RAG_EMBEDDING_MODEL"] == HYBRID
    assert all(top_file(webui, knowledge, q) == name for q, name in store["questions"].items())


def test_rollback_returns_store_and_open_webui_to_the_old_model_exactly(stack: Stack, store: dict,
                                                                       capsys: pytest.CaptureFixture) -> None:
    kept = {migration_part(name)[1]: items for name, items in every_chunk(stack).items()
            if migration_part(name) and name == backup_name(migration_part(name)[1], HYBRID)}
    assert store["knowledge"] in kept and any(name.startswith("user-memory-") for name in kept)
    assert main(["migrate", "--rollback", HYBRID, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["openwebui"] == f"switched back to {MODEL}"
    now = every_chunk(stack)
    for name, items in kept.items():
        restored = now[name]
        assert restored.keys() == items.keys(), name
        assert all(restored[i][0] == items[i][0] and restored[i][1] == items[i][1] for i in items), name
        assert all(np.allclose(restored[i][2], items[i][2], atol=1e-7) for i in items), name
    webui = store["webui"]
    assert webui.embedding_config()["RAG_EMBEDDING_MODEL"] == MODEL
    assert all(top_file(webui, store["knowledge"], q) == name for q, name in store["questions"].items())
    memories = httpx.post(f"{webui.url}/api/v1/memories/query", json={"content": "solar cells", "k": 1},
                          headers=webui.http.headers, timeout=60)
    assert memories.status_code == 200 and MEMORY in memories.text

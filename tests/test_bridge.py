"""vector-bridge tools on Open WebUI's shared store, against real Open WebUI, Chroma behind nginx, our server.

SciFact abstracts go into a Knowledge base through `vector-bridge ingest` (Open WebUI's own API), then
`vector-bridge search` and `POST /v1/search` must find each test question's abstract.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest

from config import load_settings
from tests.conftest import ARTIFACTS
from tests.servers import EVAL, free_port
from tests.stack import Stack, build_stack
from vector_bridge.cli import main
from vector_bridge.openwebui import OpenWebUIClient
from vector_bridge.openwebui_env import pgvector_environment
from vector_bridge.postgres import postgres_service
from vector_bridge.stack import openwebui_pgvector_client, openwebui_venv
from vector_bridge.store import connect

pytestmark = [pytest.mark.openwebui, pytest.mark.slow]

SCIFACT = EVAL / "scifact"
QUESTIONS = 25  # test questions whose abstracts are ingested, among filler abstracts
FILLER = 200  # "a few hundred" abstracts in all
KNOWLEDGE = "SciFact abstracts"


def scifact_sample() -> tuple[dict[str, str], dict[str, dict], dict[str, set[str]]]:
    """Test questions with their relevant abstracts, plus filler: (questions, abstracts by id, qrels)."""
    qrels: dict[str, set[str]] = {}
    for line in (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        query_id, doc_id, _ = line.split("\t")
        qrels.setdefault(query_id, set()).add(doc_id)
    queries = {q["_id"]: q["text"] for q in map(json.loads, (SCIFACT / "queries.jsonl").read_text().splitlines())}
    chosen = dict(list((qid, queries[qid]) for qid in qrels if qid in queries)[:QUESTIONS])
    wanted = set().union(*(qrels[qid] for qid in chosen))
    docs: dict[str, dict] = {}
    with (SCIFACT / "corpus.jsonl").open() as corpus:
        for line in corpus:
            doc = json.loads(line)
            if doc["_id"] in wanted or len(docs) < len(wanted) + FILLER:
                docs[doc["_id"]] = doc
            if wanted <= docs.keys() and len(docs) >= len(wanted) + FILLER:
                break
    return chosen, docs, {qid: qrels[qid] for qid in chosen}


def write_abstracts(folder: Path, docs: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for doc in docs:
        (folder / f"{doc['_id']}.txt").write_text(f"{doc['title']}\n\n{doc['text']}", encoding="utf-8")


EMBED_KEY = secrets.token_hex(24)
ADMIN_KEY = secrets.token_hex(24)
ADMIN_PASSWORD = "a-long-test-password"
# Every secret this module configures or receives; none may show in a log line or CLI output.
SECRETS: set[str] = {EMBED_KEY, ADMIN_KEY, ADMIN_PASSWORD}
CLI_OUTPUT: list[str] = []


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    built = build_stack(tmp_path_factory.mktemp("bridge"), with_openwebui=True, api_keys=[EMBED_KEY],
                        admin_keys=[ADMIN_KEY])
    # Users who may create Knowledge bases and API keys of their own, as a team's admin would allow.
    built.openwebui.env |= {"ENABLE_API_KEYS": "true", "USER_PERMISSIONS_FEATURES_API_KEYS": "true",
                            "USER_PERMISSIONS_WORKSPACE_KNOWLEDGE_ACCESS": "true"}
    SECRETS.update({built.settings.chroma_token.get_secret_value(), built.openwebui.env["WEBUI_SECRET_KEY"]})
    with built.running(ARTIFACTS / "logs" / "bridge"):
        yield built


@pytest.fixture(scope="module")
def environment(stack: Stack) -> Iterator[dict[str, str]]:
    """The environment a user gives the CLI: the store (through the proxy), our server, Open WebUI + token."""
    admin = OpenWebUIClient(stack.settings.openwebui_url)
    token = admin.sign_up("Admin", "admin@example.com", ADMIN_PASSWORD)["token"]
    SECRETS.add(token)
    env = {"EMBED_PORT": str(stack.settings.port), "EMBED_CHROMA_PORT": str(stack.settings.chroma_port),
           "EMBED_CHROMA_TOKEN": stack.settings.chroma_token.get_secret_value(),
           "OPENWEBUI_URL": stack.settings.openwebui_url, "OPENWEBUI_API_KEY": token, "EMBED_API_KEYS": EMBED_KEY}
    # For admin-key callers, the server's /v1/search looks Knowledge names up with an Open WebUI key of its own.
    stack.embed.env["OPENWEBUI_API_KEY"] = token
    stack.restart(stack.embed)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        yield env


@pytest.fixture(scope="module")
def sample() -> tuple[dict[str, str], dict[str, dict], dict[str, set[str]]]:
    return scifact_sample()


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, dict | None, str]:
    code = main([*args, "--json"])
    captured = capsys.readouterr()
    CLI_OUTPUT.extend((captured.out, captured.err))
    return code, json.loads(captured.out) if captured.out.strip() else None, captured.err


@pytest.fixture(scope="module")
def ingested(environment: dict[str, str], sample, tmp_path_factory: pytest.TempPathFactory) -> dict:
    _, docs, _ = sample
    folder = tmp_path_factory.mktemp("abstracts")
    write_abstracts(folder, list(docs.values()))
    (folder / "notes.xyz").write_text("not a document")
    code = main(["ingest", str(folder), "--knowledge", KNOWLEDGE, "--create", "--json"])
    assert code == 0
    return {"folder": folder}


def test_ingest_puts_every_file_into_the_knowledge_base_once(environment, ingested, sample,
                                                             capsys: pytest.CaptureFixture) -> None:
    _, docs, _ = sample
    webui = OpenWebUIClient(environment["OPENWEBUI_URL"], environment["OPENWEBUI_API_KEY"])
    [base] = [b for b in webui.list_knowledge() if b["name"] == KNOWLEDGE]
    names = Counter(f["filename"] for f in webui.knowledge_files(base["id"]))
    assert names == Counter(f"{doc_id}.txt" for doc_id in docs)

    # A second run uploads nothing: Open WebUI's hashes say every file is there.
    code, report, _ = run_cli(capsys, "ingest", str(ingested["folder"]), "--knowledge", KNOWLEDGE)
    assert code == 0
    assert report["counts"] == {"uploaded": 0, "replaced": 0, "unchanged": len(docs), "failed": 0, "skipped": 1}
    assert Counter(f["filename"] for f in webui.knowledge_files(base["id"])) == names

    # A changed file replaces its old version; nothing else moves.
    changed = ingested["folder"] / f"{next(iter(docs))}.txt"
    original = changed.read_text()
    changed.write_text(original + "\n\nAn added sentence.")
    code, report, _ = run_cli(capsys, "ingest", str(ingested["folder"]), "--knowledge", KNOWLEDGE)
    changed.write_text(original)
    assert code == 0 and report["counts"]["replaced"] == 1 and report["counts"]["uploaded"] == 0
    assert Counter(f["filename"] for f in webui.knowledge_files(base["id"])) == names


def test_search_finds_each_question_s_abstract(environment, ingested, sample, capsys: pytest.CaptureFixture) -> None:
    questions, _, qrels = sample
    found = 0
    for query_id, question in questions.items():
        code, answer, error = run_cli(capsys, "search", question, "--knowledge", KNOWLEDGE, "-k", "5")
        assert code == 0, error
        assert answer["model"] == "all-MiniLM-L6-v2" and len(answer["hits"]) == 5
        assert all(hit["text"] and -1 <= hit["score"] <= 1 and hit["metadata"]["name"] for hit in answer["hits"])
        names = {hit["metadata"]["name"].removesuffix(".txt") for hit in answer["hits"]}
        found += bool(names & qrels[query_id])
    # MiniLM's recall@5 on SciFact's test set is about 0.8; the filler here is small.
    assert found / len(questions) >= 0.8, found


def test_search_route_answers_like_the_cli(environment, ingested, sample, capsys: pytest.CaptureFixture) -> None:
    questions, _, _ = sample
    question = next(iter(questions.values()))
    _, cli, _ = run_cli(capsys, "search", question, "--knowledge", KNOWLEDGE, "-k", "3")
    search = search_as(environment, environment["OPENWEBUI_API_KEY"])  # the Open WebUI admin's own token
    answer = search({"knowledge": KNOWLEDGE, "query": question, "k": 3})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["collection"] == cli["collection"] and body["model"] == cli["model"]
    assert [hit["id"] for hit in body["data"]] == [hit["id"] for hit in cli["hits"]]
    assert np.allclose([h["score"] for h in body["data"]], [h["score"] for h in cli["hits"]], atol=1e-4)

    unknown = search({"knowledge": "no such base", "query": "x"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "collection_not_found"
    both = search({"knowledge": KNOWLEDGE, "collection": "c", "query": "x"})
    assert both.status_code == 400 and "exactly one" in both.json()["error"]["message"]


def search_as(environment: dict[str, str], credential: str | None):
    """POST /v1/search with ``credential`` as the Bearer token (none: no Authorization header)."""
    headers = {"Authorization": f"Bearer {credential}"} if credential is not None else {}
    url = f"http://127.0.0.1:{environment['EMBED_PORT']}/v1/search"
    return lambda body: httpx.post(url, json=body, headers=headers, timeout=60)


def test_search_refuses_a_collection_embedded_with_a_model_not_served(environment, stack: Stack,
                                                                      capsys: pytest.CaptureFixture) -> None:
    collection = connect(stack.settings).create_collection("planted-mpnet", metadata={"hnsw:space": "cosine"})
    collection.add(ids=["a"], embeddings=np.ones((1, 768), dtype=np.float32), documents=["text"],
                   metadatas=[{"embedding_config": "{'engine': 'openai', 'model': 'all-mpnet-base-v2'}"}])
    code, _, error = run_cli(capsys, "search", "anything", "--collection", "planted-mpnet")
    assert code == 1 and "embedded with 'all-mpnet-base-v2'" in error
    answer = search_as(environment, ADMIN_KEY)({"collection": "planted-mpnet", "query": "x"})
    assert answer.status_code == 400 and "all-mpnet-base-v2" in answer.json()["error"]["message"]
    connect(stack.settings).delete_collection("planted-mpnet")


PRIVATE_FACT = "The orange submarine of Professor Quillfeather docks at pier 47 every second Tuesday."


def add_user(admin: OpenWebUIClient, name: str) -> dict:
    """A plain (non-admin) Open WebUI user, created by the admin, signed in, with an API key of their own."""
    email, password = f"{name.lower()}@example.com", secrets.token_urlsafe(16)
    admin._call("POST", "/api/v1/auths/add", json={"name": name, "email": email, "password": password, "role": "user"})
    user = OpenWebUIClient(admin.url)
    token = user.sign_in(email, password)["token"]
    api_key = user._call("POST", "/api/v1/auths/api_key")["api_key"]
    SECRETS.update({password, token, api_key})
    return {"client": user, "token": token, "api_key": api_key}


def test_each_user_searches_only_the_knowledge_they_may_read(environment, ingested, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    admin = OpenWebUIClient(environment["OPENWEBUI_URL"], environment["OPENWEBUI_API_KEY"])
    alice, bob = add_user(admin, "Alice"), add_user(admin, "Bob")
    private = alice["client"].create_knowledge("Alice private notes", "only Alice may read this")
    note = tmp_path / "submarine.md"
    note.write_text(f"# Harbour log\n\n{PRIVATE_FACT}\n")
    file_id = alice["client"].upload_file(note)["id"]
    alice["client"].wait_for_processing(file_id)
    alice["client"].add_file_to_knowledge(private["id"], file_id)
    question = {"knowledge": "Alice private notes", "query": "Where does the orange submarine dock?", "k": 3}

    # Alice finds her own Knowledge with her API key and with her session token.
    for credential in (alice["api_key"], alice["token"]):
        mine = search_as(environment, credential)(question)
        assert mine.status_code == 200, mine.text
        assert mine.json()["collection"] == private["id"] and PRIVATE_FACT in mine.json()["data"][0]["text"]

    # For Bob it does not exist: by name and by id, the same 404 as a name nobody uses.
    as_bob = search_as(environment, bob["api_key"])
    answers = [as_bob(question), as_bob(question | {"knowledge": private["id"]}),
               as_bob(question | {"knowledge": "Nobody else notes"})]
    assert [a.status_code for a in answers] == [404, 404, 404]
    messages = {a.json()["error"]["message"].replace(name, "<name>")
                for a, name in zip(answers, ["Alice private notes", private["id"], "Nobody else notes"])}
    assert len(messages) == 1, messages
    # Raw collections are for admin keys only, whatever the name.
    for collection in (private["id"], "made-up-collection"):
        refused = as_bob({"collection": collection, "query": "submarine"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
        answers.append(refused)
    assert all(PRIVATE_FACT not in a.text and "Quillfeather" not in a.text for a in answers)

    # No credential, a made-up one, or the embeddings key Open WebUI itself uses: 401.
    for credential in (None, "sk-" + secrets.token_hex(16), EMBED_KEY):
        denied = search_as(environment, credential)(question)
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key", denied.text
    # The admin key reads any raw collection.
    raw = search_as(environment, ADMIN_KEY)({"collection": private["id"], "query": "submarine", "k": 1})
    assert raw.status_code == 200 and PRIVATE_FACT in raw.json()["data"][0]["text"]

    # The CLI searches as whoever's Open WebUI key it is given.
    monkeypatch.setenv("OPENWEBUI_API_KEY", alice["api_key"])
    code, found, error = run_cli(capsys, "search", "orange submarine", "--knowledge", "Alice private notes")
    assert code == 0 and PRIVATE_FACT in found["hits"][0]["text"], error
    monkeypatch.setenv("OPENWEBUI_API_KEY", bob["api_key"])
    code, found, error = run_cli(capsys, "search", "orange submarine", "--knowledge", "Alice private notes")
    assert code == 1 and found is None and "no Knowledge base named" in error and "Quillfeather" not in error


def test_ingest_killed_midway_then_resumed_loses_and_duplicates_nothing(
        environment, sample, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, docs, _ = sample
    folder = tmp_path / "more"
    write_abstracts(folder, [{"_id": f"extra-{i}", "title": f"Extra {i}", "text": doc["text"][::-1]}
                             for i, doc in enumerate(list(docs.values())[:40])])
    webui = OpenWebUIClient(environment["OPENWEBUI_URL"], environment["OPENWEBUI_API_KEY"])
    knowledge_id = webui.create_knowledge("Killed midway")["id"]

    worker = subprocess.Popen([sys.executable, "-m", "vector_bridge.cli", "ingest", str(folder),
                               "--knowledge", knowledge_id, "--concurrency", "2", "--json"],
                              env={**os.environ, **environment}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(webui.knowledge_files(knowledge_id)) < 8 and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert 0 < len(webui.knowledge_files(knowledge_id)) < 40  # killed part-way

    code, report, error = run_cli(capsys, "ingest", str(folder), "--knowledge", knowledge_id)
    assert code == 0, error
    assert report["counts"]["uploaded"] + report["counts"]["unchanged"] == 40
    deadline = time.monotonic() + 120  # files the killed run had uploaded finish inside Open WebUI
    while len(webui.knowledge_files(knowledge_id)) < 40 and time.monotonic() < deadline:
        time.sleep(0.5)
    names = Counter(f["filename"] for f in webui.knowledge_files(knowledge_id))
    assert names == Counter(f"extra-{i}.txt" for i in range(40))


def test_doctor_flags_wrong_model_dimension_orphans_and_empty_collections(
        environment, ingested, stack: Stack, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    code, healthy, error = run_cli(capsys, "doctor")
    assert code == 0 and healthy["ok"], healthy["findings"] if healthy else error
    assert healthy["openwebui"]["source"] == "open-webui" and healthy["openwebui"]["dimension"] == 384
    assert healthy["versions"]["chromadb"] == healthy["versions"]["openwebui_chromadb"] == "1.5.9"
    assert any(c["model"] == "all-MiniLM-L6-v2" and c["dimension"] == 384 for c in healthy["collections"])

    store = connect(stack.settings)
    mpnet, stray = f"file-{uuid.uuid4()}", f"file-{uuid.uuid4()}"
    planted = store.create_collection(mpnet, metadata={"hnsw:space": "cosine"})
    planted.add(ids=["a"], embeddings=np.ones((1, 768), dtype=np.float32), documents=["text"],
                metadatas=[{"embedding_config": "{'engine': 'openai', 'model': 'all-mpnet-base-v2'}"}])
    orphan = store.create_collection(stray, metadata={"hnsw:space": "cosine"})
    orphan.add(ids=["b"], embeddings=np.ones((1, 384), dtype=np.float32), documents=["text"],
               metadatas=[{"embedding_config": "{'engine': 'openai', 'model': 'all-MiniLM-L6-v2'}"}])
    store.create_collection("empty-collection", metadata={"hnsw:space": "cosine"})

    code, sick, _ = run_cli(capsys, "doctor")
    assert code == 1 and not sick["ok"]
    by_collection: dict[str, list[tuple[str, str]]] = {}
    for finding in sick["findings"]:
        by_collection.setdefault(finding["collection"], []).append((finding["severity"], finding["message"]))
    assert set(by_collection) == {mpnet, stray, "empty-collection"}  # Open WebUI's own collections pass
    messages = " ".join(message for _, message in by_collection[mpnet])
    assert "dimension 768" in messages and "all-mpnet-base-v2" in messages and "no Open WebUI file" in messages
    assert [severity for severity, _ in by_collection[stray]] == ["warning"]
    assert {message.split(": ", 1)[1][:5] for _, message in by_collection["empty-collection"]} == {"no Op", "empty"}

    # Without an Open WebUI token: the model and size still come from these settings; orphans are not judged.
    monkeypatch.delenv("OPENWEBUI_API_KEY")
    code, blind, _ = run_cli(capsys, "doctor")
    assert code == 1 and blind["openwebui"]["source"] == "settings"
    assert not any("no Open WebUI file" in f["message"] for f in blind["findings"])
    assert any("orphans not checked" in note for note in blind["notes"])
    assert any(f["collection"] == mpnet and f["severity"] == "error" for f in blind["findings"])

    for name in (mpnet, stray, "empty-collection"):
        store.delete_collection(name)
    monkeypatch.setenv("OPENWEBUI_API_KEY", environment["OPENWEBUI_API_KEY"])
    assert run_cli(capsys, "doctor")[0] == 0


def test_open_webui_moved_to_pgvector_answers_as_before(environment, ingested, sample, stack: Stack,
                                                        capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`migrate --to-store` while Open WebUI runs on Chroma; then Open WebUI restarted on pgvector: the same
    questions find the same top documents."""
    questions, _, _ = sample
    webui = OpenWebUIClient(environment["OPENWEBUI_URL"], environment["OPENWEBUI_API_KEY"])
    [base] = [b for b in webui.list_knowledge() if b["name"] == KNOWLEDGE]

    def top_documents() -> list[str]:
        return [webui.query_collection(base["id"], question, k=1)["metadatas"][0][0]["name"]
                for question in list(questions.values())[:8]]

    before = top_documents()
    root = Path(tempfile.mkdtemp(prefix="bridge-pgvector-"))
    os.chmod(root, 0o711)  # run as root, PostgreSQL's unprivileged user passes through here
    pg = load_settings(store="pgvector", postgres_port=free_port(), postgres_path=root / "postgres",
                       state_dir=root / "state", log_dir=stack.root / "logs")
    postgres = postgres_service(pg)
    chroma_env = dict(stack.openwebui.env)
    try:
        postgres.spawn()
        postgres.wait_ready()
        SECRETS.add((pg.state_dir / "postgres.password").read_text())
        monkeypatch.setenv("EMBED_STATE_DIR", str(pg.state_dir))
        monkeypatch.setenv("EMBED_POSTGRES_PORT", str(pg.postgres_port))
        code, report, error = run_cli(capsys, "migrate", "--to-store", "pgvector")
        assert code == 0, error
        assert base["id"] in {c["collection"] for c in report["collections"]}
        openwebui_pgvector_client(stack.settings, openwebui_venv(stack.settings))
        stack.openwebui.env = {k: v for k, v in chroma_env.items() if not k.startswith("CHROMA_")} | \
            pgvector_environment(pg, report["dimension"])
        stack.restart(stack.openwebui)
        assert top_documents() == before
    finally:
        stack.openwebui.env = chroma_env
        stack.restart(stack.openwebui)
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_no_secret_shows_in_any_log_or_cli_output(environment, stack: Stack, capsys: pytest.CaptureFixture) -> None:
    """Runs last in this module: every key, token and password used above, searched for in every log line
    of the stack (our server, Chroma, nginx, Open WebUI) and every CLI output, `--json` included."""
    code, applied, error = run_cli(capsys, "openwebui-apply")
    assert code == 0, error
    assert applied["openai_config"]["key"] == "***" and applied["RAG_EMBEDDING_MODEL"] == "all-MiniLM-L6-v2"
    logs = {log.name: log.read_text(errors="replace") for log in (stack.root / "logs").glob("*.log")}
    assert {"embed-server.log", "chroma.log", "nginx.log", "open-webui.log"} <= logs.keys()
    assert sum(len(text.splitlines()) for text in logs.values()) > 100  # the run logged plenty
    outputs = {f"cli output {index}": text for index, text in enumerate(CLI_OUTPUT)}
    leaks = {(where, secret[:4] + "...") for where, text in (logs | outputs).items() for secret in SECRETS
             if secret in text}
    assert not leaks

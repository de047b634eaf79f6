"""Real Open WebUI, pointed at our stack with the printed environment: a Knowledge upload lands in our store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import chromadb
import httpx
import numpy as np
import pytest

from tests.conftest import ARTIFACTS, MODEL
from tests.servers import EVAL
from tests.stack import Stack, build_stack
from vector_bridge.openwebui import OpenWebUIClient

pytestmark = [pytest.mark.openwebui, pytest.mark.slow]

DOCUMENTS = EVAL / "documents"
FILES = {
    # 261 pages: Open WebUI fires ~850 one-text requests at once, twice; none may be refused.
    "debian-reference.en.pdf": DOCUMENTS / "pdf" / "debian-reference.en.pdf",
    "markitdown_test.docx": DOCUMENTS / "docx" / "markitdown_test.docx",
    "markitdown_README.md": DOCUMENTS / "markdown" / "markitdown_README.md",
    "ko_react_thinking-in-react.md": DOCUMENTS / "markdown" / "ko_react_thinking-in-react.md",
}
QUESTIONS = {
    "How do I set up a network interface with a static IP address on Debian?": "debian-reference.en.pdf",
    "MarkItDown converts files such as PDF, PowerPoint and Word to Markdown for LLMs": "markitdown_README.md",
}
ADMIN = {"name": "Admin", "email": "admin@example.com", "password": "a-long-test-password"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    built = build_stack(tmp_path_factory.mktemp("stack"), with_openwebui=True)
    # Open WebUI reads these only from the environment: queries and documents are told apart
    # for every model, so the hybrid model can be switched on live later in this module.
    built.openwebui.env |= {"RAG_EMBEDDING_PREFIX_FIELD_NAME": "input_type",
                            "RAG_EMBEDDING_QUERY_PREFIX": "query", "RAG_EMBEDDING_CONTENT_PREFIX": "document"}
    with built.running(ARTIFACTS / "logs" / "openwebui-e2e"):
        yield built


@pytest.fixture(scope="module")
def uploaded(stack: Stack) -> dict:
    """Sign up, create a Knowledge base, upload and add the files: what a user does in the UI."""
    webui = OpenWebUIClient(stack.settings.openwebui_url)
    webui.sign_up(**ADMIN)
    knowledge = webui.create_knowledge("Team documents", "Files uploaded in the end-to-end test")
    file_ids = {}
    for name, path in FILES.items():
        file_ids[name] = webui.upload_file(path)["id"]
    for name, file_id in file_ids.items():
        webui.wait_for_processing(file_id)
        webui.add_file_to_knowledge(knowledge["id"], file_id)
    return {"webui": webui, "knowledge": knowledge["id"], "files": file_ids}


def chroma(stack: Stack) -> chromadb.HttpClient:
    address = urlsplit(stack.chroma_url)
    return chromadb.HttpClient(host=address.hostname, port=address.port)


def our_embeddings(stack: Stack, texts: list[str]) -> np.ndarray:
    url = stack.settings.embeddings_url
    vectors = []
    for start in range(0, len(texts), 256):
        response = httpx.post(f"{url}/embeddings", json={"input": texts[start:start + 256], "model": MODEL}, timeout=300)
        response.raise_for_status()
        vectors += [item["embedding"] for item in response.json()["data"]]
    return np.array(vectors, dtype=np.float32)


def test_the_proxy_refuses_requests_without_the_token(stack: Stack) -> None:
    proxy = f"http://{stack.settings.chroma_host}:{stack.settings.chroma_port}"
    assert httpx.get(f"{proxy}/api/v2/heartbeat").status_code == 401
    assert httpx.get(f"{proxy}/api/v2/heartbeat", headers={"Authorization": "Bearer wrong"}).status_code == 401
    token = stack.settings.chroma_token.get_secret_value()
    assert httpx.get(f"{proxy}/api/v2/heartbeat", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_chunks_land_in_our_chroma_with_our_dimension(stack: Stack, uploaded: dict) -> None:
    names = {collection.name for collection in chroma(stack).list_collections()}
    expected = {uploaded["knowledge"], *(f"file-{file_id}" for file_id in uploaded["files"].values())}
    assert expected <= names
    knowledge = chroma(stack).get_collection(uploaded["knowledge"])
    stored = knowledge.get(include=["embeddings", "metadatas"])
    assert {m["name"] for m in stored["metadatas"]} == set(FILES)
    assert np.array(stored["embeddings"]).shape[1] == 384
    assert all(MODEL in m["embedding_config"] for m in stored["metadatas"])
    for name, file_id in uploaded["files"].items():
        assert chroma(stack).get_collection(f"file-{file_id}").count() > 0, name
    # Nothing went to Open WebUI's own local vector store.
    local = stack.settings.openwebui_data / "vector_db"
    assert not local.exists() or not any(local.rglob("*.sqlite3"))


def test_each_stored_vector_is_what_our_server_returns(stack: Stack, uploaded: dict) -> None:
    stored = chroma(stack).get_collection(uploaded["knowledge"]).get(include=["embeddings", "documents"])
    # Open WebUI embeds chunks with newlines replaced by spaces; Chroma keeps the original text.
    texts = [document.replace("\n", " ") for document in stored["documents"]]
    ours = our_embeddings(stack, texts)
    theirs = np.array(stored["embeddings"], dtype=np.float32)
    cosines = np.sum(ours * theirs, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    assert len(cosines) > 800
    assert cosines.min() >= 0.999


def test_our_metrics_show_open_webui_requests(stack: Stack, uploaded: dict) -> None:
    metrics = httpx.get(stack.settings.embeddings_url.removesuffix("/v1") + "/metrics").text
    by_status = {}
    for line in metrics.splitlines():
        if line.startswith("embed_requests_total{") and 'client="aiohttp"' in line and "/v1/embeddings" in line:
            status = line.split('status="')[1].split('"')[0]
            by_status[status] = float(line.split()[-1])
    # Open WebUI's embedding client is aiohttp; every one of its requests succeeded.
    assert by_status.get("200", 0) > 1600
    assert set(by_status) == {"200"}


def ask(uploaded: dict, question: str) -> list[str]:
    result = uploaded["webui"].query_collection(uploaded["knowledge"], question, k=3)
    return [metadata["name"] for metadata in result["metadatas"][0]]


@pytest.mark.parametrize("question", list(QUESTIONS))
def test_retrieval_through_open_webui_finds_the_right_document(uploaded: dict, question: str) -> None:
    assert ask(uploaded, question)[0] == QUESTIONS[question]


def test_everything_survives_a_restart_of_chroma_and_our_server(stack: Stack, uploaded: dict) -> None:
    before = chroma(stack).get_collection(uploaded["knowledge"]).count()
    stack.restart(stack.chroma, stack.embed)
    assert chroma(stack).get_collection(uploaded["knowledge"]).count() == before
    for question, name in QUESTIONS.items():
        assert ask(uploaded, question)[0] == name


def test_a_browser_sees_the_files_in_the_knowledge_base(stack: Stack, uploaded: dict) -> None:
    from playwright import sync_api as playwright

    chromium = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
    assert chromium, "Debian's chromium is missing: `make test` installs it (.ci/system-deps)"
    base = stack.settings.openwebui_url
    screenshot = ARTIFACTS / "knowledge-base.png"
    with playwright.sync_playwright() as driver:
        # Flags that keep Chromium from calling out: this machine has no internet.
        browser = driver.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
            "--disable-background-networking", "--disable-component-update"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{base}/auth")
            page.fill("input[type=email]", ADMIN["email"])
            page.fill("input[type=password]", ADMIN["password"])
            page.keyboard.press("Enter")
            page.wait_for_url(lambda url: "/auth" not in url, timeout=60_000)
            page.goto(f"{base}/workspace/knowledge/{uploaded['knowledge']}")
            for name in FILES:
                page.get_by_text(name, exact=False).first.wait_for(timeout=60_000)
            release_notes = page.get_by_text("Okay, Let's Go!")
            if release_notes.count():
                release_notes.first.click()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000


KORQUAD = DOCUMENTS.parent / "korquad_v1_dev_retrieval"


def korquad_files(tmp: Path, count: int) -> tuple[list[Path], dict[str, str]]:
    """The first ``count`` KorQuAD passages as text files, and each one's first question."""
    passages = [json.loads(line) for line in (KORQUAD / "corpus.jsonl").open()][:count]
    files = []
    for passage in passages:
        path = tmp / f"{passage['_id']}.txt"
        path.write_text(f"{passage['title']}\n\n{passage['text']}", encoding="utf-8")
        files.append(path)
    wanted = {p["_id"] for p in passages}
    questions: dict[str, str] = {}
    texts = {q["_id"]: q["text"] for q in map(json.loads, (KORQUAD / "queries.jsonl").open())}
    for line in list((KORQUAD / "qrels" / "test.tsv").open())[1:]:
        query, passage_id, _ = line.rstrip("\n").split("\t")
        if passage_id in wanted and passage_id not in questions:
            questions[passage_id] = texts[query]
    return files, questions


def knowledge_with(webui: OpenWebUIClient, name: str, files: list[Path]) -> str:
    knowledge = webui.create_knowledge(name)["id"]
    for path in files:
        file_id = webui.upload_file(path)["id"]
        webui.wait_for_processing(file_id)
        webui.add_file_to_knowledge(knowledge, file_id)
    return knowledge


def switch_model(stack: Stack, webui: OpenWebUIClient, model: str) -> None:
    """`vector-bridge openwebui-apply`, as an admin would run it against the live Open WebUI."""
    env = {**os.environ, "OPENWEBUI_URL": stack.settings.openwebui_url,
           "OPENWEBUI_API_KEY": webui.http.headers["Authorization"].removeprefix("Bearer "),
           "EMBED_PORT": str(stack.settings.port)}
    result = subprocess.run([sys.executable, "-m", "vector_bridge.cli", "openwebui-apply", "--model", model, "--json"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["RAG_EMBEDDING_MODEL"] == model


def test_korean_questions_find_their_passage_with_the_hybrid_model_only(
        stack: Stack, uploaded: dict, tmp_path: Path) -> None:
    files, questions = korquad_files(tmp_path, 30)
    webui = uploaded["webui"]
    top_hits = {}
    try:
        for model in ("all-MiniLM-L6-v2-hybrid", MODEL):
            switch_model(stack, webui, model)
            knowledge = knowledge_with(webui, f"KorQuAD via {model}", files)
            dimension = np.array(chroma(stack).get_collection(knowledge).get(limit=1, include=["embeddings"])["embeddings"]).shape[1]
            assert dimension == (384 + 4096 if model.endswith("hybrid") else 384)
            hits = 0
            for passage_id, question in questions.items():
                result = webui.query_collection(knowledge, question, k=3)
                hits += result["metadatas"][0][0]["name"] == f"{passage_id}.txt"
            top_hits[model] = hits / len(questions)
    finally:
        switch_model(stack, webui, MODEL)
    (ARTIFACTS / "korean-top1-through-open-webui.json").write_text(json.dumps(top_hits, indent=2))
    # The hybrid puts the right passage first for nearly every question; plain MiniLM does not.
    assert top_hits["all-MiniLM-L6-v2-hybrid"] >= 0.9, top_hits
    assert top_hits[MODEL] <= 0.5, top_hits

"""One real stack for every chat test module (OpenAI-compatible, Pipelines, direct API): Chroma behind nginx,
our embeddings server, Open WebUI with API keys and forwarded user headers, the chat server on the offline
generator, and two users. Alice owns a private Knowledge base of SciFact abstracts; Bob may not read it.

Registered as session fixtures in ``tests/conftest.py``, so the stack starts once per test run.
"""

from __future__ import annotations

import json
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.servers import free_port
from tests.stack import Stack, build_stack
from vector_bridge.ingest import ingest
from vector_bridge.openwebui import OpenWebUIClient
from vector_bridge.stack import Service

QUESTIONS = 5
FILLER = 30
OPENWEBUI_ENV = {"ENABLE_API_KEYS": "true", "USER_PERMISSIONS_FEATURES_API_KEYS": "true",
                 "USER_PERMISSIONS_WORKSPACE_KNOWLEDGE_ACCESS": "true",
                 "ENABLE_FORWARD_USER_INFO_HEADERS": "true", "BYPASS_MODEL_ACCESS_CONTROL": "true"}


@dataclass
class People:
    admin: OpenWebUIClient
    admin_key: str
    alice: dict  # add_user's answer: client, api_key, token
    bob: dict
    knowledge: str  # Alice's private Knowledge base
    questions: dict[str, set[str]]  # question -> the file names that answer it


def chat_through_open_webui(stack: Stack, credential: str, model: str, question: str) -> tuple[str, list[dict]]:
    """One question through Open WebUI's own /api/chat/completions, streamed: the answer's text and the events
    (sources among them) Open WebUI passed on."""
    body = {"model": model, "messages": [{"role": "user", "content": question}], "stream": True}
    text, events = "", []
    with httpx.stream("POST", f"{stack.settings.openwebui_url}/api/chat/completions", json=body, timeout=300,
                      headers={"Authorization": f"Bearer {credential}"}) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "event" in chunk:
                events.append(chunk["event"])
            text += "".join((c.get("delta") or {}).get("content") or "" for c in chunk.get("choices") or [])
    return text, events


def start_chat_stack(root: Path, logs: Path) -> Iterator[Stack]:
    built = build_stack(root, with_openwebui=True)
    built.openwebui.env |= OPENWEBUI_ENV
    with built.running(logs):
        yield built


def chat_service(stack: Stack, name: str, **env: str) -> tuple[Service, str]:
    """A chat server on a free port over ``stack``; returns it (not started) and its /v1 base URL."""
    port = free_port()
    settings = stack.settings
    environment = {"HF_HUB_OFFLINE": "1", "EMBED_PORT": str(settings.port), "EMBED_CHROMA_PORT": str(settings.chroma_port),
                   "EMBED_CHROMA_TOKEN": settings.chroma_token.get_secret_value(), "OPENWEBUI_URL": settings.openwebui_url,
                   "EMBED_CHAT_MAX_TOKENS": "48", "EMBED_STATE_DIR": str(stack.root / f"{name}-state"), **env}
    service = Service(name, [sys.executable, "-m", "chat_server.cli", "--port", str(port)],
                      f"http://127.0.0.1:{port}/ready", stack.root / "logs" / f"{name}.log", env=environment,
                      ready_timeout=600)  # the first start converts the GGUF weights once
    return service, f"http://127.0.0.1:{port}/v1"


@dataclass
class ChatServer:
    url: str  # the OpenAI-compatible /v1 base URL
    pipelines_url: str  # the Pipelines server in the same process
    pipelines_key: str


def make_people(stack: Stack, folder: Path) -> People:
    from tests.test_bridge import add_user, scifact_sample, write_abstracts

    admin = OpenWebUIClient(stack.settings.openwebui_url)
    admin.sign_up("Admin", "admin@example.com", secrets.token_urlsafe(16))
    admin_key = admin._call("POST", "/api/v1/auths/api_key")["api_key"]
    alice, bob = add_user(admin, "Alice"), add_user(admin, "Bob")
    questions, docs, qrels = scifact_sample()
    chosen = dict(list(questions.items())[:QUESTIONS])
    wanted = set().union(*(qrels[q] for q in chosen))
    sample = [doc for doc in docs.values() if doc["_id"] in wanted] + \
             [doc for doc in docs.values() if doc["_id"] not in wanted][:FILLER]
    write_abstracts(folder, sample)
    report = ingest(alice["client"], "Alice papers", [folder], create=True, concurrency=4, progress=False)
    assert report.ok
    return People(admin, admin_key, alice, bob, report.knowledge_id,
                  {text: {f"{d}.txt" for d in qrels[qid]} for qid, text in chosen.items()})


@pytest.fixture(scope="session")
def chat_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from tests.conftest import ARTIFACTS

    yield from start_chat_stack(tmp_path_factory.mktemp("chat"), ARTIFACTS / "logs" / "chat")


@pytest.fixture(scope="session")
def chat_server(chat_stack: Stack, people: People) -> Iterator[ChatServer]:
    """The chat server, with its Pipelines server (which asks Open WebUI with the admin's key who may read what)."""
    key, port = secrets.token_urlsafe(24), free_port()
    service, url = chat_service(chat_stack, "chat-server", EMBED_PIPELINES_KEY=key, EMBED_PIPELINES_PORT=str(port),
                                OPENWEBUI_API_KEY=people.admin_key)
    service.spawn()
    try:
        service.wait_ready()
        yield ChatServer(url, f"http://127.0.0.1:{port}", key)
    finally:
        service.stop()


@pytest.fixture(scope="session")
def chat(chat_server: ChatServer) -> str:
    """The chat server's /v1 base URL."""
    return chat_server.url


@pytest.fixture(scope="session")
def people(chat_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> People:
    return make_people(chat_stack, tmp_path_factory.mktemp("papers"))

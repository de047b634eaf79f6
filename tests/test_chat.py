"""The RAG chat server over the shared Knowledge, with real Open WebUI, our stack and the offline generator.

Alice uploads SciFact abstracts to a private Knowledge base in Open WebUI; the official `openai` client and
LangChain chat over it with her key and get answers with sources; Bob's key sees no such model; Open WebUI,
with our server added as a connection that forwards each user's own session, lists it and streams from it.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import openai
import pytest

from tests.chat_stack import QUESTIONS, People, chat_service, chat_through_open_webui
from tests.conftest import ARTIFACTS
from tests.servers import free_port
from tests.stack import Stack

pytestmark = [pytest.mark.openwebui, pytest.mark.slow]


def test_alice_streams_answers_with_sources_through_the_openai_client(chat: str, people: People) -> None:
    client = openai.OpenAI(base_url=chat, api_key=people.alice["api_key"], timeout=300)
    model = f"knowledge-{people.knowledge}"
    assert {model, "knowledge-all"} <= {m.id for m in client.models.list()}
    found = 0
    for question, relevant in people.questions.items():
        stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                                stream=True)
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.strip()
        sources = chunks[-1].model_extra["sources"]
        assert len(sources) == 5 and all(s["knowledge_id"] == people.knowledge for s in sources)
        found += bool({s["name"] for s in sources} & relevant)
    # MiniLM's recall@5 on SciFact is about 0.8: most questions' abstracts reach the prompt.
    assert found >= QUESTIONS - 1, found

    question = next(iter(people.questions))
    whole = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}])
    assert whole.choices[0].message.content and len(whole.model_extra["sources"]) == 5


def test_langchain_streams_with_no_parse_error(chat: str, people: People) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=chat, api_key=people.alice["api_key"], model=f"knowledge-{people.knowledge}",
                     max_tokens=24, timeout=300)
    pieces = list(llm.stream("What does the Knowledge say about vitamin D?"))
    assert "".join(piece.content for piece in pieces).strip()


def test_bob_cannot_chat_over_alices_knowledge(chat: str, people: People) -> None:
    bob = openai.OpenAI(base_url=chat, api_key=people.bob["api_key"], timeout=300)
    model = f"knowledge-{people.knowledge}"
    assert model not in {m.id for m in bob.models.list()}
    with pytest.raises(openai.NotFoundError) as refused:
        bob.chat.completions.create(model=model, messages=[{"role": "user", "content": "What is in it?"}])
    assert refused.value.body["code"] == "model_not_found"
    # Over "all my Knowledge", Bob's answer draws on nothing of Alice's.
    mine = bob.chat.completions.create(model="knowledge-all", messages=[{"role": "user", "content": "vitamin D"}])
    assert mine.model_extra["sources"] == []
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=chat, api_key="sk-made-up", timeout=60).models.list()


def test_a_generator_that_is_down_is_a_clear_503(chat_stack: Stack, people: People) -> None:
    service, url = chat_service(chat_stack, "chat-no-generator", EMBED_CHAT_GENERATOR_URL=f"http://127.0.0.1:{free_port()}/v1",
                                EMBED_CHAT_GENERATOR_MODEL="absent", EMBED_CHAT_GENERATOR_TIMEOUT="5")
    service.spawn()
    try:
        service.wait_ready()
        client = openai.OpenAI(base_url=url, api_key=people.alice["api_key"], timeout=60, max_retries=0)
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as down:
                client.chat.completions.create(model="knowledge-all", stream=stream,
                                               messages=[{"role": "user", "content": "anything"}])
            assert down.value.status_code == 503 and down.value.body["code"] == "generator_unavailable"
    finally:
        service.stop()


def test_open_webui_lists_our_models_and_streams_answers_per_user(chat: str, people: People, chat_stack: Stack) -> None:
    admin = people.admin
    # Our server as an OpenAI connection that forwards each user's own session: it answers as that user.
    assert admin.add_chat_connection(chat) == {"url": chat, "auth_type": "session"}
    alice = people.alice["client"]
    model = f"knowledge-{people.knowledge}"
    listed = {m["id"] for m in alice._call("GET", "/api/models")["data"]}
    assert model in listed
    question = next(iter(people.questions))
    text, events = chat_through_open_webui(chat_stack, people.alice["token"], model, question)
    assert text.strip()
    sources = [e["data"] for e in events if e.get("type") == "source"]
    assert sources and {s["source"]["name"] for s in sources} & people.questions[question]
    (ARTIFACTS / "chat-through-open-webui.json").write_text(json.dumps({"answer": text, "sources": sources}, indent=1))


def test_a_connection_that_sends_one_fixed_key_for_every_user_is_refused(chat: str, people: People) -> None:
    """Open WebUI forwards who it calls for; a key of someone else (a connection set up with Alice's key,
    used by Bob) would answer Bob from Alice's Knowledge, so the server refuses it."""
    bob_id = people.bob["client"].session_user()["id"]
    for credential in (people.alice["api_key"], people.alice["token"]):
        answer = httpx.get(f"{chat}/models", headers={"Authorization": f"Bearer {credential}",
                                                      "X-OpenWebUI-User-Id": bob_id}, timeout=60)
        assert answer.status_code == 403 and "Session" in answer.json()["error"]["message"]
        assert people.knowledge not in answer.text


def test_a_saved_chat_keeps_the_answer_and_its_sources(chat: str, people: People, chat_stack: Stack) -> None:
    """As Open WebUI's own page chats: into a saved chat, answered in the background, the message stored with
    the sources our server sent."""
    people.admin.add_chat_connection(chat)
    alice = people.alice["client"]
    question, relevant = next(iter(people.questions.items()))
    model = f"knowledge-{people.knowledge}"
    user_id, answer_id = str(uuid.uuid4()), str(uuid.uuid4())
    history = {"messages": {
        user_id: {"id": user_id, "parentId": None, "childrenIds": [answer_id], "role": "user", "content": question,
                  "models": [model]},
        answer_id: {"id": answer_id, "parentId": user_id, "childrenIds": [], "role": "assistant", "content": "",
                    "model": model, "done": False}}, "currentId": answer_id}
    saved = alice._call("POST", "/api/v1/chats/new", json={"chat": {"title": "Papers", "models": [model],
                                                                    "history": history, "messages": []}})
    started = alice._call("POST", "/api/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": question}], "stream": True, "chat_id": saved["id"],
        "id": answer_id, "session_id": "test-session", "parent_id": user_id})
    assert started.get("status") is True, started
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        message = alice._call("GET", f"/api/v1/chats/{saved['id']}")["chat"]["history"]["messages"][answer_id]
        if message.get("done"):
            break
        time.sleep(1)
    assert message.get("done") and message["content"].strip(), message
    assert {source["source"]["name"] for source in message.get("sources") or []} & relevant, message.get("sources")
    (ARTIFACTS / "saved-chat-message.json").write_text(json.dumps(message, indent=1))

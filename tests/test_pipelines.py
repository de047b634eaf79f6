"""The Pipelines server with real Open WebUI: it is listed as a pipelines connection, its valves are read and
set through Open WebUI's admin API, its filter puts Alice's Knowledge into a plain model's prompt (seen by a
recording proxy between Open WebUI and the server, i.e. what the model received), never Bob's prompt, and
its pipe model answers with sources Open WebUI keeps.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.chat_stack import ChatServer, People, chat_through_open_webui
from tests.conftest import ARTIFACTS
from tests.recording_proxy import recording_proxy
from tests.stack import Stack

pytestmark = [pytest.mark.openwebui, pytest.mark.slow]
FILTER, PIPE, PLAIN = "knowledge-filter", "knowledge-pipe", "plain-generator"


def protocol(chat_server: ChatServer, method: str, path: str, key: str | None = "valid", **kwargs) -> httpx.Response:
    headers = {} if key is None else {"Authorization": f"Bearer {chat_server.pipelines_key if key == 'valid' else key}"}
    return httpx.request(method, chat_server.pipelines_url + path, headers=headers, timeout=300, **kwargs)


def test_every_route_needs_the_key_and_speaks_the_protocol(chat_server: ChatServer, people: People) -> None:
    for key in (None, "made-up", chat_server.pipelines_key.upper()):
        for method, path in (("GET", "/models"), ("POST", f"/{FILTER}/filter/inlet"), ("POST", f"/{FILTER}/valves/update"),
                             ("POST", "/v1/chat/completions"), ("GET", f"/{FILTER}/valves")):
            refused = protocol(chat_server, method, path, key=key, **({"json": {}} if method == "POST" else {}))
            assert refused.status_code == 401 and chat_server.pipelines_key not in refused.text, path
    models = protocol(chat_server, "GET", "/v1/models").json()
    assert models["pipelines"] is True
    by_id = {model["id"]: model for model in models["data"]}
    # Until an admin names models, the filter runs on none: private Knowledge never goes to a model unasked.
    assert by_id[FILTER]["pipeline"] == {"type": "filter", "valves": True, "pipelines": [], "priority": 0}
    assert by_id[PIPE]["pipeline"]["type"] == "pipe" and "pipeline" not in by_id[PLAIN]
    assert {p["id"] for p in protocol(chat_server, "GET", "/pipelines").json()["data"]} == {FILTER, PIPE}
    assert "built in" in protocol(chat_server, "POST", "/pipelines/add", json={"url": "x"}).json()["detail"]
    spec = protocol(chat_server, "GET", f"/{FILTER}/valves/spec").json()
    assert {"knowledge", "top_k", "min_score", "pipelines", "priority"} <= set(spec["properties"])
    assert protocol(chat_server, "GET", "/nothing/valves").status_code == 404

    before = protocol(chat_server, "GET", f"/{FILTER}/valves").json()
    for bad in ({"top_k": 0}, {"knowledge": "not-a-list"}, {"unknown": 1}):
        answer = protocol(chat_server, "POST", f"/{FILTER}/valves/update", json=bad)
        assert answer.status_code == 400 and answer.json()["detail"].startswith("Invalid valves")
    assert protocol(chat_server, "POST", f"/{FILTER}/valves/update", content=b"[1,").status_code == 400
    assert protocol(chat_server, "GET", f"/{FILTER}/valves").json() == before

    question = next(iter(people.questions))
    chat = {"model": PLAIN, "messages": [{"role": "user", "content": question}]}
    for user in ({"id": "../users"}, None):
        answer = protocol(chat_server, "POST", f"/{FILTER}/filter/inlet", json={"user": user, "body": chat})
        assert answer.status_code == 400 and answer.json()["detail"]
    task = {**chat, "metadata": {"task": "title_generation"}}
    alice = {"id": people.alice["client"].session_user()["id"], "role": "user"}
    assert protocol(chat_server, "POST", f"/{FILTER}/filter/inlet", json={"user": alice, "body": task}).json() == task
    outlet = {"model": PLAIN, "messages": [{"role": "assistant", "content": "hi"}]}
    assert protocol(chat_server, "POST", f"/{FILTER}/filter/outlet", json={"user": alice, "body": outlet}).json() == outlet


def test_open_webui_runs_our_filter_and_pipe_for_each_user_as_they_may_read(chat_server: ChatServer, people: People,
                                                                            chat_stack: Stack) -> None:
    admin = people.admin
    with recording_proxy(chat_server.pipelines_url) as tap:
        admin.add_pipelines_connection(tap.url, chat_server.pipelines_key)
        listed = admin._call("GET", "/api/v1/pipelines/list")["data"]
        [index] = [entry["idx"] for entry in listed if entry["url"] == tap.url]
        pipelines = admin._call("GET", "/api/v1/pipelines/", params={"urlIdx": index})["data"]
        assert {p["id"] for p in pipelines} == {FILTER, PIPE}

        # Valves, read and set through Open WebUI's admin API
        spec = admin._call("GET", f"/api/v1/pipelines/{FILTER}/valves/spec", params={"urlIdx": index})
        assert spec["properties"]["top_k"]["default"] == 5
        valves = admin._call("GET", f"/api/v1/pipelines/{FILTER}/valves", params={"urlIdx": index})
        updated = admin._call("POST", f"/api/v1/pipelines/{FILTER}/valves/update", params={"urlIdx": index},
                              json={**valves, "knowledge": [people.knowledge], "top_k": 3, "pipelines": [PLAIN],
                                    "min_score": 0.1})
        assert updated["top_k"] == 3 and updated["knowledge"] == [people.knowledge]
        assert admin._call("GET", f"/api/v1/pipelines/{FILTER}/valves", params={"urlIdx": index})["top_k"] == 3

        # Alice chats with a plain model: the prompt it receives holds her Knowledge, numbered, 3 chunks.
        models = {m["id"]: m for m in people.alice["client"]._call("GET", "/api/models")["data"]}
        assert PLAIN in models and PIPE in models and FILTER not in models  # filters are not for picking
        question, relevant = next(iter(people.questions.items()))
        text, _ = chat_through_open_webui(chat_stack, people.alice["api_key"], PLAIN, question)
        assert text.strip()
        [prompt] = [body for body in tap.bodies("/chat/completions") if body["model"] == PLAIN]
        asked = prompt["messages"][-1]["content"]  # the sources go before the user's own words, fenced
        assert prompt["messages"][-1]["role"] == "user" and asked.endswith(question)
        assert "<sources>" in asked and "[3]" in asked and "[4]" not in asked  # top_k 3
        assert any(name in asked for name in relevant), asked[:500]

        # Bob asks the same: his prompt holds nothing of Alice's Knowledge.
        text, _ = chat_through_open_webui(chat_stack, people.bob["api_key"], PLAIN, question)
        bob_prompt = [body for body in tap.bodies("/chat/completions") if body["model"] == PLAIN][-1]
        assert bob_prompt["messages"] == [{"role": "user", "content": question}] or \
            not any(".txt" in m["content"] for m in bob_prompt["messages"])

        # The pipe answers from the Knowledge itself, and Open WebUI receives its sources.
        text, events = chat_through_open_webui(chat_stack, people.alice["api_key"], PIPE, question)
        sources = [e["data"] for e in events if e.get("type") == "source"]
        assert text.strip() and {s["source"]["name"] for s in sources} & relevant
        [pipe_request] = [body for body in tap.bodies("/chat/completions") if body["model"] == PIPE]
        assert pipe_request["user"]["id"] == alice_id(people) and pipe_request["messages"][0]["role"] != "system"
        text, events = chat_through_open_webui(chat_stack, people.bob["api_key"], PIPE, question)
        assert text.strip() and not [e for e in events if e.get("type") == "source"]
        bob_pipe = [body for body in tap.bodies("/chat/completions") if body["model"] == PIPE][-1]
        assert bob_pipe["user"]["id"] == people.bob["client"].session_user()["id"]
        (ARTIFACTS / "pipelines-prompt.json").write_text(json.dumps(prompt, indent=1))


def alice_id(people: People) -> str:
    return people.alice["client"].session_user()["id"]
